"""Explorer widget logic: controls set from Python change the chart's data exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from vega_spec import layers, panel_table, panels, table, tables, titles, views_with
from viz_data import BLOCKS, CURVATURES, run_dataset, series_run, two_runs

import hessnb
from hessnb.linalg.statistics import STATISTICS
from hessnb.viz import Explorer, explore, offline
from hessnb.viz.smoothing import Smoothing


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


def drawn(ex: Explorer) -> dict:
    """The Vega-Lite spec the widget sends to the browser."""
    return ex.chart_widget.spec


def assert_shows(ex: Explorer, ds: xr.Dataset, step: int, scale: float) -> None:
    """The widget's density data is ``ds.hess.density`` at ``step`` with ``scale`` times
    that step's paper kernel."""
    spec = drawn(ex)
    data = table(spec, "eigenvalue", "density")
    one = ds.sel(step=[step])
    (kernel,) = Smoothing.of(ds, points=ex.points, scale=scale).kernels(one)
    assert kernel.sigma == pytest.approx(scale * kernel.paper, rel=1e-12)
    assert ex.sigma == kernel.sigma
    assert set(data["step"]) == {step}
    np.testing.assert_array_equal(data["eigenvalue"], kernel.grid)
    expected = one.hess.density(sigma=kernel.sigma, grid=kernel.grid).isel(step=0)
    np.testing.assert_array_equal(data["density"], expected.values)
    np.testing.assert_array_equal(ex.density().values, expected.values)


def test_step_control_changes_data(run: xr.Dataset) -> None:
    ex = explore(run)
    assert ex.step == 40 and ex.step_slider.options[-1] == ("40", 40)
    assert ex.sigma_scale == 1.0  # the paper's kernel
    assert_shows(ex, run, 40, 1.0)
    ex.step_slider.value = 10
    assert_shows(ex, run, 10, 1.0)
    # the gradient overlay follows: rules carry step 10's overlaps, the marker is at 10
    spec = drawn(ex)
    (rule,) = [v for v in views_with(spec, "rule") if "color" in v["encoding"]]
    assert {"filter": "datum.step == 10"} in rule["transform"]
    points = views_with(spec, "point")
    assert {"filter": "datum.step == 10"} in points[0]["transform"]
    ex.play.value = 0  # the play button drives the slider
    assert ex.step == 0
    assert_shows(ex, run, 0, 1.0)


def test_sigma_control_multiplies_each_steps_paper_kernel(run: xr.Dataset) -> None:
    ex = Explorer(run, step=20)
    before = table(drawn(ex), "density")["density"].to_numpy()
    paper = ex.kernel.paper
    ex.sigma_slider.value = 4.0
    assert ex.sigma_scale == pytest.approx(4.0)
    assert ex.sigma == pytest.approx(4.0 * paper, rel=1e-12)
    assert_shows(ex, run, 20, ex.sigma_scale)
    after = table(drawn(ex), "density")["density"].to_numpy()
    assert after.max() < before.max()  # wider kernel, lower peaks
    ex.step = 40  # another step: the same multiple of that step's own paper width
    assert ex.sigma == pytest.approx(ex.sigma_scale * ex.kernel.paper, rel=1e-12)
    assert ex.kernel.paper != paper
    assert_shows(ex, run, 40, ex.sigma_scale)
    ex.sigma_scale = 500.0  # beyond the slider's range: the range widens
    assert ex.sigma_scale == pytest.approx(500.0)
    assert_shows(ex, run, 40, ex.sigma_scale)
    assert "500 × the paper's" in ex.status.value


def test_log_linear_toggle(run: xr.Dataset) -> None:
    ex = Explorer(run)
    line = views_with(drawn(ex), "line")[0]
    assert line["encoding"]["y"]["scale"]["type"] == "log"
    ex.scale_toggle.value = False
    line = views_with(drawn(ex), "line")[0]
    assert line["encoding"]["y"]["scale"].get("type", "linear") == "linear"
    assert not ex.log_y


