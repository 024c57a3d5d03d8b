"""Runs and steps of a view: selection, recorded steps and the errors that name them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from viz_data import run_dataset, two_runs

import hessnb
from hessnb.viz import runs


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


def test_select_run_keeps_recorded_steps_only() -> None:
    both = two_runs()
    assert runs.run_names(both) == ["bn", "no-bn"]
    bn = runs.select_run(both, "bn")
    assert "run" not in bn.dims
    assert runs.steps_of(bn).tolist() == [0, 10, 20]  # step 40 is NaN-padded in "bn"
    assert runs.steps_of(runs.select_run(both, "no-bn")).tolist() == [0, 10, 20, 40]
    named = runs.each_run(both)
    assert [name for name, _ in named] == ["bn", "no-bn"]
    assert named[0][1].identical(bn)


def test_single_spectrum_is_a_run_of_step_zero() -> None:
    spectrum = hessnb.spectrum(np.diag([1.0, 2.0, 3.0]), lanczos_steps=3, top_k=2, progress=False)
    ((name, one),) = runs.each_run(spectrum)
    assert name is None and runs.steps_of(one).tolist() == [0]
    assert runs.run_names(spectrum) == []


def test_check_step_and_step_ends(run: xr.Dataset) -> None:
    assert runs.check_step(run, None) == 40
    assert runs.check_step(run, np.int64(10)) == 10
    with pytest.raises(ValueError, match=r"step 15 was not recorded.*nearest: (10|20)"):
        runs.check_step(run, 15)
    with pytest.raises(TypeError, match=r"step must be an int"):
        runs.check_step(run, True)
    ends = runs.step_ends(np.array([0, 10, 20, 40]))
    assert ends.tolist() == [10, 20, 40, 60]
    assert runs.step_ends(np.array([5])).tolist() == [6]


def test_bad_input(run: xr.Dataset) -> None:
    with pytest.raises(TypeError, match=r"a spectrum view needs an xarray.Dataset"):
        runs.select_run(run.nodes)
    with pytest.raises(ValueError, match=r"no run named 'x'"):
        runs.select_run(two_runs(), "x")
    with pytest.raises(ValueError, match=r"holds runs \['bn', 'no-bn'\]; pass run="):
        runs.select_run(two_runs())
    with pytest.raises(ValueError, match=r"empty.*track at least one step"):
        runs.select_run(run.isel(step=[]))


# ---------------------------------------------------------------------- top-k records
def test_top_k_records_are_kept_only_on_request(tracked: xr.Dataset) -> None:
    assert tracked["has_density"].values.tolist() == [1, 0, 0, 1]
    assert runs.density_mask(tracked).tolist() == [True, False, False, True]
    assert runs.record_mask(tracked).tolist() == [True] * 4
    assert runs.steps_of(runs.select_run(tracked)).tolist() == [0, 6]
    every = runs.select_run(tracked, densities_only=False)
    assert runs.steps_of(every).tolist() == [0, 2, 4, 6]
    ((name, one),) = runs.each_run(tracked, densities_only=False)
    assert name is None and one.identical(every)


def test_old_files_and_combined_runs(tracked: xr.Dataset) -> None:
    old = run_dataset(steps=(0, 10, 20))  # no has_density: every step is a full record
    assert "has_density" not in old
    assert runs.record_mask(old).tolist() == runs.density_mask(old).tolist() == [True] * 3
    tracked = tracked.assign_attrs(run="tracked")  # combine_runs turns differing attrs
    old = old.assign_attrs(run="old")  # (the run name among them) into coordinates
    both = hessnb.combine_runs({"tracked": tracked, "old": old})
    steps = {n: runs.steps_of(r).tolist() for n, r in runs.each_run(both, densities_only=False)}
    assert steps == {"tracked": [0, 2, 4, 6], "old": [0, 10, 20]}  # padding dropped
    steps = {n: runs.steps_of(r).tolist() for n, r in runs.each_run(both)}
    assert steps == {"tracked": [0, 6], "old": [0, 10, 20]}


def test_a_run_of_top_k_records_only(tracked: xr.Dataset) -> None:
    only_top_k = tracked.isel(step=[1, 2])
    with pytest.raises(ValueError, match=r"holds 2 top-k records but no density yet"):
        runs.select_run(only_top_k)
    assert runs.steps_of(runs.select_run(only_top_k, densities_only=False)).tolist() == [2, 4]
