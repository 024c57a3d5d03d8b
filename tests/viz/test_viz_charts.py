"""Chart builders: Vega-Lite specs hold the expected data, encodings and scales."""

from __future__ import annotations

import json
import re

import altair as alt
import numpy as np
import pytest
import xarray as xr
from vega_spec import panel_table, panels, table, tables, titles, views_with
from viz_data import (
    BLOCKS,
    CURVATURES,
    block_spectrum,
    run_dataset,
    series_run,
    series_runs,
    two_runs,
)

import hessnb
from hessnb.linalg.statistics import STATISTICS
from hessnb.viz import charts, frames
from hessnb.viz import runs as runs_of
from hessnb.viz.export import save
from hessnb.viz.runs import select_run
from hessnb.viz.smoothing import Smoothing


@pytest.fixture(scope="module")
def run() -> xr.Dataset:
    return run_dataset(steps=(0, 10, 20, 40))


@pytest.fixture(scope="module")
def runs() -> xr.Dataset:
    return two_runs()


# ---------------------------------------------------------------------- helpers
def expected(ds: xr.Dataset, step: int, sm: Smoothing | None = None) -> tuple[np.ndarray, ...]:
    """Grid and ``ds.hess.density`` of one run at ``step`` with that step's own kernel."""
    one = ds.sel(step=[step])
    (kernel,) = (sm or Smoothing.of(ds)).kernels(one)
    density = one.hess.density(sigma=kernel.sigma, grid=kernel.grid).isel(step=0)
    return kernel.grid, density.values


def assert_density(rows, ds: xr.Dataset, step: int, sm: Smoothing | None = None) -> None:
    grid, density = expected(ds, step, sm)
    np.testing.assert_array_equal(rows["eigenvalue"], grid)
    np.testing.assert_array_equal(rows["density"], density)


# ---------------------------------------------------------------------- density
def test_density_chart_spec_and_data(run: xr.Dataset) -> None:
    chart = charts.density_chart(run, 20)
    spec = chart.to_dict()
    assert json.loads(json.dumps(spec)) == spec
    assert type(chart).from_dict(spec).to_dict() == spec  # round-trips through JSON

    (line,) = views_with(spec, "line")
    assert line["encoding"]["x"]["field"] == "eigenvalue"
    assert line["encoding"]["y"]["scale"]["type"] == "log"
    assert line["encoding"]["y"]["scale"]["domain"][0] == charts.Y_FLOOR
    calc = [t["calculate"] for t in line["transform"] if "calculate" in t]
    assert f"max(datum.density, {charts.Y_FLOOR})" in calc

    data = table(spec, "eigenvalue", "density")
    assert set(data["step"]) == {20}
    assert_density(data, run, 20)
    assert line["encoding"]["x"]["scale"]["domain"] == list(Smoothing.of(run).domain)
    # the probe-bootstrap band (8 probes) is drawn as an area between lower and upper
    (area,) = views_with(spec, "area")
    assert area["encoding"]["y2"]["field"] == "upper_shown"
    assert (data["lower"] <= data["upper"]).all()


def test_top_eigenvalues_drawn_as_rules_coloured_by_gradient_share(run: xr.Dataset) -> None:
    spec = charts.density_chart(run, 10).to_dict()
    (rule,) = [v for v in views_with(spec, "rule") if "color" in v["encoding"]]
    assert rule["encoding"]["color"]["field"] == "overlap"
    assert rule["encoding"]["size"]["field"] == "overlap"
    assert {"filter": "datum.step == 10"} in rule["transform"]
    rows = table(spec, "k", "eigenvalue", "overlap")
    at = rows[rows["step"] == 10].sort_values("k")
    np.testing.assert_array_equal(at["eigenvalue"], run.top_eigenvalues.sel(step=10))
    np.testing.assert_array_equal(at["overlap"], run.grad_overlap.sel(step=10))


def test_density_default_step_is_last_and_label_names_it(run: xr.Dataset) -> None:
    spec = charts.density_chart(run).to_dict()
    assert set(table(spec, "density")["step"]) == {40}
    (text,) = views_with(spec, "text")
    labels = table(spec, "label")
    assert labels.set_index("step").loc[40, "label"].startswith("step 40 · lr 0.01")
    assert {"filter": "datum.step == 40"} in text["transform"]
    # every step's label names its own kernel width
    for kernel in Smoothing.of(run).kernels(run):
        label = labels.set_index("step").loc[kernel.step, "label"]
        assert label.endswith(f"σ {kernel.sigma:.3g}"), label


