"""``hessnb report``: the HTML report of run files through the command line."""

from __future__ import annotations

from pathlib import Path

from hessnb import cli

SHIPPED = Path(__file__).parents[2] / "notebooks" / "data"


def test_report_of_two_runs_with_options(tmp_path, capsys) -> None:
    out = tmp_path / "out" / "report.html"
    runs = [str(SHIPPED / "no-bn.nc"), str(SHIPPED / "bn.nc")]
    argv = ["report", *runs, "--html", str(out), "--points", "60", "--max-steps", "3"]
    assert cli.main([*argv, "--title", "Digits & BN"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    body = page[page.rfind("</head>") :]
    assert "<script src=" not in page and "Digits &amp; BN" in body
    assert "Runs: no-bn, bn" in body and "Showing 3 of" in body


def test_report_errors(tmp_path, capsys) -> None:
    run = str(SHIPPED / "bn.nc")
    assert cli.main(["report", run, "--html", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hessnb report: error: ") and "ending in .html" in err
    assert not (tmp_path / "r.png").exists()