def test_growing_dataset_is_picked_up_on_refresh(run: xr.Dataset, tmp_path) -> None:
    current = {"ds": run.isel(step=[0, 1])}
    ex = Explorer(lambda: current["ds"])
    assert [s for _, s in ex.step_slider.options] == [0, 10] and ex.step == 10
    current["ds"] = run
    ex.refresh_button.click()
    assert [s for _, s in ex.step_slider.options] == [0, 10, 20, 40]
    assert ex.step == 40 and ex.play.max == 3  # was at the last step: follows the run
    assert_shows(ex, run, 40, 1.0)
    ex.step = 10
    ex.refresh(run_dataset(steps=(0, 10, 20, 40, 60)))
    assert ex.step == 10  # not at the end: stays put
    assert ex.step_slider.options[-1] == ("60", 60)


def test_refresh_rereads_a_run_file(run: xr.Dataset, tmp_path) -> None:
    from hessnb.runfile import write_run

    path = tmp_path / "run.nc"
    write_run(run.isel(step=[0, 1, 2]), path)
    ex = Explorer(path)
    assert ex.step == 20
    write_run(run, path)
    ex.refresh()
    assert ex.step == 40
    assert_shows(ex, hessnb.open_run(path), 40, 1.0)


def test_run_selector() -> None:
    runs = two_runs()
    ex = Explorer(runs)
    assert ex.run_select.options == ("bn", "no-bn") and ex.run == "bn"
    assert [s for _, s in ex.step_slider.options] == [0, 10, 20]
    ex.run_select.value = "no-bn"
    assert [s for _, s in ex.step_slider.options] == [0, 10, 20, 40]
    assert ex.step == 40
    one = runs.sel(run="no-bn")
    assert_shows(ex, one, 40, 1.0)
    ex.step = 10
    no_bn_sigma = ex.sigma
    ex.run = "bn"
    ex.step = 10
    assert_shows(ex, runs.sel(run="bn"), 10, 1.0)
    assert ex.sigma != no_bn_sigma  # each run at step 10 with its own kernel
    with pytest.raises(ValueError, match=r"no run named 'x'"):
        ex.run = "x"
    assert Explorer(run_dataset(steps=(0, 10))).run_select.layout.display == "none"


def test_bad_input(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"the explorer needs nodes, weights, which"):
        Explorer(xr.Dataset())
    with pytest.raises(ValueError, match=r"empty"):
        Explorer(run.isel(step=[]))
    with pytest.raises(TypeError, match=r"run dataset, the path"):
        Explorer(42)
    with pytest.raises(ValueError, match=r"step 15 was not recorded"):
        Explorer(run, step=15)
    with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
        Explorer(run, sigma_scale=0.0)
    ex = Explorer(run)
    with pytest.raises(ValueError, match=r"step 15 was not recorded.*nearest"):
        ex.step = 15
    for scale in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
            ex.sigma_scale = scale
    assert ex.step == 40  # nothing changed


def test_statistics_shown_below_when_stored(run: xr.Dataset) -> None:
    ex = Explorer(run, step=10)
    spec = drawn(ex)
    assert len(spec["vconcat"]) == 3  # density and gradient, sharpness, statistics
    stats = table(spec, "variable", "value", "shown")
    assert set(stats["variable"]) == {"outlier_gap", "n_outliers", "lambda_min", "negative_mass"}
    assert stats.loc[stats["shown"] == 1, "step"].unique().tolist() == [10]
    ex.step = 40
    stats = table(drawn(ex), "variable", "value", "shown")
    assert stats.loc[stats["shown"] == 1, "step"].unique().tolist() == [40]
    older = Explorer(run.drop_vars(list(STATISTICS)))  # a run file from before
    assert len(drawn(older)["vconcat"]) == 2  # no statistics row


