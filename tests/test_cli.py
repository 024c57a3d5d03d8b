import pytest

from hessnb import cli, open_run


def test_track_then_report(tmp_path, capsys):
    run = tmp_path / "run.nc"
    code = cli.main(
        [
            "track",
            "--model",
            "mlp",
            "--data",
            "digits",
            "--steps",
            "4",
            "--every",
            "2",
            "--lanczos-steps",
            "6",
            "--top-k",
            "2",
            "--out",
            str(run),
            "--name",
            "tiny",
            "--no-progress",
        ]
    )
    assert code == 0
    ds = open_run(run)
    assert list(ds.step.values) == [0, 2, 4]
    assert ds.attrs["run"] == "tiny" and ds.attrs["lanczos_steps"] == 6
    assert "3 steps recorded" in capsys.readouterr().out
    html = tmp_path / "report.html"
    assert cli.main(["report", str(run), "--html", str(html)]) == 0
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()


def test_errors_are_reported_with_exit_code_2(tmp_path, capsys):
    code = cli.main(["report", str(tmp_path / "missing.nc"), "--html", str(tmp_path / "r.html")])
    assert code == 2
    assert "missing.nc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["track", "--bn-mode", "sideways"])