def test_subtitle_states_the_kernel_and_any_widening(run: xr.Dataset) -> None:
    (title,) = [t for t in titles(charts.density_chart(run).to_dict()) if "subtitle" in t]
    assert title["subtitle"] == [
        "kernel: each step's own σ, σ² = 1e-05·max(1, range) (the paper's)"
    ]
    spec = charts.density_chart(run, charts.step_slider(run), points=40).to_dict()
    (title,) = [t for t in titles(spec) if "subtitle" in t]
    kernels = Smoothing.of(run, points=40).kernels(run)
    worst = max(kernels, key=lambda k: k.widening)
    assert worst.widening > 1.5
    assert title["subtitle"][1] == (
        f"σ widened up to ×{worst.widening:.2g} (step {worst.step}) to fit 40 grid points"
    )
    label = table(spec, "label").set_index("step").loc[worst.step, "label"]
    assert label.endswith(f"(×{worst.widening:.2g} widened)")
    scaled = charts.density_chart(run, scale=3.0).to_dict()
    (title,) = [t for t in titles(scaled) if "subtitle" in t]
    assert title["subtitle"][0].startswith("kernel: 3 × each step's own paper σ")


def test_bulk_edge_rule_when_stored(run: xr.Dataset) -> None:
    spec = charts.density_chart(run, 20).to_dict()
    edges = [v for v in views_with(spec, "rule") if v["encoding"]["x"]["field"] == "bulk_edge"]
    (edge,) = edges
    assert {"filter": "datum.step == 20"} in edge["transform"]
    rows = table(spec, "bulk_edge").set_index("step")
    np.testing.assert_array_equal(rows["bulk_edge"], run["bulk_edge"].values)
    np.testing.assert_array_equal(rows["n_outliers"], run["n_outliers"].values)
    older = charts.density_chart(run.drop_vars(list(STATISTICS)), 20).to_dict()
    assert all(v["encoding"]["x"]["field"] != "bulk_edge" for v in views_with(older, "rule"))


def test_linear_y_and_symlog_x(run: xr.Dataset) -> None:
    spec = charts.density_chart(run, 0, log_y=False, x_scale="symlog", band=False).to_dict()
    (line,) = views_with(spec, "line")
    assert line["encoding"]["y"]["scale"].get("type", "linear") == "linear"
    assert line["encoding"]["x"]["scale"]["type"] == "symlog"
    assert not views_with(spec, "area")
    assert_density(table(spec, "density"), run, 0)


def test_explicit_sigma_and_single_spectrum() -> None:
    spectrum = hessnb.spectrum(
        np.diag(np.arange(1.0, 21.0)), lanczos_steps=20, top_k=2, progress=False
    )
    spec = charts.density_chart(spectrum, sigma=0.3, points=200).to_dict()
    data = table(spec, "density")
    expected = spectrum.hess.density(sigma=0.3, grid=data["eigenvalue"].to_numpy())
    np.testing.assert_allclose(data["density"], expected.values, rtol=1e-12)
    assert "lower" not in data  # one probe: no band
    assert table(spec, "label")["label"].tolist() == ["step 0 · σ 0.3"]


def test_slider_chart_embeds_every_step(run: xr.Dataset) -> None:
    slider = charts.step_slider(run)
    spec = charts.density_chart(run, slider).to_dict()
    (param,) = spec["params"]
    assert param["name"] == charts.SLIDER_NAME
    assert param["bind"] == {
        "input": "range",
        "min": 0,
        "max": 40,
        "step": 10,
        "name": "training step ",
    }
    assert param["value"] == 40
    (line,) = views_with(spec, "line")
    assert {"filter": "datum.step <= at_step && at_step < datum.step_end"} in line["transform"]
    data = table(spec, "density")
    for step, rows in data.groupby("step"):
        assert_density(rows, run, step)
    ends = data.groupby("step")["step_end"].first()
    assert ends.to_dict() == {0: 10, 10: 20, 20: 40, 40: 60}


# ---------------------------------------------------------------------- over training
def test_heatmap_of_log_density_with_lr_drop(run: xr.Dataset) -> None:
    spec = charts.density_heatmap(run, 20, cells=40).to_dict()
    (rect,) = views_with(spec, "rect")
    assert rect["encoding"]["color"]["field"] == "log10_density"
    assert rect["encoding"]["x2"]["field"] == "step_end"
    cells = table(spec, "log10_density")
    sm = Smoothing.of(run)
    width = (sm.domain[1] - sm.domain[0]) / 40
    assert len(cells) == 4 * 40
    for step in (0, 40):  # each step's cell means, with its own kernel, integrate to 1
        means = 10.0 ** cells.loc[cells["step"] == step, "log10_density"]
        assert means.sum() * width == pytest.approx(1.0, abs=1e-3)
    (title,) = [t for t in titles(spec) if "subtitle" in t]
    assert title["subtitle"][1] == f"mean over cells {width:.3g} high"
    drops = table(spec, "event")
    assert drops["step"].tolist() == [20]  # lr 0.1 -> 0.01 between steps 10 and 20


