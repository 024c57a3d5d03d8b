"""The notebooks: committed without outputs, each runs top to bottom with its default
(quick) settings, and the run files shipped for the quickstart are what their documented
command makes.

Notebooks execute with nbclient in a temporary copy of ``notebooks/`` (so run files,
checkpoints and reports land in ``tmp_path``, never in the repository), with
``HESSNB_QUICK=1`` and ``HESSNB_NB_DATA=digits`` (CI has no network: no CIFAR-10
download is attempted). A cell that raises fails the test.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_batchnorm_outliers.ipynb",
    "03_slq_accuracy.ipynb",
    "04_teaching_outliers.ipynb",
    "05_imagenet_scale.ipynb",
]
SHIPPED = NOTEBOOK_DIR / "data"
#: The command documented in notebooks/data/README.md (and the quickstart) that makes
#: the shipped run files; the test below runs it (into tmp_path) and compares.
DOCUMENTED = "hessnb demo --quick --no-report --out notebooks/data"
SHIPPED_RUNS = ("no-bn.nc", "bn.nc")
#: Attributes that define how a run was made (values compared exactly, as text).
SETTINGS = (
    "lanczos_steps",
    "probes",
    "top_k",
    "seed",
    "bn_mode",
    "n_params",
    "schedule",
    "n_examples",
    "model",
    "has_batchnorm",
    "dtype",
    "run",
)
CELL_TIMEOUT = 900  # seconds; the slowest cell (02's training) takes about a minute


def _ids(path: Path) -> str:
    return path.name


# ---------------------------------------------------------------------- committed state
def test_the_five_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        "a kernelspec in the metadata keeps JupyterLab from asking for a kernel"
    )
    assert "widgets" not in nb.metadata, "saved widget state: clear outputs before committing"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.outputs or cell.execution_count is not None or "execution" in cell.metadata)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; strip them "
        "(e.g. jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
    )


def test_shipped_run_files_are_small_and_documented() -> None:
    names = sorted(p.name for p in SHIPPED.iterdir())
    assert names == sorted(["README.md", *SHIPPED_RUNS])
    assert sum((SHIPPED / n).stat().st_size for n in SHIPPED_RUNS) < 3 * 2**20
    assert DOCUMENTED in (SHIPPED / "README.md").read_text()
    quickstart = (NOTEBOOK_DIR / "01_quickstart.ipynb").read_text()
    assert DOCUMENTED in quickstart and "data/no-bn.nc" in quickstart


# ---------------------------------------------------------------------- execution
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "notebooks"
    shutil.copytree(
        NOTEBOOK_DIR, work, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints", "*.nc.tmp")
    )
    before = sorted(p.relative_to(NOTEBOOK_DIR) for p in NOTEBOOK_DIR.rglob("*"))
    # the kernel inherits this environment
    monkeypatch.setenv("HESSNB_QUICK", "1")
    monkeypatch.setenv("HESSNB_NB_DATA", "digits")
    monkeypatch.setenv("HESSNB_CIFAR_ROOT", str(tmp_path / "cifar10"))
    monkeypatch.delenv("HESSNB_IMAGENET", raising=False)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    nb = nbformat.read(work / path.name, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{exc}", pytrace=False)
    finally:
        print(
            f"{path.name}: {time.perf_counter() - started:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f}"
        )
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    after = sorted(p.relative_to(NOTEBOOK_DIR) for p in NOTEBOOK_DIR.rglob("*"))
    assert after == before, "the notebook wrote into the repository's notebooks/ folder"


# ---------------------------------------------------------------------- shipped runs
def _schema(ds) -> dict[str, tuple[tuple[str, ...], str]]:
    return {name: (tuple(var.dims), str(var.dtype)) for name, var in ds.variables.items()}


@pytest.mark.slow
def test_shipped_runs_are_reproduced_by_their_command(tmp_path: Path) -> None:
    """Same schema (variables, dims, dtypes), settings and steps; values may differ."""
    from hessnb import cli, open_run

    words = DOCUMENTED.split()[1:]  # the documented command, run into tmp_path
    words[words.index("--out") + 1] = str(tmp_path)
    assert cli.main([*words, "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SHIPPED_RUNS)
    for name in SHIPPED_RUNS:
        shipped, fresh = open_run(SHIPPED / name), open_run(tmp_path / name)
        assert _schema(fresh) == _schema(shipped), (
            f"{name}: the schema changed; regenerate with `{DOCUMENTED}` "
            "(see notebooks/data/README.md)"
        )
        assert fresh["step"].values.tolist() == shipped["step"].values.tolist(), name
        assert dict(fresh.sizes) == dict(shipped.sizes), name
        for key in SETTINGS:
            assert str(fresh.attrs.get(key)) == str(shipped.attrs.get(key)), (
                f"{name}: attribute {key} differs ({fresh.attrs.get(key)!r} now, "
                f"{shipped.attrs.get(key)!r} shipped); regenerate with `{DOCUMENTED}`"
            )
