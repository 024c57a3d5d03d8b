"""Runs and steps of a view: selection, recorded steps and the errors that name them."""

from __future__ import annotations

import numpy as np
import pytest
import viz_data
import xarray as xr
from viz_data import BLOCKS, CURVATURES, run_dataset, series_run, two_runs

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
    named = runs.each_series(both)
    assert [name for name, _ in named] == ["bn", "no-bn"]
    assert named[0][1].identical(bn)


def test_single_spectrum_is_a_run_of_step_zero() -> None:
    spectrum = hessnb.spectrum(np.diag([1.0, 2.0, 3.0]), lanczos_steps=3, top_k=2, progress=False)
    ((name, one),) = runs.each_series(spectrum)
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
    ((name, one),) = runs.each_series(tracked, densities_only=False)
    assert name is None and one.identical(every)


def test_old_files_and_combined_runs(tracked: xr.Dataset) -> None:
    old = run_dataset(steps=(0, 10, 20))  # no has_density: every step is a full record
    assert "has_density" not in old
    assert runs.record_mask(old).tolist() == runs.density_mask(old).tolist() == [True] * 3
    tracked = tracked.assign_attrs(run="tracked")  # combine_runs turns differing attrs
    old = old.assign_attrs(run="old")  # (the run name among them) into coordinates
    both = hessnb.combine_runs({"tracked": tracked, "old": old})
    steps = {n: runs.steps_of(r).tolist() for n, r in runs.each_series(both, densities_only=False)}
    assert steps == {"tracked": [0, 2, 4, 6], "old": [0, 10, 20]}  # padding dropped
    steps = {n: runs.steps_of(r).tolist() for n, r in runs.each_series(both)}
    assert steps == {"tracked": [0, 6], "old": [0, 10, 20]}


def test_a_run_of_top_k_records_only(tracked: xr.Dataset) -> None:
    only_top_k = tracked.isel(step=[1, 2])
    with pytest.raises(ValueError, match=r"holds 2 top-k records but no density yet"):
        runs.select_run(only_top_k)
    assert runs.steps_of(runs.select_run(only_top_k, densities_only=False)).tolist() == [2, 4]


# ---------------------------------------------------------------------- curvatures and blocks
def test_series_are_every_curvature_and_block_labelled_by_what_is_present() -> None:
    both = series_run()
    assert runs.series_dims(both) == ["curvature", "block"]
    assert runs.series_title(both) == "curvature · block"
    named = runs.each_series(both)
    assert [label for label, _ in named] == [
        f"{c} · {b}" for c in CURVATURES for b in BLOCKS
    ]  # curvature outer, blocks in their stored order (not sorted)
    for label, one in named:
        curvature, block = label.split(" · ")
        assert not {"curvature", "block"} & set(one.dims)
        assert runs.steps_of(one).tolist() == [0, 10, 20]
        expected = both.sel(curvature=curvature, block=block)
        np.testing.assert_array_equal(one["nodes"], expected["nodes"])
        assert one["n_params"].item() == expected["n_params"].item()
        np.testing.assert_array_equal(one["loss"], both["loss"])  # not per curvature
    only = {"curvature": series_run(blocks=None), "block": series_run(curvatures=None)}
    assert [label for label, _ in runs.each_series(only["curvature"])] == list(CURVATURES)
    assert [label for label, _ in runs.each_series(only["block"])] == list(BLOCKS)


def test_combined_runs_put_the_run_first_and_keep_asks_for_a_dimension() -> None:
    combined = viz_data.series_runs()
    assert runs.series_title(combined) == "run · curvature · block"
    labels = [label for label, _ in runs.each_series(combined)]
    assert len(labels) == 2 * len(CURVATURES) * len(BLOCKS)
    assert labels[:2] == ["bn · hessian · conv1", "bn · hessian · 0"]
    assert labels[-1] == "no-bn · ggn · fc"
    layers = runs.each_series(combined, densities_only=False, keep=("block",))
    assert [label for label, _ in layers] == [
        "bn · hessian",
        "bn · ggn",
        "no-bn · hessian",
        "no-bn · ggn",
    ]
    (_, bn_hessian), *_ = layers
    assert runs.labels(bn_hessian, "block") == list(BLOCKS)
    assert runs.steps_of(bn_hessian).tolist() == [0, 10, 20]  # no-bn's step 40 is padding
    assert runs.series_title(combined, keep=("block",)) == "run · curvature"


def test_pick_blocks() -> None:
    blocks = series_run(curvatures=None)
    assert runs.labels(runs.pick_blocks(blocks), "block") == ["conv1"]  # the first stored
    assert runs.labels(runs.pick_blocks(blocks, "fc"), "block") == ["fc"]
    assert runs.labels(runs.pick_blocks(blocks, ["fc", "0"]), "block") == ["fc", "0"]
    assert runs.pick_blocks(blocks, "0")["n_params"].values.tolist() == [20]
    plain = run_dataset(steps=(0, 10))
    assert runs.pick_blocks(plain) is plain
    with pytest.raises(ValueError, match=r"no block named \['x'\]; .* \['conv1', '0', 'fc'\]"):
        runs.pick_blocks(blocks, "x")
    with pytest.raises(ValueError, match=r"no block named \[\]"):
        runs.pick_blocks(blocks, [])
    with pytest.raises(ValueError, match=r"block='fc' was given, but .*no 'block' dim"):
        runs.pick_blocks(plain, "fc")


def test_select_series_names_what_to_pass() -> None:
    both = series_run()
    ggn = runs.select_series(both, {"curvature": "ggn", "block": "fc"})
    np.testing.assert_array_equal(ggn["weights"], both["weights"].sel(curvature="ggn", block="fc"))
    kept = runs.select_run(both)  # no run dim: curvatures and blocks stay
    assert {"curvature", "block"} <= set(kept.dims)
    with pytest.raises(ValueError, match=r"holds curvatures \['hessian', 'ggn'\]; pass curvature="):
        runs.select_series(both, {"curvature": None})
    with pytest.raises(ValueError, match=r"no block named 'x'; the dataset holds blocks"):
        runs.select_series(both, {"block": "x"})
    empty = both.isel(step=[])
    with pytest.raises(ValueError, match=r"curvature 'hessian', block 'conv1' holds no recorded"):
        runs.select_series(empty, {"curvature": "hessian", "block": "conv1"})
    with pytest.raises(ValueError, match=r"holds no recorded steps yet \(it is empty\)"):
        runs.each_series(empty)


def test_combinations_a_run_lacks_are_left_out() -> None:
    both = series_run(blocks=None, name="both")
    hessian_only = series_run(curvatures=("hessian",), blocks=None, name="h", seed=3)
    combined = hessnb.combine_runs({"both": both, "h": hessian_only})
    curvatures = runs.labels(combined, "curvature")  # the outer join's order
    assert sorted(curvatures) == ["ggn", "hessian"]
    labels = [label for label, _ in runs.each_series(combined)]
    assert labels == [f"both · {c}" for c in curvatures] + ["h · hessian"]  # no "h · ggn"


def test_block_spectra_of_hessnb_spectrum() -> None:
    spectrum = viz_data.block_spectrum()
    named = runs.each_series(spectrum)
    assert [label for label, _ in named] == ["low", "high"]
    assert [runs.steps_of(one).tolist() for _, one in named] == [[0], [0]]
    assert named[1][1]["top_eigenvalues"].values[0, 0] == pytest.approx(12.0)
