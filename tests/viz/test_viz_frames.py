"""Tables and the shared kernel/grid behind the views."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from viz_data import run_dataset, two_runs

from hessnb.linalg.quadrature import default_sigma, grid_bounds
from hessnb.viz import frames


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


def finite_nodes(ds: xr.Dataset) -> np.ndarray:
    nodes = ds["nodes"].values
    return nodes[np.isfinite(nodes)]


@pytest.mark.parametrize("x_scale", ["linear", "symlog"])
@pytest.mark.parametrize("sigma", [None, 1e-4, 0.05, 0.7])
def test_grid_covers_every_node_six_sigma(run: xr.Dataset, sigma, x_scale) -> None:
    sm = frames.smoothing(run, sigma, points=200, x_scale=x_scale)
    nodes = finite_nodes(run)
    assert sm.grid.shape == (200,) and np.all(np.diff(sm.grid) > 0)
    # one padding policy: the view's grid spans the quadrature module's bounds
    np.testing.assert_allclose(sm.grid[[0, -1]], grid_bounds(nodes, sm.sigma), rtol=1e-12)
    pad = max(0.01, 6 * sm.sigma)
    assert sm.grid[0] <= nodes.min() - pad * (1 - 1e-9)
    assert sm.grid[-1] >= nodes.max() + pad * (1 - 1e-9)
    if sigma is not None:
        assert sm.sigma == sigma


def test_default_sigma_resolves_grid(run: xr.Dataset) -> None:
    for points in (50, 600):
        sm = frames.smoothing(run, points=points)
        spacing = np.diff(sm.grid).max()
        assert sm.sigma >= spacing * (1 - 1e-12)  # no outlier peak falls between grid points
        nodes = finite_nodes(run)
        assert sm.sigma == pytest.approx(max(default_sigma(nodes), spacing), rel=1e-12)
        assert sm.sigma == frames.resolving_sigma(nodes, points)
    # few points widen the paper's width; many points keep it
    paper = default_sigma(finite_nodes(run))
    assert frames.smoothing(run, points=50).sigma > 10 * paper
    assert frames.smoothing(run, points=10_000).sigma == paper


def test_runs_share_one_grid() -> None:
    runs = two_runs()
    sm = frames.smoothing(runs, points=100)
    lo, hi = grid_bounds(finite_nodes(runs), sm.sigma)
    assert (sm.grid[0], sm.grid[-1]) == (lo, hi)


def test_bad_input(run: xr.Dataset) -> None:
    with pytest.raises(TypeError, match=r"a spectrum view needs an xarray.Dataset"):
        frames.select_run(run.nodes)
    with pytest.raises(ValueError, match=r"a density view needs nodes, weights, which"):
        frames.smoothing(run.drop_vars(["nodes", "weights"]))
    with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
        frames.smoothing(run, sigma=float("inf"))
    with pytest.raises(ValueError, match=r"a top-eigenvalue view needs top_eigenvalues"):
        frames.top_frame(run.drop_vars("top_eigenvalues"))


def test_unknown_run() -> None:
    with pytest.raises(ValueError, match=r"no run named 'x'"):
        frames.select_run(two_runs(), "x")