def test_without_vl_convert_falls_back_to_the_cdn(run: xr.Dataset, monkeypatch) -> None:
    import altair as alt

    from hessnb.viz import explorer

    monkeypatch.setattr(explorer, "offline_available", lambda: False)
    offline.reset_warnings()
    enabled = []
    monkeypatch.setattr(alt.JupyterChart, "enable_offline", classmethod(enabled.append))
    with pytest.warns(RuntimeWarning, match=r'the explorer loads .* pip install "hessnb\[lab\]"'):
        ex = Explorer(run)
    assert ex.chart_widget.spec and not enabled  # drawn, with Vega from the CDN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        Explorer(run)
    offline.reset_warnings()


# ---------------------------------------------------------------------- top-k records
def test_runs_with_top_k_records(tracked: xr.Dataset) -> None:
    ex = Explorer(tracked)
    assert [s for _, s in ex.step_slider.options] == [0, 6]  # the densities
    assert_shows(ex, tracked, 6, 1.0)
    assert "2 recorded densities (0…6) and 2 top-k records" in ex.status.value
    spec = drawn(ex)
    sharpness = table(spec, "sharpness", "threshold")
    assert sharpness["step"].tolist() == [0, 2, 4, 6]  # the trajectory has every record
    assert sharpness["threshold"].tolist() == (2 / tracked.lr).values.tolist()
    gradient = table(spec, "variable", "value", without="step_end")
    assert gradient["step"].tolist() == [0, 2, 4, 6]
    measure = table(spec, "cumulative")
    assert set(measure["step"]) == {6}
    assert "gradient's spectral measure" in [t["text"] for t in titles(spec)]
    ex.step = 0  # the measure follows the slider
    measure = table(drawn(ex), "cumulative")
    assert set(measure["step"]) == {0}
    weights = tracked.grad_weights.sel(step=0).values
    np.testing.assert_array_equal(
        np.sort(measure["weight"].dropna()), np.sort(weights[np.isfinite(weights)])
    )
    filters = {
        t["filter"]
        for v in layers(drawn(ex))
        for t in v.get("transform", [])
        if str(t.get("filter", "")).startswith("datum.step")
    }
    assert filters == {"datum.step == 0"}  # every view shows, or marks, the slider's step


def test_old_files_show_no_gradient_measure(run: xr.Dataset) -> None:
    spec = drawn(Explorer(run))  # no grad_nodes, no has_density
    assert not [t for t in tables(spec) if "cumulative" in t]
    assert table(spec, "sharpness")["full"].all()
    single = drawn(Explorer(run.isel(step=[0])))  # one step: no sharpness over training
    assert not [t for t in tables(single) if "sharpness" in t]


def test_refresh_picks_up_top_k_records(tracked: xr.Dataset) -> None:
    current = {"ds": tracked.isel(step=[0, 1])}  # a full record, then a top-k record
    ex = Explorer(lambda: current["ds"])
    assert [s for _, s in ex.step_slider.options] == [0] and ex.step == 0
    assert table(drawn(ex), "sharpness")["step"].tolist() == [0, 2]
    current["ds"] = tracked
    ex.refresh()
    assert [s for _, s in ex.step_slider.options] == [0, 6] and ex.step == 6
    assert table(drawn(ex), "sharpness")["step"].tolist() == [0, 2, 4, 6]


# ---------------------------------------------------------------------- curvatures and blocks
def assert_shows_panel(ex: Explorer, spec: dict, i: int, one: xr.Dataset, step: int) -> None:
    """Density panel ``i`` holds ``one``'s density at ``step`` with the explorer's kernels."""
    (panel,) = [p for p in spec["vconcat"] if "Hessian" in str(titles(p))]
    data = panel_table(spec, panels(panel)[i], "density")
    (kernel,) = ex.smoothing.kernels(one.sel(step=[step]))
    expected = one.sel(step=[step]).hess.density(sigma=kernel.sigma, grid=kernel.grid)
    np.testing.assert_array_equal(data["density"], expected.values[0])