def test_top_eigenvalue_trajectories(run: xr.Dataset) -> None:
    spec = charts.top_eigenvalues_chart(run, 10).to_dict()
    lines = views_with(spec, "line")
    assert lines[0]["encoding"]["color"]["field"] == "k"
    data = table(spec, "k", "eigenvalue", "residual", without="step_end")
    wide = data.pivot(index="step", columns="k", values="eigenvalue")
    np.testing.assert_array_equal(wide.to_numpy(), run.top_eigenvalues.values)
    marker = [v for v in views_with(spec, "point")]
    assert {"filter": "datum.step == 10"} in marker[0]["transform"]
    only_top = table(
        charts.top_eigenvalues_chart(run, k=1).to_dict(), "k", "eigenvalue", without="step_end"
    )
    assert set(only_top["k"]) == {1}


def test_gradient_chart(run: xr.Dataset) -> None:
    spec = charts.gradient_chart(run, 20).to_dict()
    fraction = table(spec, "variable", "value", without="step_end")
    np.testing.assert_array_equal(fraction["value"], run.grad_fraction.values)
    (area,) = views_with(spec, "area")
    assert area["encoding"]["y"]["stack"] == "zero"
    overlap = table(spec, "overlap")
    sums = overlap.groupby("step")["overlap"].sum()
    np.testing.assert_allclose(sums.to_numpy(), run.grad_fraction.values)


def test_statistics_chart_panels_and_marker(run: xr.Dataset) -> None:
    spec = charts.statistics_chart(run, 10).to_dict()
    panels = spec["hconcat"]
    assert [p["title"] for p in panels] == [
        "outlier_gap",
        "n_outliers",
        "lambda_min",
        "negative_mass",
    ]
    lines = views_with(spec, "line")
    filters = [next(t["filter"] for t in v["transform"] if "filter" in t) for v in lines]
    names = ["outlier_gap", "n_outliers", "lambda_min", "negative_mass"]
    assert filters == [f"(datum.variable === '{n}')" for n in names]
    scales = {n: v["encoding"]["y"].get("scale", {}) for n, v in zip(names, lines, strict=True)}
    assert scales["outlier_gap"]["type"] == "log"  # the gap on a log axis
    assert scales["lambda_min"].get("type", "linear") == "linear"
    data = table(spec, "variable", "value", "shown")
    for name in STATISTICS:
        if name == "bulk_edge":
            continue
        rows = data[data["variable"] == name]
        np.testing.assert_array_equal(rows["value"], run[name].values)
    assert data.loc[data["shown"] == 1, "step"].unique().tolist() == [10]
    points = views_with(spec, "point")
    assert len(points) == 4 and all({"filter": "datum.shown"} in v["transform"] for v in points)
    assert len(spec["datasets"]) == 1  # one base chart: one table for all panels


def test_statistics_chart_overlays_runs_and_follows_the_slider(runs: xr.Dataset) -> None:
    slider = charts.step_slider(runs)
    spec = charts.statistics_chart(runs, slider).to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    (line, *_) = views_with(spec, "line")
    assert line["encoding"]["color"]["field"] == "series"
    assert line["encoding"]["color"]["title"] == "run"
    data = table(spec, "variable", "value")
    assert set(data["series"]) == {"bn", "no-bn"}
    slider_filter = {"filter": "datum.step <= at_step && at_step < datum.step_end"}
    assert all(slider_filter in v["transform"] for v in views_with(spec, "point"))
    # step 40 exists only in "no-bn": its marker, none for "bn"
    at_40 = table(charts.statistics_chart(runs, 40).to_dict(), "shown")
    assert set(at_40.loc[at_40["shown"] == 1, "series"]) == {"no-bn"}
    with pytest.raises(ValueError, match=r"step 15 was not recorded"):
        charts.statistics_chart(runs, 15)


def test_statistics_chart_needs_statistics(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"statistics_chart needs one of outlier_gap"):
        charts.statistics_chart(run.drop_vars(list(STATISTICS)))
    partial = charts.statistics_chart(run.drop_vars(["lambda_min", "negative_mass"])).to_dict()
    assert [p["title"] for p in partial["hconcat"]] == ["outlier_gap", "n_outliers"]


def test_shipped_runs_without_statistics_still_draw() -> None:
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "notebooks" / "data"
    old = hessnb.combine_runs({n: hessnb.open_run(data / f"{n}.nc") for n in ("no-bn", "bn")})
    old = old.drop_vars([n for n in STATISTICS if n in old])
    spec = charts.density_chart(old, charts.step_slider(old)).to_dict()
    assert len(spec["hconcat"]) == 2


