"""Per-step kernels: the paper's width for each step's own range, on grids that resolve it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from viz_data import run_dataset, two_runs

import hessnb
from hessnb.linalg.quadrature import default_sigma
from hessnb.viz import frames, runs
from hessnb.viz.smoothing import REACH, RESOLUTION, Smoothing, step_grid, widening_note

SHIPPED = Path(__file__).resolve().parents[2] / "notebooks" / "data"
#: The drawn kernel may be at most this much wider than the paper's.
MOST_WIDENING = 1.5


@pytest.fixture(scope="module")
def shipped() -> xr.Dataset:
    """The quickstart's run files, without and with batch norm."""
    return hessnb.combine_runs({n: hessnb.open_run(SHIPPED / f"{n}.nc") for n in ("no-bn", "bn")})


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


def finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def drawn_width(frame, theta: float, sigma: float) -> float:
    """Standard deviation of a drawn peak: the density's second moment within 4 sigma of
    ``theta`` (a truncated Gaussian of width s gives 0.9993 s)."""
    near = frame[(frame["eigenvalue"] - theta).abs() <= 4 * sigma]
    x, d = near["eigenvalue"].to_numpy(), near["density"].to_numpy()
    mass = np.trapezoid(d, x)
    mean = np.trapezoid(x * d, x) / mass
    return float(np.sqrt(np.trapezoid((x - mean) ** 2 * d, x) / mass))


def isolated_top(nodes: np.ndarray, sigma: float) -> float | None:
    """The largest node when no other node lies within 8 sigma of it."""
    theta = np.sort(finite(nodes))
    return float(theta[-1]) if theta.size > 1 and theta[-1] - theta[-2] > 8 * sigma else None


def test_shipped_runs_are_drawn_with_each_steps_paper_kernel(shipped: xr.Dataset) -> None:
    sm = Smoothing.of(shipped)
    ratios = {}
    for name, one in runs.each_series(shipped):
        kernels = sm.kernels(one)
        table = frames.density_frame(one, sm)
        for kernel in kernels:
            nodes = one["nodes"].sel(step=kernel.step).values
            assert kernel.paper == default_sigma(nodes)  # the step's own range
            assert kernel.sigma == kernel.paper and not kernel.widened
            theta = isolated_top(nodes, kernel.paper)
            if theta is not None:  # measured on the chart's data, not taken from the kernel
                width = drawn_width(table[table["step"] == kernel.step], theta, kernel.paper)
                ratios[name, kernel.step] = width / kernel.paper
    assert len(ratios) >= shipped.sizes["step"], ratios  # most steps have an isolated top
    for key, ratio in ratios.items():
        assert 1 / MOST_WIDENING <= ratio <= MOST_WIDENING, (key, ratio)
        assert ratio == pytest.approx(1.0, abs=0.01), (key, ratio)


def spread(nodes: np.ndarray) -> float:
    """``max(1, range)`` of a step's finite nodes: what the paper's width scales with."""
    values = finite(nodes)
    return max(1.0, float(values.max() - values.min()))


def test_runs_with_different_ranges_get_different_kernels(shipped: xr.Dataset) -> None:
    sm = Smoothing.of(shipped)
    (nobn_name, nobn), (bn_name, bn) = runs.each_series(shipped)
    assert (nobn_name, bn_name) == ("no-bn", "bn")
    compared = 0
    for a, b in zip(sm.kernels(nobn), sm.kernels(bn), strict=True):
        assert a.step == b.step
        ra, rb = (spread(r["nodes"].sel(step=a.step).values) for r in (nobn, bn))
        assert a.sigma == pytest.approx(np.sqrt(1e-5 * ra), rel=1e-12)
        assert b.sigma == pytest.approx(np.sqrt(1e-5 * rb), rel=1e-12)
        if abs(ra - rb) > 0.2 * max(ra, rb):  # clearly different ranges at this step
            assert a.sigma / b.sigma == pytest.approx(np.sqrt(ra / rb), rel=1e-12)
            assert abs(a.sigma - b.sigma) > 0.05 * max(a.sigma, b.sigma)
            compared += 1
    assert compared >= 1  # the shipped runs differ in range at some step
    # and steps of one run differ too, as their ranges do
    kernels = sm.kernels(nobn)
    ranges = [spread(nobn["nodes"].sel(step=k.step).values) for k in kernels]
    widths = [k.sigma for k in kernels]
    assert max(widths) / min(widths) == pytest.approx(np.sqrt(max(ranges) / min(ranges)))
    assert max(widths) > 2 * min(widths)


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_scale_multiplies_every_steps_kernel(shipped: xr.Dataset, scale: float) -> None:
    sm = Smoothing.of(shipped, scale=scale)
    one = runs.select_run(shipped, "no-bn")
    table = frames.density_frame(one, sm)
    for kernel in sm.kernels(one):
        assert kernel.sigma == pytest.approx(scale * kernel.paper, rel=1e-12)
        assert kernel.requested == kernel.sigma
        nodes = one["nodes"].sel(step=kernel.step).values
        theta = isolated_top(nodes, kernel.sigma)
        if theta is not None:
            width = drawn_width(table[table["step"] == kernel.step], theta, kernel.sigma)
            assert width == pytest.approx(kernel.sigma, rel=0.01)


