"""``hessnb`` itself: subcommand assembly, error reporting, ``python -m hessnb``."""

from __future__ import annotations

import runpy
import sys

import pytest

from hessnb import cli


def test_every_subcommand_is_a_module_with_help_options_and_run() -> None:
    assert list(cli.SUBCOMMANDS) == ["demo", "track", "spectrum", "reproduce", "report"]
    parser = cli.build_parser()
    for module in cli.SUBCOMMANDS.values():
        assert module.HELP and "\n" not in module.HELP
        assert callable(module.add_arguments) and callable(module.run)
    args = parser.parse_args(["report", "a.nc", "--html", "r.html"])
    assert args.run is cli.SUBCOMMANDS["report"].run


def test_errors_are_reported_with_exit_code_2(tmp_path, capsys) -> None:
    code = cli.main(["report", str(tmp_path / "missing.nc"), "--html", str(tmp_path / "r.html")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("hessnb report: error: ") and "missing.nc" in err
    with pytest.raises(SystemExit):
        cli.main(["track", "--bn-mode", "sideways"])
    with pytest.raises(SystemExit):
        cli.main([])  # a subcommand is required


def test_threads_below_one_is_an_error(capsys) -> None:
    assert cli.main(["track", "--threads", "0"]) == 2
    assert "hessnb track: error: --threads must be >= 1" in capsys.readouterr().err


def test_python_m_hessnb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["hessnb", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hessnb", run_name="__main__")
    assert exit_info.value.code == 0