def test_runs_side_by_side_share_scales_and_grid(runs: xr.Dataset) -> None:
    spec = charts.density_chart(runs, 10).to_dict()
    assert len(spec["hconcat"]) == 2
    assert spec["resolve"]["scale"] == {"x": "shared", "y": "shared", "color": "shared"}
    names = [view["title"]["text"] for view in spec["hconcat"]]
    assert names == ["Hessian eigenvalue density · bn", "Hessian eigenvalue density · no-bn"]
    sm = Smoothing.of(runs)
    dens = [t for t in tables(spec) if "density" in t.columns]
    assert len(dens) == 2
    widths = []
    for name, frame in zip(["bn", "no-bn"], dens, strict=True):
        one = select_run(runs, name)
        assert_density(frame, one, 10, sm)  # each run at step 10 with its own kernel
        widths.append(sm.kernels(one.sel(step=[10]))[0].sigma)
    assert widths[0] != widths[1]
    x_scales = [v["encoding"]["x"]["scale"] for v in views_with(spec, "line")]
    assert all(s["domain"] == list(sm.domain) for s in x_scales)  # one x range
    # step 40 exists only in "no-bn": a clear error names the run's steps
    with pytest.raises(ValueError, match=r"step 40 was not recorded; recorded steps are 0, 10"):
        charts.density_chart(runs, 40)
    for builder in (charts.top_eigenvalues_chart, charts.gradient_chart, charts.density_heatmap):
        assert len(builder(runs).to_dict()["hconcat"]) == 2


# ---------------------------------------------------------------------- export
def test_export_png_svg_html_json(run: xr.Dataset, tmp_path) -> None:
    chart = charts.density_chart(run, charts.step_slider(run), points=100)
    assert save(chart, tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in save(chart, tmp_path / "d.svg").read_text()[:200]
    page = save(chart, tmp_path / "d.html").read_text()
    assert "<script src=" not in page  # self-contained: nothing fetched
    assert "training step" in page and "at_step" in page
    assert json.loads(save(chart, tmp_path / "d.json").read_text()) == chart.to_dict()
    with pytest.raises(ValueError, match=r"ending in one of"):
        save(chart, tmp_path / "d.gif")


# ---------------------------------------------------------------------- bad input
def test_missing_variables_are_named(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"a density view needs nodes, weights, which"):
        charts.density_chart(xr.Dataset())
    with pytest.raises(ValueError, match=r"grad_fraction"):
        charts.gradient_chart(run.drop_vars("grad_fraction"))
    with pytest.raises(ValueError, match=r"top_eigenvalues"):
        charts.top_eigenvalues_chart(run.drop_vars("top_eigenvalues"))
    with pytest.raises(TypeError, match=r"xarray.Dataset"):
        charts.density_chart(run.nodes)


def test_empty_run(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"empty.*track at least one step"):
        charts.density_chart(run.isel(step=[]))
    padded = run.copy()
    padded["nodes"] = padded.nodes * np.nan
    with pytest.raises(ValueError, match=r"empty.*track at least one step"):
        charts.density_chart(padded)
    with pytest.raises(ValueError, match=r"empty.*track at least one step"):
        select_run(run.isel(step=[]))


def test_bad_step_sigma_points(run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"step 15 was not recorded.*nearest: 10|nearest: 20"):
        charts.density_chart(run, 15)
    with pytest.raises(TypeError, match=r"step must be an int"):
        charts.density_chart(run, "10")
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"sigma must be a positive finite number"):
            charts.density_chart(run, sigma=sigma)
    with pytest.raises(ValueError, match=r"points must be an int >= 2"):
        charts.density_chart(run, points=1)
    with pytest.raises(ValueError, match=r"x_scale"):
        charts.density_chart(run, x_scale="log")
    with pytest.raises(ValueError, match=r"k must lie in 1..3"):
        charts.top_eigenvalues_chart(run, k=4)


# ---------------------------------------------------------------------- top-k records
def round_trips(chart) -> dict:
    """The chart's Vega-Lite spec, checked to survive JSON and altair's from_dict."""
    spec = chart.to_dict()
    assert json.loads(json.dumps(spec)) == spec
    assert type(chart).from_dict(spec).to_dict() == spec
    return spec


