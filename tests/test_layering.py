"""The architecture's rules, checked on the source: layers import only downward, and no
module reaches into another module's private names (tests and benchmarks included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "hessnb"

#: Lowest first. A module may import modules of its own layer or of lower ones.
LAYERS = [
    ("hessnb.errors", "hessnb.validation", "hessnb.version", "hessnb.distributed"),
    ("hessnb.schema", "hessnb.settings"),
    ("hessnb.linalg",),
    ("hessnb.hessian",),
    ("hessnb.slq",),
    ("hessnb.accessor", "hessnb.runfile"),
    ("hessnb.tracking",),
    ("hessnb.integrations",),
    ("hessnb.viz",),
    ("hessnb.reference",),
    ("hessnb.cli",),
]
TOP = ("hessnb", "hessnb.__main__")  # the public face imports everything


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    if module in TOP:
        return None
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py; add it")


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _targets(module: str, names: list[str]) -> list[str]:
    """Modules an import statement reaches (``from hessnb import viz`` reaches hessnb.viz)."""
    if module != "hessnb":
        return [module]
    subpackages = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir()
    }
    return [f"hessnb.{n}" for n in names if n in subpackages] or ["hessnb"]


def layering_violations() -> list[str]:
    problems = []
    for path in _sources("hessnb"):
        importer = _module_name(path)
        own = _layer(importer)
        for module, names, line in _imports(ast.parse(path.read_text())):
            if module.split(".")[0] in ("bench", "tests"):
                problems.append(f"{importer}:{line} imports {module} (outside the package)")
            if own is None or not module.startswith("hessnb"):
                continue
            for target in _targets(module, names):
                theirs = _layer(target)
                if theirs is None or theirs > own:
                    problems.append(f"{importer}:{line} imports {target}, a higher layer")
    return problems


def _private_definitions() -> dict[str, set[str]]:
    """Private names hessnb defines, with the modules that define them."""
    defined: dict[str, set[str]] = {}
    for path in _sources("hessnb", "bench", "tests"):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names = [node.attr]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names = [node.id]
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    defined.setdefault(name, set()).add(module)
    return defined


def private_access_violations() -> list[str]:
    defined = _private_definitions()
    problems = []
    for path in _sources("hessnb", "bench", "tests"):
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        for imported, names, line in _imports(tree):
            if imported.split(".")[0] not in ("hessnb", "bench", "tests"):
                continue
            for name in names + imported.split(".")[1:]:
                if name.startswith("_") and not name.startswith("__"):
                    problems.append(f"{module}:{line} imports private {name} from {imported}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr not in defined:
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if module not in defined[node.attr]:
                problems.append(f"{module}:{node.lineno} uses private .{node.attr}")
    return problems


def test_layers_import_only_downward():
    assert layering_violations() == []


def test_no_private_names_are_reached_across_modules():
    assert private_access_violations() == []


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("from hessnb.cli import main\n", layering_violations),
        ("from hessnb.runfile import _tmp_path\n", private_access_violations),
    ],
)
def test_the_rules_catch_a_planted_violation(tmp_path, monkeypatch, source, rule):
    planted = PACKAGE / "linalg" / "zz_planted_violation.py"
    planted.write_text(source)
    try:
        assert any("zz_planted_violation" in problem for problem in rule())
    finally:
        planted.unlink()
