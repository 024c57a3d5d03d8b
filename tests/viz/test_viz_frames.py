"""Tables behind the charts: densities through ``ds.hess`` with each step's kernel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from viz_data import run_dataset

from hessnb.linalg.statistics import STATISTICS
from hessnb.viz import frames
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