def test_trajectories_draw_top_k_records_density_views_do_not(tracked: xr.Dataset) -> None:
    top = table(
        charts.top_eigenvalues_chart(tracked).to_dict(), "k", "eigenvalue", without="step_end"
    )
    assert sorted(set(top["step"])) == [0, 2, 4, 6]
    wide = top.pivot(index="step", columns="k", values="eigenvalue")
    np.testing.assert_array_equal(wide.to_numpy(), tracked.top_eigenvalues.values)
    spec = charts.gradient_chart(tracked, 2).to_dict()  # a top-k step is a valid marker
    fraction = table(spec, "variable", "value", without="step_end")
    np.testing.assert_array_equal(fraction["value"], tracked.grad_fraction.values)
    assert {"filter": "datum.step == 2"} in views_with(spec, "point")[0]["transform"]
    assert set(table(charts.density_chart(tracked).to_dict(), "density")["step"]) == {6}
    stats = table(charts.statistics_chart(tracked).to_dict(), "variable", "value")
    assert sorted(set(stats["step"])) == [0, 6]
    with pytest.raises(ValueError, match=r"step 2 was not recorded; recorded steps are 0, 6"):
        charts.density_chart(tracked, 2)


def test_sharpness_chart(tracked: xr.Dataset) -> None:
    spec = round_trips(charts.sharpness_chart(tracked, 2))
    upper, lower = spec["vconcat"]  # λ₁ above, grad_fraction beneath on the same x
    assert spec["resolve"]["scale"]["x"] == "shared"
    data = table(spec, "sharpness", "threshold")
    assert data["step"].tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(data["sharpness"], tracked.top_eigenvalues.sel(k=1))
    assert data["threshold"].tolist() == (2 / tracked.lr).values.tolist()  # 2/η per step
    np.testing.assert_array_equal(data["grad_fraction"], tracked.grad_fraction)
    assert data["full"].tolist() == [1, 0, 0, 1]
    # full records filled, top-k records hollow
    (points, *_) = [v for v in views_with(upper, "point") if "fill" in v["encoding"]]
    fill = points["encoding"]["fill"]
    assert fill["field"] == "record"
    assert fill["scale"]["domain"] == [frames.FULL_RECORD, frames.TOP_K_RECORD]
    assert fill["scale"]["range"][1] == "white"
    lines = {v["encoding"]["y"]["field"]: v for v in views_with(upper, "line")}
    assert lines["threshold"]["mark"]["interpolate"] == "step-after"
    dash = lines["threshold"]["encoding"]["strokeDash"]["scale"]
    assert dash["domain"] == [charts.SHARPNESS, "2/η (gradient descent)"]
    (title,) = [t for t in titles(spec) if "subtitle" in t]
    assert title["subtitle"] == ["dashed: the stability threshold 2/η (gradient descent)"]
    assert [v["encoding"]["y"]["field"] for v in views_with(lower, "line")] == ["grad_fraction"]
    markers = [v for v in views_with(spec, "point") if "fill" not in v["encoding"]]
    assert all({"filter": "datum.step == 2"} in v["transform"] for v in markers)
    heavy = charts.sharpness_chart(tracked, momentum=0.9).to_dict()
    data = table(heavy, "sharpness", "threshold")
    np.testing.assert_allclose(data["threshold"], 3.8 / tracked.lr.values, rtol=1e-15)
    (title,) = [t for t in titles(heavy) if "subtitle" in t]
    assert "(2+2β)/η, β = 0.9 (heavy-ball momentum)" in title["subtitle"][0]


def test_sharpness_chart_without_lr_says_how_to_record_it(tracked: xr.Dataset) -> None:
    spec = charts.sharpness_chart(tracked.drop_vars("lr")).to_dict()
    assert "threshold" not in table(spec, "sharpness")
    assert [v["encoding"]["y"]["field"] for v in views_with(spec, "line")] == [
        "sharpness",
        "grad_fraction",
    ]
    (title,) = [t for t in titles(spec) if "subtitle" in t]
    assert title["subtitle"] == [charts.NO_LR_NOTE]
    assert "pass lr= to tracker.record / tracker.maybe_record" in charts.NO_LR_NOTE
    alone = charts.sharpness_chart(tracked.drop_vars(["lr", "grad_fraction"])).to_dict()
    assert "vconcat" not in alone and "layer" in alone  # no panel beneath


def test_sharpness_chart_on_old_files_and_several_runs(run: xr.Dataset, runs) -> None:
    data = table(charts.sharpness_chart(run).to_dict(), "sharpness")
    assert data["full"].all() and data["step"].tolist() == [0, 10, 20, 40]
    np.testing.assert_array_equal(data["threshold"], 2 / run.lr.values)
    slider = charts.step_slider(runs)
    spec = charts.sharpness_chart(runs, slider).to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    upper, lower = spec["vconcat"]
    assert len(upper["hconcat"]) == len(lower["hconcat"]) == 2
    assert upper["resolve"]["scale"]["y"] == "shared"
    names = [v["title"]["text"] for v in upper["hconcat"]]
    assert names == ["sharpness over training · bn", "sharpness over training · no-bn"]


