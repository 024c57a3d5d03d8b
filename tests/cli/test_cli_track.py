"""``hessnb track``: train a reference model and track it, then report the run."""

from __future__ import annotations

import pytest

from hessnb import cli, open_run


def _track(out, *options: str) -> int:
    argv = ["track", "--model", "mlp", "--data", "digits", "--no-progress", "--out", str(out)]
    return cli.main([*argv, *options])


def test_track_then_report(tmp_path, capsys) -> None:
    run = tmp_path / "run.nc"
    code = _track(
        run,
        *("--train-steps", "4", "--every", "2", "--lanczos-steps", "6", "--top-k", "2"),
        *("--name", "tiny"),
    )
    assert code == 0
    ds = open_run(run)
    assert list(ds.step.values) == [0, 2, 4]
    assert ds.attrs["run"] == "tiny" and ds.attrs["lanczos_steps"] == 6
    assert ds.attrs["top_k"] == 2 and ds.attrs["bn_mode"] == "train"
    assert ds.attrs["deflate"] == 1  # deflated SLQ by default
    assert "3 steps recorded" in capsys.readouterr().out
    html = tmp_path / "report.html"
    assert cli.main(["report", str(run), "--html", str(html)]) == 0
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()


def test_track_maps_slq_options_and_bn_mode(tmp_path) -> None:
    run = tmp_path / "bn.nc"
    code = _track(
        run,
        *("--bn", "--train-steps", "2", "--every", "2", "--lanczos-steps", "4"),
        *("--probes", "2", "--top-k", "1", "--seed", "3", "--placement", "cpu"),
    )
    assert code == 0
    ds = open_run(run)
    assert list(ds.step.values) == [0, 2]
    assert ds.attrs["bn_mode"] == "train"  # the default with --bn
    assert (ds.attrs["lanczos_steps"], ds.attrs["probes"], ds.attrs["top_k"]) == (4, 2, 1)
    assert ds.attrs["seed"] == 3


def test_top_every_adds_top_k_records_and_no_deflate_is_plain_slq(tmp_path) -> None:
    run = tmp_path / "top.nc"
    code = _track(
        run,
        *("--train-steps", "4", "--every", "4", "--top-every", "1", "--lanczos-steps", "6"),
        *("--top-k", "2", "--no-deflate"),
    )
    assert code == 0
    ds = open_run(run)
    assert list(ds.step.values) == [0, 1, 2, 3, 4]
    assert ds.has_density.values.tolist() == [1, 0, 0, 0, 1]
    assert ds.attrs["top_every"] == 1 and ds.attrs["deflate"] == 0
    assert (ds.n_deflated.sel(step=[0, 4]) == 0).all()
    assert ds.lr.values.tolist() == [0.05] * 5 and ds.momentum.values.tolist() == [0.9] * 5


def test_steps_is_not_an_option_of_track(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _track(tmp_path / "run.nc", "--steps", "4")
    assert "unrecognized arguments: --steps" in capsys.readouterr().err
    assert not (tmp_path / "run.nc").exists()


def test_invalid_settings_are_reported(tmp_path, capsys) -> None:
    code = _track(tmp_path / "run.nc", "--lanczos-steps", "4", "--top-k", "10")
    assert code == 2
    assert "hessnb track: error: top_k=10 exceeds lanczos_steps=4" in capsys.readouterr().err


def test_curvatures_and_layers_from_the_command_line(tmp_path) -> None:
    run = tmp_path / "curv.nc"
    code = _track(
        run,
        *("--train-steps", "2", "--every", "2", "--lanczos-steps", "5", "--top-k", "2"),
        *("--curvature", "hessian", "ggn", "--blocks", "layers"),
    )
    assert code == 0
    ds = open_run(run)
    assert ds.nodes.dims == ("step", "curvature", "block", "probe", "node")
    assert ds.curvature.values.tolist() == ["hessian", "ggn"]
    assert ds.attrs["curvature"] == "hessian ggn" and ds.attrs["blocks"] == "layers"
    # a resumed run with other curvatures is refused (exit status 2, nothing written)
    assert _track(run, "--train-steps", "2", "--every", "2", "--lanczos-steps", "5") == 2
