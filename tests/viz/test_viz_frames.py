"""Tables behind the charts: densities through ``ds.hess`` with each step's kernel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from viz_data import BLOCKS, LR_DROP_STEP, TRACKED_LR, run_dataset, series_run

from hessnb.linalg.statistics import STATISTICS
from hessnb.viz import frames, runs
from hessnb.viz.smoothing import Smoothing


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


def test_density_frame_is_hess_density_with_each_steps_kernel(run: xr.Dataset) -> None:
    sm = Smoothing.of(run)
    table = frames.density_frame(run, sm, steps=[10, 40], band=True)
    assert sorted(set(table["step"])) == [10, 40]
    for kernel in sm.kernels(run.sel(step=[10, 40])):
        rows = table[table["step"] == kernel.step]
        np.testing.assert_array_equal(rows["eigenvalue"], kernel.grid)
        one = run.sel(step=[kernel.step])
        expected = one.hess.density(sigma=kernel.sigma, grid=kernel.grid).isel(step=0)
        np.testing.assert_array_equal(rows["density"], expected.values)
        assert (rows["lower"] <= rows["upper"]).all()  # 8 probes: a bootstrap band
    assert "lower" not in frames.density_frame(run, sm, steps=[10])
    few = run.isel(probe=slice(0, frames.MIN_BAND_PROBES - 1))
    assert "lower" not in frames.density_frame(few, Smoothing.of(few), steps=[10], band=True)


def test_kernel_frame(run: xr.Dataset) -> None:
    sm = Smoothing.of(run, scale=2.0)
    table = frames.kernel_frame(run, sm)
    assert table["step"].tolist() == [0, 10, 20, 40]
    np.testing.assert_allclose(table["sigma"], 2 * table["paper_sigma"], rtol=1e-12)
    assert (table["widening"] == 1).all() and (table["points"] > 100).all()


def test_heat_cells_keep_each_steps_mass(run: xr.Dataset) -> None:
    sm = Smoothing.of(run)
    cells = frames.heat_frame(run, sm, cells=40, decades=30.0)
    assert len(cells) == 4 * 40
    width = (sm.domain[1] - sm.domain[0]) / 40
    for step, rows in cells.groupby("step"):
        mass = (10.0 ** rows["log10_density"]).sum() * width
        assert mass == pytest.approx(1.0, abs=1e-4), step
    assert cells["step_end"].groupby(cells["step"]).first().to_dict() == {
        0: 10,
        10: 20,
        20: 40,
        40: 60,
    }
    clipped = frames.heat_frame(run, sm, cells=40, decades=3.0)["log10_density"]
    assert clipped.min() == pytest.approx(clipped.max() - 3.0)
    with pytest.raises(ValueError, match=r"cells must be an int >= 2"):
        frames.heat_frame(run, sm, cells=1)


def test_csv_round_trip_is_exact() -> None:
    frame = pd.DataFrame(
        {
            "step": [0, 10],
            "value": [0.1 + 0.2, np.nan],
            "shown": [True, False],
            "label": ['step 0 · lr 0.1, "quoted"', "step 10"],
        }
    )
    text, parse = frames.to_csv(frame)
    assert parse == {"step": "number", "value": "number", "shown": "number"}
    back = frames.from_csv(text)
    assert back["value"].iloc[0] == 0.1 + 0.2 and np.isnan(back["value"].iloc[1])
    assert back["shown"].tolist() == [1, 0] and back["label"].tolist() == frame["label"].tolist()


def test_statistics_are_read_when_stored(run: xr.Dataset) -> None:
    assert frames.statistics_in(run) == list(STATISTICS)
    older = run.drop_vars(list(STATISTICS))  # a run file written before they existed
    assert frames.statistics_in(older) == []
    table = frames.scalar_frame(run, ["outlier_gap", "n_outliers"])
    gap = table[table["variable"] == "outlier_gap"]
    np.testing.assert_array_equal(gap["value"], run["outlier_gap"].values)


def test_top_frame_and_lr_drops(run: xr.Dataset) -> None:
    top = frames.top_frame(run, steps=[10])
    np.testing.assert_array_equal(top["eigenvalue"], run.top_eigenvalues.sel(step=10))
    assert {"residual", "overlap"} <= set(top.columns)
    assert frames.lr_drops(run).tolist() == [20]
    assert frames.lr_drops(run.drop_vars("lr")).size == 0
    with pytest.raises(ValueError, match=r"a top-eigenvalue view needs top_eigenvalues"):
        frames.top_frame(run.drop_vars("top_eigenvalues"))


# ---------------------------------------------------------------------- top-k records
def test_sharpness_frame_reads_every_record_and_2_over_lr(tracked: xr.Dataset) -> None:
    every = runs.select_run(tracked, densities_only=False)
    table = frames.sharpness_frame(every)
    assert table["step"].tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(table["sharpness"], tracked.top_eigenvalues.sel(k=1))
    np.testing.assert_array_equal(table["residual"], tracked.top_residuals.sel(k=1))
    np.testing.assert_array_equal(table["grad_fraction"], tracked.grad_fraction)
    assert table["full"].tolist() == [True, False, False, True]
    assert table["record"].tolist() == [
        frames.FULL_RECORD,
        frames.TOP_K_RECORD,
        frames.TOP_K_RECORD,
        frames.FULL_RECORD,
    ]
    lr = [TRACKED_LR[int(s >= LR_DROP_STEP)] for s in (0, 2, 4, 6)]
    assert table["lr"].tolist() == lr
    assert table["threshold"].tolist() == [2 / x for x in lr]  # exactly 2/η
    heavy = frames.sharpness_frame(every, momentum=0.9)["threshold"]
    np.testing.assert_allclose(heavy, [3.8 / x for x in lr], rtol=1e-15)
    assert "threshold" not in frames.sharpness_frame(every.drop_vars("lr"))
    old = frames.sharpness_frame(run_dataset(steps=(0, 10)))  # no has_density: all full
    assert old["full"].all()


@pytest.mark.parametrize(
    ("momentum", "error"),
    [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError), (True, TypeError)],
)
def test_bad_momentum(momentum, error) -> None:
    with pytest.raises(error, match=r"momentum must"):
        frames.stability_threshold(np.array([0.1]), momentum)


def test_threshold_labels_name_the_optimizer() -> None:
    assert frames.threshold_label() == "2/η (gradient descent)"
    assert frames.threshold_label(0.9) == "(2+2β)/η, β = 0.9 (heavy-ball momentum)"


def test_gradient_measure_frame_is_the_cumulative_measure(tracked: xr.Dataset) -> None:
    densities = runs.select_run(tracked)
    assert frames.gradient_measure_steps(densities).tolist() == [0, 6]
    assert frames.gradient_measure_steps(tracked).tolist() == [0, 6]  # NaN at top-k records
    table = frames.gradient_measure_frame(densities)
    assert sorted(set(table["step"])) == [0, 6]
    for step, rows in table.groupby("step"):
        nodes = tracked.grad_nodes.sel(step=step).values
        weights = tracked.grad_weights.sel(step=step).values
        order = np.argsort(nodes, kind="stable")
        np.testing.assert_array_equal(rows["eigenvalue"], nodes[order])
        np.testing.assert_array_equal(rows["weight"], weights[order])  # the jumps
        np.testing.assert_array_equal(rows["cumulative"], np.cumsum(weights[order]))
        assert rows["cumulative"].iloc[-1] == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(np.diff(rows["cumulative"]), weights[order][1:], atol=1e-15)
    padded = frames.gradient_measure_frame(densities, steps=[6], domain=(-5.0, 9.0))
    assert padded["eigenvalue"].iloc[[0, -1]].tolist() == [-5.0, 9.0]
    assert padded["cumulative"].iloc[0] == 0.0
    assert padded["cumulative"].iloc[-1] == padded["cumulative"].iloc[-2]
    assert padded["weight"].iloc[[0, -1]].isna().all()


def test_gradient_measure_frame_errors(tracked: xr.Dataset) -> None:
    old = run_dataset(steps=(0, 10))
    assert frames.gradient_measure_steps(old).size == 0
    with pytest.raises(ValueError, match=r"grad_nodes, grad_weights\) is not stored"):
        frames.gradient_measure_frame(old)
    with pytest.raises(ValueError, match=r"step 2 was not recorded; recorded steps are 0, 6"):
        frames.gradient_measure_frame(tracked, steps=[2])  # a top-k record


def test_movement_frame(tracked: xr.Dataset, run: xr.Dataset) -> None:
    table = frames.movement_frame(runs.select_run(tracked))
    moved = tracked.hess.movement()
    assert table["step"].tolist() == [6] and table["previous"].tolist() == [0]
    np.testing.assert_array_equal(table["w1"], moved.values)
    np.testing.assert_array_equal(table["per_step"], moved["per_step"].values)
    table = frames.movement_frame(run)
    assert table["step"].tolist() == [10, 20, 40] and table["previous"].tolist() == [0, 10, 20]
    np.testing.assert_allclose(table["per_step"], table["w1"] / [10, 10, 20], rtol=1e-15)


def test_recorded_momentum_sets_the_default_threshold():
    recorded_momentum = frames.recorded_momentum
    steps = {"step": [0, 1, 2]}
    assert recorded_momentum(xr.Dataset(coords=steps)) == 0.0
    constant = xr.Dataset({"momentum": ("step", [0.9, 0.9, np.nan])}, coords=steps)
    assert recorded_momentum(constant) == 0.9
    varying = xr.Dataset({"momentum": ("step", [0.9, 0.5, 0.9])}, coords=steps)
    with pytest.raises(ValueError, match="changes during the run"):
        recorded_momentum(varying)


# ---------------------------------------------------------------------- blocks
def test_layer_frame_is_each_blocks_eigenvalue_of_rank_k() -> None:
    ds = series_run(curvatures=None)
    table = frames.layer_frame(ds, k=3)
    assert table["step"].tolist() == [s for s in (0, 10, 20) for _ in BLOCKS]
    assert table["block"].tolist() == list(BLOCKS) * 3  # the stored order within each step
    np.testing.assert_array_equal(
        table["eigenvalue"], ds.top_eigenvalues.sel(k=3).transpose("step", "block").values.ravel()
    )
    assert table["n_params"].tolist() == [10, 20, 30] * 3
    gap = ds.copy()
    gap["top_eigenvalues"] = gap.top_eigenvalues.where(gap.block != "0")  # not recorded
    assert "0" not in set(frames.layer_frame(gap)["block"])
    with pytest.raises(ValueError, match=r"a per-block view needs the 'block' dimension"):
        frames.layer_frame(run_dataset(steps=(0, 10)))