def test_grid_resolves_every_node_and_keeps_the_mass(run: xr.Dataset) -> None:
    sm = Smoothing.of(run)
    table = frames.density_frame(run, sm)
    for kernel in sm.kernels(run):
        grid, nodes = kernel.grid, finite(run["nodes"].sel(step=kernel.step).values)
        assert np.all(np.diff(grid) > 0)
        pad = max(0.01, 6 * kernel.sigma)
        assert grid[0] <= nodes.min() - pad * (1 - 1e-9)
        assert grid[-1] >= nodes.max() + pad * (1 - 1e-9)
        spacing = np.diff(grid)
        reach = REACH * kernel.sigma
        for theta in nodes:  # fine spacing within REACH widths of every node
            inside = (grid[:-1] >= theta - reach) & (grid[1:] <= theta + reach)
            covered = min(theta + reach, grid[-1]) - max(theta - reach, grid[0])
            assert spacing[inside].sum() >= covered - 2 * kernel.sigma / RESOLUTION
            assert spacing[inside].max() <= kernel.sigma / RESOLUTION * (1 + 1e-9)
        density = table.loc[table["step"] == kernel.step, "density"].to_numpy()
        assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)


def test_too_few_points_widen_the_kernel_and_say_so(shipped: xr.Dataset) -> None:
    sm = Smoothing.of(shipped, points=60)
    one = runs.select_run(shipped, "no-bn")
    kernels = sm.kernels(one)
    last = kernels[-1]
    assert last.widened and last.grid.size == 60
    assert last.sigma == pytest.approx(np.diff(last.grid)[0], rel=1e-9)  # one grid spacing
    assert last.widening == pytest.approx(last.sigma / last.paper)
    note = widening_note(kernels, sm.max_points)
    worst = max(kernels, key=lambda k: k.widening)
    assert f"×{worst.widening:.2g} (step {worst.step})" in note and "60 grid points" in note
    assert widening_note(Smoothing.of(shipped).kernels(one), 3000) == ""


def test_fixed_sigma_and_domain() -> None:
    both = two_runs()
    sm = Smoothing.of(both, sigma=0.05)
    assert sm.describe() == "σ = 0.05 for every step"
    edges = []
    for _, one in runs.each_series(both):
        for kernel in sm.kernels(one):
            assert kernel.sigma == 0.05 and kernel.requested == 0.05
            edges += [kernel.grid[0], kernel.grid[-1]]
    assert sm.domain == (min(edges), max(edges))
    assert "the paper's" in Smoothing.of(both).describe()
    assert Smoothing.of(both, scale=2).describe().startswith("2 × each step's own paper σ")


def test_step_grid_of_one_node() -> None:
    sigma, grid = step_grid(np.array([[3.0, np.nan]]), 0.01, 3000)
    assert sigma == 0.01 and grid[0] <= 3.0 - 0.06 and grid[-1] >= 3.0 + 0.06
    assert np.diff(grid).max() <= 0.005 * (1 + 1e-9)


def test_bad_input(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"a density view needs nodes, weights, which"):
        Smoothing.of(run.drop_vars(["nodes", "weights"]))
    for sigma in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
            Smoothing.of(run, sigma=sigma)
    with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
        Smoothing.of(run, scale=0.0)
    with pytest.raises(ValueError, match=r"points must be an int >= 2"):
        Smoothing.of(run, points=1)
    with pytest.raises(ValueError, match=r"x_scale"):
        Smoothing.of(run, x_scale="log")
    padded = run.copy()
    padded["nodes"] = padded.nodes * np.nan
    with pytest.raises(ValueError, match=r"empty.*track at least one step"):
        Smoothing.of(padded)
