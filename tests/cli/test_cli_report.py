"""``hessnb report``: the HTML report of run files through the command line."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

import hessnb
from hessnb import cli
from hessnb.reference import data, models

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


def test_report_of_a_per_layer_run_shows_the_chosen_block(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = models.mlp(hidden=(4,))
    batches = data.fixed_batches(data.digits(images=False, size=60), 30)
    run = tmp_path / "layers.nc"
    options = {"lanczos_steps": 8, "top_k": 2, "blocks": "layers", "progress": False}
    hessnb.Tracker(model, F.cross_entropy, batches, run, **options).record(0)
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run), "--html", str(out), "--block", "3"]) == 0
    assert "The views show block <b>3</b>" in out.read_text()
    assert cli.main(["report", str(run), "--html", str(out), "--block", "7"]) == 2
    assert "7" in capsys.readouterr().err