def test_gradient_measure_chart(tracked: xr.Dataset) -> None:
    spec = round_trips(charts.gradient_measure_chart(tracked))
    data = table(spec, "cumulative")
    assert set(data["step"]) == {6}  # the last full record
    (curve,) = views_with(spec, "line")
    assert curve["mark"]["interpolate"] == "step-after"
    assert curve["encoding"]["x"]["field"] == "eigenvalue"
    assert {"filter": "datum.step == 6"} in curve["transform"]
    nodes = tracked.grad_nodes.values
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    pad = charts.MEASURE_PADDING * (hi - lo)  # one x range: every step's nodes
    assert curve["encoding"]["x"]["scale"]["domain"] == [lo - pad, hi + pad]
    assert data["cumulative"].iloc[[0, -1]].tolist() == [0.0, data["cumulative"].iloc[-2]]
    assert data["cumulative"].iloc[-1] == pytest.approx(1.0, abs=1e-12)
    jumps = data.dropna(subset=["weight"])
    np.testing.assert_array_equal(
        np.sort(jumps["weight"]), np.sort(tracked.grad_weights.sel(step=6).values)
    )
    (points,) = views_with(spec, "point")
    assert {"filter": "isValid(datum.weight)"} in points["transform"]
    slider = charts.step_slider(tracked)
    data = table(charts.gradient_measure_chart(tracked, slider).to_dict(), "cumulative")
    assert data.groupby("step")["step_end"].first().to_dict() == {0: 6, 6: 12}


def test_gradient_measure_chart_errors(tracked: xr.Dataset, run: xr.Dataset) -> None:
    with pytest.raises(ValueError, match=r"gradient_measure_chart: the gradient's spectral"):
        charts.gradient_measure_chart(run)  # an old run file: no grad_nodes
    with pytest.raises(ValueError, match=r"is not stored in this run"):
        charts.gradient_measure_chart(tracked.drop_vars("grad_weights"))
    with pytest.raises(ValueError, match=r"only full records store .* step 2 was not recorded"):
        charts.gradient_measure_chart(tracked, 2)


def test_movement_chart(tracked: xr.Dataset, run: xr.Dataset, runs) -> None:
    spec = round_trips(charts.movement_chart(tracked))
    data = table(spec, "w1")
    np.testing.assert_array_equal(data["w1"], tracked.hess.movement().values)
    (line,) = views_with(spec, "line")
    assert line["encoding"]["y"]["field"] == "w1"
    assert {t["field"] for t in line["encoding"]["tooltip"]} >= {"per_step", "previous"}
    data = table(charts.movement_chart(run, 20).to_dict(), "w1")
    moved = run.hess.movement()
    np.testing.assert_array_equal(data["w1"], moved.values)
    np.testing.assert_array_equal(data["per_step"], moved["per_step"].values)
    assert len(charts.movement_chart(runs).to_dict()["hconcat"]) == 2
    with pytest.raises(ValueError, match=r"at least two recorded densities per run; the run"):
        charts.movement_chart(tracked.isel(step=[0, 1, 2]))


def test_new_charts_render_offline(tracked: xr.Dataset, tmp_path) -> None:
    slider = charts.step_slider(tracked)
    drawn = alt.vconcat(
        charts.sharpness_chart(tracked, slider),
        charts.gradient_measure_chart(tracked, slider),
        charts.movement_chart(tracked, slider),
    )
    svg = save(drawn, tmp_path / "new.svg").read_text()
    assert "<svg" in svg[:200] and "sharpness over training" in svg
    assert "gradient&apos;s spectral measure" in svg or "gradient's spectral measure" in svg


# ---------------------------------------------------------------------- curvatures and blocks
#: Datasets of issue 12 and the series each view draws (the first block by default).
SERIES = {
    "curvature": ["hessian", "ggn"],
    "block": ["conv1"],
    "both": ["hessian · conv1", "ggn · conv1"],
    "combined": [f"{r} · {c} · conv1" for r in ("bn", "no-bn") for c in CURVATURES],
}


def series_dataset(kind: str) -> xr.Dataset:
    if kind == "combined":
        return series_runs()
    return series_run(
        curvatures=None if kind == "block" else CURVATURES,
        blocks=None if kind == "curvature" else BLOCKS,
    )


@pytest.fixture(scope="module", params=list(SERIES))
def kind(request) -> str:
    return request.param


def panel_labels(spec: dict, what: str) -> list[str]:
    """The series labels in the titles ``what · label`` of a spec's panels."""
    texts = [t["text"] for t in titles(spec) if t["text"].startswith(what)]
    return [text.removeprefix(what).removeprefix(" · ") for text in texts]