def test_curvatures_side_by_side_and_a_block_selector() -> None:
    ds = series_run()
    ex = Explorer(ds)
    assert ex.block_select.options == BLOCKS and ex.block == "conv1"
    assert ex.block_select.layout.display is None and ex.run_select.layout.display == "none"
    spec = drawn(ex)
    densities = [t["text"] for t in titles(spec) if t["text"].startswith("Hessian")]
    assert densities == [f"Hessian eigenvalue density · {c}" for c in CURVATURES]
    hessian = ds.sel(curvature="hessian", block="conv1")
    assert_shows_panel(ex, spec, 0, hessian, 20)
    assert_shows_panel(ex, spec, 1, ds.sel(curvature="ggn", block="conv1"), 20)
    np.testing.assert_array_equal(
        ex.density().values, hessian.sel(step=[20]).hess.density(ex.sigma, ex.kernel.grid)[0]
    )  # the first curvature's
    assert "block <b>conv1</b>" in ex.status.value and "at step 20 (hessian)" in ex.status.value
    layers = [t for t in tables(spec) if "block" in t]  # every block's λ₁, per curvature
    assert len(layers) == 2 and all(set(t["block"].astype(str)) == set(BLOCKS) for t in layers)
    firsts = [titles(row)[0]["text"].split(" · ")[0] for row in spec["vconcat"]]
    assert firsts == [  # a row per view, each a panel per curvature
        "Hessian eigenvalue density",
        "gradient concentration",
        "sharpness over training",
        "spectrum statistics over training",
        "λ₁ of each block over training",
    ]
    ex.block = "fc"
    assert_shows_panel(ex, drawn(ex), 1, ds.sel(curvature="ggn", block="fc"), 20)
    assert "block <b>fc</b>" in ex.status.value
    assert_shows_panel(ex, drawn(ex), 0, ds.sel(curvature="hessian", block="fc"), 20)
    with pytest.raises(ValueError, match=r"no block named \['x'\]"):
        ex.block = "x"


def test_runs_and_blocks_combined() -> None:
    ds = hessnb.combine_runs(
        {
            "bn": series_run(curvatures=None, name="bn", seed=1),
            "no-bn": series_run((0, 10, 20, 40), curvatures=None, name="no-bn", seed=2),
        }
    )
    ex = Explorer(ds, run="no-bn", block="0")
    assert (ex.run, ex.block, ex.step) == ("no-bn", "0", 40)
    assert_shows(ex, ds.sel(run="no-bn", block="0"), 40, 1.0)
    ex.run = "bn"
    assert (ex.block, ex.step) == ("0", 20)  # the block stays, the step follows the run
    assert_shows(ex, ds.sel(run="bn", block="0"), 20, 1.0)
    assert "run <b>bn</b> · block <b>0</b>" in ex.status.value
    (layers,) = [t for t in tables(drawn(ex)) if "block" in t]  # the run's blocks
    np.testing.assert_array_equal(
        layers.pivot(index="step", columns="block", values="eigenvalue").to_numpy(),
        ds.sel(run="bn").top_eigenvalues.sel(k=1).dropna("step").values[:, [1, 0, 2]],
    )  # the pivot sorts the blocks: 0, conv1, fc


def test_refresh_picks_up_blocks() -> None:
    current = {"ds": run_dataset(steps=(0, 10))}
    ex = Explorer(lambda: current["ds"])
    assert ex.block is None and ex.block_select.layout.display == "none"
    assert not [t for t in tables(drawn(ex)) if "block" in t]  # no layer view
    current["ds"] = series_run(curvatures=None)
    ex.refresh()
    assert ex.block == "conv1" and ex.block_select.options == BLOCKS
    assert ex.block_select.layout.display is None
    assert len([t for t in tables(drawn(ex)) if "block" in t]) == 1
    assert_shows(ex, series_run(curvatures=None).sel(block="conv1"), 20, 1.0)
