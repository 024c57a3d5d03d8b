"""``hessnb demo``: both runs, the summary, and ``--train-steps``."""

from __future__ import annotations

import pytest

from hessnb import cli, open_run


def test_demo_quick_with_train_steps(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = cli.main(
        ["demo", "--quick", "--train-steps", "3", "--no-report", "--no-progress", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 SGD steps" in printed and "at the last recorded step:" in printed
    for name in ("no-bn", "bn"):
        run = open_run(out / f"{name}.nc")
        assert int(run.step.values[-1]) == 3  # the final step is always recorded
        assert run.attrs["bn_mode"] == "train"
        sizes = run.attrs["hessian_batch_size"].tolist()
        assert set(sizes[:-1]) == {128} and sum(sizes) == 1797  # the training batch size
    assert not (out / "report.html").exists()


def test_steps_is_not_an_option_of_demo() -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "3"])