def test_density_chart_draws_a_panel_per_series(kind: str) -> None:
    ds = series_dataset(kind)
    spec = charts.density_chart(ds, 10, band=False).to_dict()
    assert panel_labels(spec, "Hessian eigenvalue density") == SERIES[kind]
    shown = runs_of.pick_blocks(ds)  # the first block
    sm = Smoothing.of(shown)
    for (label, one), panel in zip(runs_of.each_series(shown), panels(spec), strict=True):
        assert label in panel["title"]["text"]
        assert_density(panel_table(spec, panel, "density"), one, 10, sm)
    x_scales = [v["encoding"]["x"]["scale"] for v in views_with(spec, "line")]
    assert all(s["domain"] == list(sm.domain) for s in x_scales)  # one x range


@pytest.mark.parametrize("kind", ["curvature", "block", "combined"])  # "both": above
@pytest.mark.parametrize(
    ("builder", "what"),
    [
        (charts.density_heatmap, "log-density over training"),
        (charts.top_eigenvalues_chart, "top eigenvalues"),
        (charts.gradient_chart, "gradient concentration"),
        (charts.sharpness_chart, "sharpness over training"),
        (charts.movement_chart, "spectrum movement"),
    ],
)
def test_every_view_draws_each_series(kind: str, builder, what: str) -> None:
    spec = builder(series_dataset(kind)).to_dict()
    assert panel_labels(spec, what) == SERIES[kind]


def test_trajectories_hold_each_series_values() -> None:
    ds = series_runs()
    spec = charts.top_eigenvalues_chart(ds, block="fc").to_dict()
    assert len(spec["concat"]) == 4 and spec["columns"] == 2  # a row per run
    assert spec["resolve"]["scale"] == {"x": "shared", "y": "shared", "color": "shared"}
    for panel, (run, curvature) in zip(
        spec["concat"], [(r, c) for r in ("bn", "no-bn") for c in CURVATURES], strict=True
    ):
        assert panel["title"] == f"top eigenvalues · {run} · {curvature} · fc"
        top = panel_table(spec, panel, "k", "eigenvalue", without="step_end")
        one = ds.sel(run=run, curvature=curvature, block="fc").dropna("step", how="all")
        wide = top.pivot(index="step", columns="k", values="eigenvalue")
        np.testing.assert_array_equal(wide.to_numpy(), one.top_eigenvalues.values)
    sharp = charts.sharpness_chart(series_run(blocks=None), 10).to_dict()
    for panel, curvature in zip(sharp["vconcat"][0]["hconcat"], CURVATURES, strict=True):
        data = panel_table(sharp, panel, "sharpness", "threshold")
        expected = series_run(blocks=None).top_eigenvalues.sel(curvature=curvature, k=1)
        np.testing.assert_array_equal(data["sharpness"], expected)


def test_statistics_overlay_the_series(kind: str) -> None:
    spec = charts.statistics_chart(series_dataset(kind), 10).to_dict()
    data = table(spec, "variable", "value", "series")
    assert sorted(set(data["series"])) == sorted(SERIES[kind])
    line = views_with(spec, "line")[0]
    if len(SERIES[kind]) > 1:
        assert line["encoding"]["color"]["field"] == "series"
        assert line["encoding"]["color"]["title"] == runs_of.series_title(series_dataset(kind))
    else:
        assert "field" not in line["encoding"]["color"]  # one series: one colour


def test_block_argument_selects_blocks() -> None:
    ds = series_run(curvatures=None)
    spec = charts.density_chart(ds, 20, block="fc", band=False).to_dict()
    fc = ds.sel(block="fc")
    assert_density(table(spec, "density"), fc, 20, Smoothing.of(ds.sel(block=["fc"])))
    two = charts.movement_chart(ds, block=["fc", "0"]).to_dict()
    assert panel_labels(two, "spectrum movement") == ["fc", "0"]
    for panel, block in zip(two["hconcat"], ["fc", "0"], strict=True):
        moved = panel_table(two, panel, "w1")["w1"]
        np.testing.assert_array_equal(moved, ds.sel(block=block).hess.movement().values)
    with pytest.raises(ValueError, match=r"no block named \['nope'\]; the dataset holds blocks"):
        charts.density_chart(ds, block="nope")
    with pytest.raises(ValueError, match=r"block='fc' was given, but this dataset holds no"):
        charts.sharpness_chart(run_dataset(steps=(0, 10)), block="fc")


def test_gradient_measure_of_each_curvature(tracked: xr.Dataset) -> None:
    from viz_data import stack

    both = stack(
        [tracked, tracked.assign(grad_nodes=2 * tracked.grad_nodes)], "curvature", CURVATURES
    )
    spec = charts.gradient_measure_chart(both).to_dict()
    assert panel_labels(spec, "gradient's spectral measure") == list(CURVATURES)
    hessian, ggn = (panel_table(spec, p, "cumulative") for p in spec["hconcat"])
    np.testing.assert_array_equal(
        ggn["eigenvalue"].iloc[1:-1], 2 * hessian["eigenvalue"].iloc[1:-1]
    )


