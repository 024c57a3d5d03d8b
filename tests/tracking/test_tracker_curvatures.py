"""Tracker(curvature=[...], blocks=...): several curvatures and every layer in one run file."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import hessnb
from hessnb import Tracker, open_run
from hessnb.errors import RunFileError
from hessnb.hessian.operator import OPERATORS
from hessnb.reference import data, models

CURVATURES = ["hessian", "ggn", "fisher"]


@pytest.fixture(scope="module")
def problem():
    """A float64 digits MLP (310 parameters) after a few SGD steps, and its batches."""
    dataset = data.digits(images=False, size=120)
    batches = [(x.double(), y) for x, y in data.fixed_batches(dataset, 50)]
    torch.manual_seed(0)
    model = models.mlp(hidden=(4,)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = (torch.cat(t) for t in zip(*batches, strict=True))
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, batches


def _tracker(problem, path, **options):
    model, batches = problem
    options = {"lanczos_steps": 60, "top_k": 3, "progress": False, **options}
    return Tracker(model, F.cross_entropy, batches, path, **options)


def _dense(problem, curvature):
    model, batches = problem
    return OPERATORS[curvature](model, F.cross_entropy, batches).dense().numpy()


def test_several_curvatures_in_one_run_match_their_dense_spectra(problem, tmp_path):
    path = tmp_path / "curvatures.nc"
    _tracker(problem, path, curvature=CURVATURES).record(0, lr=0.5)
    ds = open_run(path)
    assert ds.curvature.values.tolist() == CURVATURES
    assert ds.nodes.dims == ("step", "curvature", "probe", "node")
    assert ds.loss.dims == ("step",) and ds.lr.dims == ("step",)
    assert ds.grad_fraction.dims == ("step", "curvature")
    assert ds.attrs["curvature"] == "hessian ggn fisher"
    for name in CURVATURES:
        exact = np.linalg.eigvalsh(_dense(problem, name))[::-1][:3]
        recorded = ds.top_eigenvalues.sel(step=0, curvature=name).values
        np.testing.assert_allclose(recorded, exact, rtol=1e-6)
    # the GGN and the Fisher are positive semi-definite, the Hessian here is not
    negative = ds.negative_mass.sel(step=0)
    assert float(negative.sel(curvature="ggn")) == 0.0
    assert float(negative.sel(curvature="fisher")) == 0.0


def test_every_layer_in_one_run_matches_the_dense_diagonal_blocks(problem, tmp_path):
    path = tmp_path / "layers.nc"
    tracker = _tracker(problem, path, blocks="layers")
    tracker.record(0)
    ds = open_run(path)
    blocks = tracker.operator.space.blocks("layers")
    assert ds.block.values.tolist() == list(blocks.labels) == ["1", "3"]
    assert ds.top_eigenvalues.dims == ("step", "block", "k") and ds.loss.dims == ("step",)
    dense = _dense(problem, "hessian")
    gradient = tracker.operator.gradient().numpy()
    for label, index in zip(blocks.labels, blocks.indices, strict=True):
        inner = dense[np.ix_(index.numpy(), index.numpy())]
        values, vectors = np.linalg.eigh(inner)
        recorded = ds.sel(step=0, block=label)
        np.testing.assert_allclose(recorded.top_eigenvalues, values[::-1][:3], rtol=1e-6)
        # grad_fraction of a block: the share of that block's gradient in its top-3 space
        part = gradient[index.numpy()]
        top = vectors[:, ::-1][:, :3]
        expected = np.sum((top.T @ part) ** 2) / np.sum(part**2)
        assert float(recorded.grad_fraction) == pytest.approx(expected, rel=1e-6)
    assert ds.attrs["blocks"] == "layers"


def test_curvatures_and_blocks_together(problem, tmp_path):
    path = tmp_path / "both.nc"
    tracker = _tracker(problem, path, curvature=["hessian", "ggn"], blocks="layers")
    tracker.record(0)
    tracker.record(1)
    ds = open_run(path)
    assert ds.nodes.dims == ("step", "curvature", "block", "probe", "node")
    assert ds.sizes == {"step": 2, "curvature": 2, "block": 2, "probe": 1, "node": 60, "k": 3}
    assert ds.hess.density().dims == ("step", "curvature", "block", "eigenvalue")
    both = hessnb.combine_runs({"a": ds, "b": path})
    assert both.nodes.dims[:4] == ("run", "step", "curvature", "block")


def test_a_resumed_run_must_ask_for_the_same_curvatures_and_blocks(problem, tmp_path):
    path = tmp_path / "r.nc"
    _tracker(problem, path, curvature=["hessian", "ggn"]).record(0)
    with pytest.raises(RunFileError, match="curvature: file has 'hessian ggn'"):
        _tracker(problem, path, curvature="hessian")
    with pytest.raises(RunFileError, match="blocks: file has 'none'"):
        _tracker(problem, path, curvature=["hessian", "ggn"], blocks="layers")
    resumed = _tracker(problem, path, curvature=["hessian", "ggn"])
    assert resumed.steps == [0]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"curvature": "hesian"}, ValueError, "curvature must be one of"),
        ({"curvature": []}, ValueError, "curvature must be one of"),
        ({"curvature": ["ggn", "ggn"]}, ValueError, "distinct"),
        ({"curvature": 3}, TypeError, "curvature must be"),
        ({"blocks": {"x": "5"}}, ValueError, "names no selected parameter"),
        ({"blocks": "layers", "top_every": 2}, ValueError, "pass one of them"),
    ],
)
def test_bad_curvature_and_block_options(problem, tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        _tracker(problem, tmp_path / "x.nc", **options)
    assert not (tmp_path / "x.nc").exists()


def test_the_curvature_adam_sees_through_training(problem, tmp_path):
    model, batches = copy.deepcopy(problem[0]), problem[1]
    problem = (model, batches)  # trained here: the shared fixture stays as it was
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    path = tmp_path / "adam.nc"
    tracker = _tracker(problem, path, precondition=optimizer)
    with pytest.raises(hessnb.hessian.PreconditionerError, match="no second moments"):
        tracker.record(0)  # Adam has no second moments before its first step
    assert not path.exists()
    x, y = (torch.cat(t) for t in zip(*batches, strict=True))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    tracker.record(1)
    ds = open_run(path)
    assert ds.attrs["preconditioner"] == "adam"
    dense = _dense(problem, "hessian")
    state = [optimizer.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()]
    scale = 1.0 / (torch.sqrt(torch.cat(state) / (1 - 0.999)) + 1e-8).numpy() ** 0.5
    exact = np.linalg.eigvalsh(scale[:, None] * dense * scale[None, :])[::-1][:3]
    np.testing.assert_allclose(ds.top_eigenvalues.sel(step=1), exact, rtol=1e-6)
    with pytest.raises(RunFileError, match="preconditioner: file has 'adam'"):
        _tracker(problem, path)
