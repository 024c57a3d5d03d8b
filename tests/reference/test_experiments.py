"""The experiments' runs at a tiny scale: four run files, the settings they share."""

from __future__ import annotations

import numpy as np

import hessnb
from hessnb.reference.experiments import RUNS, SCALES, Scale, run_experiments
from hessnb.reference.verdicts import evaluate
from hessnb.settings import SLQSettings


def test_tiny_scale_writes_four_runs_on_the_same_checkpoints(tmp_path):
    tiny = Scale(
        name="tiny", steps=6, lr_drop=3, record=(0, 2, 3, 4, 6), slq=SLQSettings(6, top_k=3)
    )
    paths = run_experiments(tmp_path, tiny, progress=False, log=lambda _line: None)
    assert list(paths) == list(RUNS)
    runs = {name: hessnb.open_run(path) for name, path in paths.items()}
    for name, run in runs.items():
        assert run.step.values.tolist() == [0, 2, 3, 4, 6]
        assert run.attrs["bn_mode"] == ("eval" if name == "bn-eval" else "train")
        assert run.attrs["scale"] == "tiny" and run.attrs["lr_drop"] == 3
        assert run.attrs["hessian_batch_size"][0] == 128  # the training batch size
    # the same checkpoints, BN with batch vs running statistics: different losses and Hessians
    np.testing.assert_allclose(runs["bn"].lr, [0.05, 0.05, 0.005, 0.005, 0.005], rtol=1e-12)
    assert runs["bn"].lr.equals(runs["bn-eval"].lr)
    assert not runs["bn"].loss.equals(runs["bn-eval"].loss)
    assert not runs["bn"].nodes.equals(runs["bn-eval"].nodes)
    assert len(evaluate(runs)) == 6


def test_scales():
    assert set(SCALES) == {"quick", "shipped", "full"}
    for scale in SCALES.values():
        assert scale.lr_drop in scale.record and scale.record == tuple(sorted(scale.record))
        assert scale.record[-1] == scale.steps
