"""The self-contained HTML report: one step slider drives every view."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from vega_spec import table, tables, titles, views_with
from viz_data import BLOCKS, CURVATURES, run_dataset, series_run

from hessnb.linalg.statistics import STATISTICS
from hessnb.runfile import write_run
from hessnb.schema import PROVENANCE
from hessnb.viz import report, runs
from hessnb.viz.smoothing import Smoothing


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("runs")
    paths = []
    for name, steps in (("bn", (0, 10, 20)), ("no-bn", (0, 10, 20, 40))):
        path = folder / f"{name}.nc"
        write_run(run_dataset(steps=steps, name=name), path)
        paths.append(path)
    return paths


def test_report_chart_links_every_view_to_one_slider() -> None:
    run = run_dataset(steps=(0, 10, 20, 40))
    spec = report.report_chart(run).to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    density = table(spec, "density")
    assert sorted(set(density["step"])) == [0, 10, 20, 40]
    kernels = {k.step: k for k in Smoothing.of(run, points=report.REPORT_POINTS).kernels(run)}
    for step, rows in density.groupby("step"):
        kernel = kernels[step]  # each step with its own paper kernel, not widened
        assert kernel.sigma == kernel.paper
        expected = run.sel(step=[step]).hess.density(sigma=kernel.sigma, grid=kernel.grid)
        np.testing.assert_array_equal(rows["eigenvalue"], kernel.grid)
        np.testing.assert_array_equal(rows["density"], expected.values[0])
    slider_filter = {"filter": "datum.step <= at_step && at_step < datum.step_end"}
    for kind in ("line", "rule", "text", "point"):
        assert any(slider_filter in v.get("transform", []) for v in views_with(spec, kind))
    assert views_with(spec, "rect")  # the heat map
    assert not [t for t in tables(spec) if "block" in t]  # no blocks: no layer view
    stats = table(spec, "variable", "value", "series")  # the statistics over training
    assert set(stats["variable"]) == {"outlier_gap", "n_outliers", "lambda_min", "negative_mass"}
    older = report.report_chart(run.drop_vars(list(STATISTICS))).to_dict()
    assert not [t for t in tables(older) if "variable" in t and "series" in t]


def test_write_report_makes_a_self_contained_page(files, tmp_path) -> None:
    out = tmp_path / "out" / "report.html"
    assert report.write_report(files, out, points=60) == out
    page = out.read_text()
    assert "<script src=" not in page and "vega" in page
    body = page[page.rfind("</head>") :]  # the header is in the page, not in the JS bundle
    assert "Runs: bn, no-bn" in body and "training step" in body
    assert "<h1" in body and "lanczos_steps" in body


def test_header_lists_provenance_in_schema_order(tmp_path) -> None:
    run = run_dataset(steps=(0, 10))
    run.attrs.update(hessnb_version="0.1.0", precision="float64", unlisted="not shown")
    page = report.write_report(run, tmp_path / "r.html", points=40).read_text()
    body = page[page.rfind("</head>") :]
    shown = [key for key in PROVENANCE if f"<th>{key}</th>" in body]
    assert shown == [key for key in PROVENANCE if key in run.attrs]
    assert [body.index(f"<th>{key}</th>") for key in shown] == sorted(
        body.index(f"<th>{key}</th>") for key in shown
    )
    assert "unlisted" not in body


def test_load_runs_names_and_pads(files) -> None:
    both = report.load_runs(files)
    assert runs.run_names(both) == ["bn", "no-bn"]
    assert runs.steps_of(runs.select_run(both, "bn")).tolist() == [0, 10, 20]
    single = run_dataset(steps=(0, 10))
    assert report.load_runs(single) is single


def test_thinning_bounds_the_steps(tmp_path) -> None:
    run = run_dataset(steps=tuple(range(0, 50, 5)))
    path = report.write_report(run, tmp_path / "r.html", max_steps=4, points=40)
    assert "Showing 4 of 10 recorded densities" in path.read_text()
    spec = report.report_chart(run, points=40, max_steps=4).to_dict()
    assert sorted(set(table(spec, "density")["step"])) == [0, 15, 30, 45]
    assert spec["params"][0]["bind"]["step"] == 15  # the slider moves over the densities
    top = table(spec, "k", "eigenvalue", without="step_end")  # trajectories: every step
    assert sorted(set(top["step"])) == list(range(0, 50, 5))
    assert table(spec, "w1")["step"].tolist() == list(range(5, 50, 5))


def test_report_bad_input(tmp_path) -> None:
    run = run_dataset(steps=(0, 10))
    with pytest.raises(ValueError, match=r"ending in \.html"):
        report.write_report(run, tmp_path / "r.png")
    with pytest.raises(FileNotFoundError, match=r"no run file"):
        report.write_report(tmp_path / "missing.nc", tmp_path / "r.html")
    with pytest.raises(ValueError, match=r"at least one run"):
        report.write_report([], tmp_path / "r.html")
    with pytest.raises(ValueError, match=r"a report needs nodes, weights, which"):
        report.write_report(xr.Dataset(), tmp_path / "r.html")
    with pytest.raises(ValueError, match=r"max_steps"):
        report.write_report(run, tmp_path / "r.html", max_steps=1)


# ---------------------------------------------------------------------- new views
def test_report_adds_sharpness_measure_and_movement(tracked: xr.Dataset) -> None:
    spec = report.report_chart(tracked, points=200).to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    assert spec["params"][0]["bind"]["step"] == 6  # densities 0 and 6
    assert sorted(set(table(spec, "density")["step"])) == [0, 6]
    sharpness = table(spec, "sharpness", "threshold")
    assert sharpness["step"].tolist() == [0, 2, 4, 6]  # top-k records too
    assert sharpness["threshold"].tolist() == (2 / tracked.lr).values.tolist()
    assert sorted(set(table(spec, "cumulative")["step"])) == [0, 6]
    np.testing.assert_array_equal(table(spec, "w1")["w1"], tracked.hess.movement().values)
    slider_filter = {"filter": "datum.step <= at_step && at_step < datum.step_end"}
    (curve,) = [v for v in views_with(spec, "line") if v["encoding"]["y"]["field"] == "cumulative"]
    assert slider_filter in curve["transform"]
    heavy = report.report_chart(tracked, points=200, momentum=0.5).to_dict()
    np.testing.assert_allclose(
        table(heavy, "sharpness", "threshold")["threshold"], 3.0 / tracked.lr.values, rtol=1e-15
    )


def test_report_of_old_files_leaves_out_what_they_lack() -> None:
    run = run_dataset(steps=(0, 10, 20, 40))  # no grad_nodes, no has_density
    spec = report.report_chart(run).to_dict()
    assert not [t for t in tables(spec) if "cumulative" in t]  # no gradient measure
    assert table(spec, "sharpness")["full"].all()
    assert table(spec, "w1")["step"].tolist() == [10, 20, 40]
    single = report.report_chart(run.isel(step=[0])).to_dict()  # one step: nothing over time
    assert not [t for t in tables(single) if {"w1"} & set(t) or {"sharpness"} & set(t)]


def test_report_of_a_tracked_and_an_old_run(tracked: xr.Dataset) -> None:
    old = run_dataset(steps=(0, 10, 20), name="old")
    both = report.load_runs([tracked.assign_attrs(run="tracked"), old])
    spec = report.report_chart(both, points=60).to_dict()
    assert not [t for t in tables(spec) if "cumulative" in t]  # "old" has no measure
    steps = [sorted(set(t["step"])) for t in tables(spec) if "sharpness" in t]
    assert sorted(steps) == [[0, 2, 4, 6], [0, 10, 20]]
    moved = sorted(t["step"].tolist() for t in tables(spec) if "w1" in t)
    assert moved == [[6], [10, 20]]  # each run between its own densities


# ---------------------------------------------------------------------- curvatures and blocks
def test_report_of_combined_curvature_and_block_runs() -> None:
    both = report.load_runs(
        [series_run(name="bn", seed=1), series_run((0, 10, 20, 40), name="no-bn", seed=2)]
    )
    assert runs.series_dims(both) == ["run", "curvature", "block"]
    spec = report.report_chart(both, points=60, block="fc").to_dict()
    assert [p["name"] for p in spec["params"]] == ["at_step"]
    expected = [f"{r} · {c} · fc" for r in ("bn", "no-bn") for c in CURVATURES]
    densities = [t["text"] for t in titles(spec) if t["text"].startswith("Hessian")]
    assert densities == [f"Hessian eigenvalue density · {label}" for label in expected]
    assert set(table(spec, "variable", "value", "series")["series"]) == set(expected)
    layers = [t for t in tables(spec) if "block" in t]  # every block, per run and curvature
    assert len(layers) == 4
    assert all(set(t["block"].astype(str)) == set(BLOCKS) for t in layers)
    rects = [v for v in views_with(spec, "rect") if v["encoding"]["y"]["field"] == "block"]
    assert len(rects) == 4 and all(v["encoding"]["y"]["sort"] == list(BLOCKS) for v in rects)
    slider_filter = {"filter": "datum.step <= at_step && at_step < datum.step_end"}
    rules = [v for v in views_with(spec, "rule") if slider_filter in v.get("transform", [])]
    assert len(rules) >= 4


def test_report_page_names_the_curvatures_and_the_block_shown(tmp_path) -> None:
    page = report.write_report(
        series_run(curvatures=None), tmp_path / "r.html", points=40, block="0"
    ).read_text()
    body = page[page.rfind("</head>") :]
    assert "Blocks: conv1, 0, fc" in body and "The views show block <b>0</b>" in body
    assert "Curvatures" not in body and "Runs:" not in body
    with pytest.raises(ValueError, match=r"no block named \['x'\]"):
        report.write_report(series_run(curvatures=None), tmp_path / "x.html", block="x")