# ---------------------------------------------------------------------- layer sharpness
def test_layer_sharpness_heat_map(kind: str) -> None:
    ds = series_dataset(kind)
    if kind == "curvature":
        with pytest.raises(ValueError, match=r"needs the spectra of the Hessian's diagonal blocks"):
            charts.layer_sharpness_chart(ds)
        return
    spec = round_trips(charts.layer_sharpness_chart(ds, 10, k=2))
    layers = runs_of.each_series(ds, densities_only=False, keep=("block",))
    expected = [label or "" for label, _ in layers]  # no label: a single run and curvature
    assert panel_labels(spec, "λ₂ of each block over training") == expected
    (rect, *_) = views_with(spec, "rect")
    assert rect["encoding"]["y"] == {
        "field": "block",
        "type": "nominal",
        "sort": list(BLOCKS),
        "title": "block",
    }
    assert rect["encoding"]["color"]["scale"]["type"] == "log"  # every λ₂ > 0
    for (_, one), panel in zip(layers, panels(spec), strict=True):
        cells = panel_table(spec, panel, "block", "eigenvalue")
        assert len(cells) == one.sizes["step"] * len(BLOCKS)  # a row per block at every step
        for block, rows in cells.groupby(cells["block"].astype(str)):
            np.testing.assert_array_equal(
                rows["eigenvalue"], one.top_eigenvalues.sel(block=block, k=2).values
            )
        assert cells["n_params"].tolist() == [10, 20, 30] * one.sizes["step"]
    rules = views_with(spec, "rule")
    assert rules and all({"filter": "datum.step == 10"} in v["transform"] for v in rules)


def test_layer_sharpness_values_and_scales() -> None:
    ds = series_run(curvatures=None)
    spec = charts.layer_sharpness_chart(ds).to_dict()
    cells = table(spec, "block", "eigenvalue")
    wide = cells.pivot(index="step", columns="block", values="eigenvalue")
    wide.columns = wide.columns.astype(str)
    np.testing.assert_array_equal(wide[list(BLOCKS)].to_numpy(), ds.top_eigenvalues.sel(k=1).values)
    assert spec["height"] == len(BLOCKS) * charts.LAYER_ROW_HEIGHT
    negative = ds.copy()
    negative["top_eigenvalues"] = negative.top_eigenvalues - 3.0
    spec = charts.layer_sharpness_chart(negative).to_dict()
    (rect,) = views_with(spec, "rect")
    assert rect["encoding"]["color"]["scale"]["type"] == "symlog"
    (title,) = [t for t in titles(spec) if "subtitle" in t]
    assert title["subtitle"] == ["symmetric-log colours: some λ₁ ≤ 0"]
    spec = charts.layer_sharpness_chart(ds, log=False).to_dict()
    (rect,) = views_with(spec, "rect")
    assert rect["encoding"]["color"]["scale"]["type"] == "linear"
    slider = charts.step_slider(ds)
    spec = charts.layer_sharpness_chart(ds, slider).to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    (rule,) = views_with(spec, "rule")
    assert {"filter": "datum.step <= at_step && at_step < datum.step_end"} in rule["transform"]
    with pytest.raises(ValueError, match=r"k must lie in 1..3, got 4"):
        charts.layer_sharpness_chart(ds, k=4)
    with pytest.raises(ValueError, match=r"a 'block' dimension.*hessnb.spectrum\(op, blocks="):
        charts.layer_sharpness_chart(run_dataset(steps=(0, 10)))


def test_layer_sharpness_of_a_single_block_spectrum() -> None:
    spectrum = block_spectrum()
    cells = table(charts.layer_sharpness_chart(spectrum).to_dict(), "block", "eigenvalue")
    assert cells["block"].tolist() == ["low", "high"] and cells["step"].tolist() == [0, 0]
    np.testing.assert_allclose(cells["eigenvalue"], [6.0, 12.0])
    assert table(charts.density_chart(spectrum).to_dict(), "density")["step"].tolist()[0] == 0


def test_layer_sharpness_renders_offline_in_stored_order(tmp_path) -> None:
    ds = series_run(curvatures=None)
    svg = save(charts.layer_sharpness_chart(ds, 10), tmp_path / "layers.svg").read_text()
    assert "λ₁ of each block over training" in svg
    labels = re.findall(r">(conv1|0|fc)</text>", svg)
    assert labels[-3:] == list(BLOCKS)  # the y axis, top to bottom, in the stored order
