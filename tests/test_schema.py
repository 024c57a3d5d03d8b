"""The dataset contract: every variable a writer produces is declared, and require() says
what is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.nn import functional as F

import hessnb
from hessnb.schema import DIMENSIONS, PROVENANCE, QUADRATURE, SETTINGS, VARIABLES, require


def _check_against_schema(ds: xr.Dataset, leading: tuple[str, ...] = ()) -> None:
    for name, var in ds.data_vars.items():
        assert name in VARIABLES, f"{name} is written but not declared in hessnb.schema"
        spec = VARIABLES[name]
        expected = (*leading, *spec.dims) if spec.per_step else spec.dims
        assert var.dims == expected, name
        assert var.attrs["long_name"] == spec.long_name
    for dim in ds.dims:
        assert dim in DIMENSIONS


def test_spectrum_writes_exactly_the_declared_variables():
    ds = hessnb.spectrum(np.diag(np.arange(1.0, 21.0)), lanczos_steps=8, top_k=3, progress=False)
    _check_against_schema(ds)
    # operator and tracker settings: a matrix has no BN mode, curvature or preconditioner
    assert set(SETTINGS) - {"bn_mode", "curvature", "blocks", "preconditioner"} <= set(ds.attrs)


def _tracker(model, batches, path):
    return hessnb.Tracker(
        model, F.cross_entropy, batches, path, lanczos_steps=6, top_k=2, progress=False
    )


def test_tracker_writes_exactly_the_declared_variables(tmp_path, tiny_network, tiny_batches):
    model = tiny_network("mlp", False)
    tracker = _tracker(model, tiny_batches("mlp"), tmp_path / "run.nc")
    tracker.record(0, lr=0.1, update=torch.ones(sum(p.numel() for p in model.parameters())))
    ds = hessnb.open_run(tmp_path / "run.nc")
    _check_against_schema(ds, leading=("step",))
    assert set(SETTINGS) <= set(ds.attrs)
    assert set(ds.attrs) - {"hessian_batch_size"} <= set(PROVENANCE)


def test_require_names_what_is_missing():
    ds = xr.Dataset({"nodes": ("node", np.zeros(3))})
    assert require(ds, ["nodes"], "x") is ds
    with pytest.raises(ValueError, match=r"the explorer needs weights, which this dataset lacks"):
        require(ds, QUADRATURE, "the explorer")
    with pytest.raises(ValueError, match=r"needs the 'step' dimension"):
        require(ds, ["nodes"], "a run view", dims=("step",))
    with pytest.raises(TypeError, match=r"needs an xarray.Dataset .* got dict"):
        require({}, QUADRATURE, "a report")


def test_user_scalars_cannot_take_computed_names(tmp_path, tiny_network, tiny_batches):
    tracker = _tracker(tiny_network("mlp", False), tiny_batches("mlp"), tmp_path / "r.nc")
    for name in ("loss", "grad_fraction", "k"):
        with pytest.raises(ValueError, match="computed by the tracker"):
            tracker.record(0, **{name: 1.0})
    assert tracker.steps == []
