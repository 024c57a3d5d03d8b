"""Altair chart builders for Hessian spectra and their evolution over training.

Every builder takes a dataset (a single spectrum, a tracked run, or several runs along a
``run`` dimension), returns an altair chart and never displays it. A run may hold the
spectra of several curvature matrices (a ``curvature`` dimension: Hessian, Gauss–Newton,
empirical Fisher) and of the Hessian's diagonal blocks (a ``block`` dimension, one per
layer). Every combination of run, curvature and block is a *series*
(:func:`hessnb.viz.runs.each_series`, labelled like ``"bn · ggn · conv1"``): series are
drawn side by side with shared scales (a row per run when runs have several), and
:func:`statistics_chart` overlays them as coloured lines. Blocks are many, so every
builder draws one block, the first stored, unless ``block=`` names another (or a list of
them); :func:`layer_sharpness_chart` shows every block at once. ``step`` selects what is
"current":

- an ``int``: that recorded step (the chart carries only its density);
- ``None``: the last recorded step;
- a parameter from :func:`step_slider`: every step is embedded and a Vega-Lite slider
  picks one in the browser, so exported HTML stays interactive without a kernel.

Densities are ``ds.hess.density`` with the paper's kernel for each step of each run
(:mod:`hessnb.viz.smoothing`), which the chart's subtitle states; the y axis is
logarithmic by default (the paper's view: outliers carry weight ~1/n). Where the run
stores the spectrum statistics, the density marks ``bulk_edge`` and
:func:`statistics_chart` follows ``outlier_gap``, ``n_outliers``, ``lambda_min`` and
``negative_mass`` over training; run files without them are drawn without them.

Runs tracked with ``Tracker(top_every=...)`` also hold top-k records (``top_eigenvalues``
and the gradient statistics, no density) between full records. Density views, the
statistics, :func:`gradient_measure_chart` (the gradient's spectral measure) and
:func:`movement_chart` (``ds.hess.movement()``) read the full records; the trajectories
:func:`top_eigenvalues_chart`, :func:`gradient_chart` and :func:`sharpness_chart` (λ₁
against 2/η) draw every record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import altair as alt
import numpy as np
import pandas as pd
import xarray as xr

from hessnb.schema import require
from hessnb.viz import frames, runs
from hessnb.viz.smoothing import MAX_POINTS, Kernel, Smoothing, XScale, widening_note

__all__ = [
    "StepArg",
    "density_chart",
    "density_heatmap",
    "gradient_chart",
    "gradient_measure_chart",
    "layer_sharpness_chart",
    "movement_chart",
    "sharpness_chart",
    "statistics_chart",
    "step_slider",
    "top_eigenvalues_chart",
]

StepArg = int | alt.Parameter | None
SLIDER_NAME = "at_step"
#: Lowest density drawn on a log axis (the paper plots about 1e-10 ... 1e2).
Y_FLOOR = 1e-10
WIDTH, HEIGHT = 420, 240
TRAJECTORY_WIDTH = 300
STATISTIC_WIDTH, STATISTIC_HEIGHT = 125, 140
#: Heat-map cells along the eigenvalue axis.
HEAT_CELLS = 150
#: Panels of :func:`statistics_chart`: statistic -> (axis title, logarithmic axis).
STATISTIC_PANELS = {
    "outlier_gap": ("λ₁ / bulk edge", True),
    "n_outliers": ("outliers above the bulk", False),
    "lambda_min": ("smallest eigenvalue λ_min", False),
    "negative_mass": ("weight on λ < 0", False),
}
BULK_EDGE_COLOUR = "#2e7d32"
SHARPNESS_COLOUR, THRESHOLD_COLOUR = "#1f4e79", "#c0504d"
#: Stroke dash patterns of the λ₁ line and the threshold line of :func:`sharpness_chart`.
SOLID, DASHED = [1, 0], [6, 3]
#: Stroke of the line symbols in the legend of the λ₁ and threshold lines.
LEGEND_STROKE = "#555555"
#: Legend entry of the λ₁ line of :func:`sharpness_chart`.
SHARPNESS = "λ₁: top eigenvalue"
#: Height of the ``grad_fraction`` panel beneath the sharpness.
FRACTION_HEIGHT = 90
#: Subtitle of :func:`sharpness_chart` for a run without ``lr``.
NO_LR_NOTE = (
    "no lr stored: pass lr= to tracker.record / tracker.maybe_record to draw the "
    "stability threshold 2/η"
)
MOVEMENT_NOTE = "Wasserstein-1 distance between consecutive densities; hover for the rate per step"
MEASURE_NOTE = "cumulative share of ‖g‖² on the Ritz values of the gradient's Lanczos run"
MEASURE_WIDTH = 300
#: Height of one block's row in :func:`layer_sharpness_chart`.
LAYER_ROW_HEIGHT = 22
#: Digits as subscripts, for the name of the eigenvalue of rank k (λ₁, λ₂, ...).
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
#: Why :func:`layer_sharpness_chart` cannot draw a dataset.
NO_BLOCKS = (
    "it needs the spectra of the Hessian's diagonal blocks (a 'block' dimension), which "
    "this dataset lacks: compute them with hessnb.spectrum(op, blocks='layers')"
)
#: Margin of :func:`gradient_measure_chart`'s x axis beyond the nodes (share of their range).
MEASURE_PADDING = 0.05


# ---------------------------------------------------------------------- plumbing
def _data(frame: pd.DataFrame) -> alt.InlineData:
    """Rows inlined as one CSV string (altair moves identical tables to one dataset).

    A string is neither copied nor validated record by record when charts are composed,
    is exempt from altair's 5000-row limit and is about half the size of JSON records;
    Vega parses it with the ``csv`` format and the column types of :func:`frames.to_csv`.
    """
    text, parse = frames.to_csv(frame)
    return alt.InlineData(values=text, format=alt.DataFormat(type="csv", parse=parse))


def _is_slider(step: StepArg) -> bool:
    return isinstance(step, alt.Parameter)


def _current(step: StepArg, run_ds: xr.Dataset) -> str:
    """Vega expression true for the rows of the current step (rows need ``step_end``)."""
    if _is_slider(step):
        name = step.name
        return f"datum.step <= {name} && {name} < datum.step_end"
    return f"datum.step == {runs.check_step(run_ds, step)}"


def _with_ends(frame: pd.DataFrame, run_ds: xr.Dataset) -> pd.DataFrame:
    steps = runs.steps_of(run_ds)
    ends = dict(zip(steps.tolist(), runs.step_ends(steps).tolist(), strict=True))
    return frame.assign(step_end=frame["step"].map(ends))


def _side_by_side(
    ds: xr.Dataset,
    build: Callable[[xr.Dataset, str | None], alt.TopLevelMixin],
    densities_only: bool = True,
    keep: Sequence[str] = (),
) -> alt.TopLevelMixin:
    """``build(series_ds, label)`` for each series, concatenated with shared scales.

    ``series_ds`` is one series of :func:`hessnb.viz.runs.each_series` (the dimensions in
    ``keep`` kept) at its densities, or with ``densities_only=False`` at every record
    (top-k records too). Panels sit in one row, or one row per run when runs have
    several panels each.
    """
    series = runs.each_series(ds, densities_only=densities_only, keep=keep)
    charts = [build(one, label) for label, one in series]
    if len(charts) == 1:
        return charts[0]
    columns = math.prod(len(runs.labels(ds, d)) for d in runs.series_dims(ds, (*keep, "run")))
    grid = (
        alt.hconcat(*charts)
        if columns in (1, len(charts))
        else alt.concat(*charts, columns=columns)
    )
    return grid.resolve_scale(x="shared", y="shared", color="shared")


def _called(series: str | None) -> str:
    """A series in a message: its label quoted, or "the run" when it has none."""
    return repr(series) if series else "the run"


def _title(what: str, series: str | None, subtitle: Sequence[str] = ()) -> alt.TitleParams | str:
    text = f"{what}{runs.SEPARATOR}{series}" if series else what
    lines = [line for line in subtitle if line]
    return alt.TitleParams(text, subtitle=lines) if lines else text


def step_slider(ds: xr.Dataset, name: str = SLIDER_NAME) -> alt.Parameter:
    """A Vega-Lite parameter bound to a range slider over the recorded steps.

    The slider moves in steps of the greatest common divisor of the gaps between
    recorded steps; a value between two recorded steps shows the earlier one.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s); the slider spans the steps recorded by any series.
    name : str
        Parameter name, used in the charts' filter expressions.

    Returns
    -------
    altair.Parameter
        Pass it as ``step`` to the chart builders; it starts at the last step.
    """
    steps = np.unique(np.concatenate([runs.steps_of(one) for _, one in runs.each_series(ds)]))
    gaps = np.diff(steps)
    increment = int(np.gcd.reduce(gaps)) if gaps.size else 1
    return alt.param(
        name=name,
        value=int(steps[-1]),
        bind=alt.binding_range(
            min=int(steps[0]), max=int(steps[-1]), step=max(increment, 1), name="training step "
        ),
    )


def _lr_layer(run_ds: xr.Dataset) -> alt.Chart | None:
    """Dashed rules at learning-rate drops, or None when there are none."""
    drops = frames.lr_drops(run_ds)
    if drops.size == 0:
        return None
    frame = pd.DataFrame({"step": drops, "event": "lr drop"})
    return (
        alt.Chart(_data(frame))
        .mark_rule(color="gray", strokeDash=[4, 3])
        .encode(x="step:Q", tooltip=["event:N", "step:Q"])
    )


def _layer(*charts: alt.Chart | None) -> alt.LayerChart:
    return alt.layer(*[c for c in charts if c is not None])


def _with_slider(chart: alt.TopLevelMixin, step: StepArg) -> alt.TopLevelMixin:
    return chart.add_params(step) if _is_slider(step) else chart


# ---------------------------------------------------------------------- density
def density_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    sigma: float | None = None,
    scale: float = 1.0,
    points: int = MAX_POINTS,
    x_scale: XScale = "linear",
    log_y: bool = True,
    band: bool = True,
    top: bool = True,
    y_floor: float = Y_FLOOR,
    y_max: float | None = None,
    smoothing: Smoothing | None = None,
    block: runs.BlockArg = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Smoothed eigenvalue density at one step, with bootstrap band and top eigenvalues.

    Parameters
    ----------
    ds : xarray.Dataset
        Spectrum, run or runs (``nodes``/``weights`` over (run?, step?, probe, node)).
    step : int, None or slider parameter
        Which step (see the module docstring).
    sigma, scale, points, x_scale
        Kernel (default: each step's own paper width times ``scale``; ``sigma``: one width
        for every step), most grid points per step and x scale (``"symlog"`` spreads the
        bulk near zero); ignored when ``smoothing`` is given.
    log_y : bool
        Logarithmic density axis, clipped below at ``y_floor``.
    band : bool
        Draw the probe-bootstrap 90 % band (needs at least 2 probes).
    top : bool
        Draw the top Ritz values as rules, coloured and sized by their share of the
        gradient (``grad_overlap``) when stored.
    y_max : float, optional
        Top of the y axis (default: just above the largest density drawn).
    smoothing : Smoothing, optional
        Kernels and x range to use (e.g. one shared by several charts).
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).

    Returns
    -------
    altair chart
        Layers: band (area), density (line), top eigenvalues (rules), bulk edge (rule,
        when stored), step label (text naming the step and its kernel width). The
        subtitle states the kernel and, when a grid forced a wider kernel, by how much.
        Its data holds ``ds.hess.density(sigma_s, grid_s)`` at the step(s) shown.
    """
    ds = runs.pick_blocks(ds, block)
    sm = smoothing or Smoothing.of(ds, sigma, points, x_scale, scale=scale)
    if log_y and not y_floor > 0:
        raise ValueError(f"y_floor must be positive on a log axis, got {y_floor}")

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        steps = None if _is_slider(step) else [runs.check_step(run_ds, step)]
        kernels = sm.kernels(run_ds)
        drawn = kernels if steps is None else [k for k in kernels if k.step in steps]
        frame = _with_ends(frames.density_frame(run_ds, sm, steps, band=band), run_ds)
        upper = frame["upper"].max() if "upper" in frame else 0.0
        top_value = y_max or max(float(frame["density"].max()), float(upper)) * (
            3.0 if log_y else 1.05
        )
        x_axis = alt.Scale(type=sm.x_scale, domain=list(sm.domain), nice=False)
        x = alt.X("eigenvalue:Q", title="eigenvalue λ", scale=x_axis)
        y_scale = (
            alt.Scale(type="log", domain=[y_floor, top_value])
            if log_y
            else alt.Scale(domain=[0.0, top_value])
        )
        shown = {
            col: f"max(datum.{col}, {y_floor})" if log_y else f"datum.{col}"
            for col in ("density", "lower", "upper")
            if col in frame
        }
        base = alt.Chart(_data(frame)).transform_filter(_current(step, run_ds))
        base = base.transform_calculate(**{f"{c}_shown": e for c, e in shown.items()})
        line = base.mark_line(clip=True, color="#1f4e79").encode(
            x=x,
            y=alt.Y("density_shown:Q", title="density φσ(λ)", scale=y_scale),
            tooltip=[
                alt.Tooltip("eigenvalue:Q", format=".4g"),
                alt.Tooltip("density:Q", format=".3g"),
            ],
        )
        area = None
        if "lower" in frame:
            area = base.mark_area(clip=True, opacity=0.25, color="#5b9bd5").encode(
                x=x, y=alt.Y("lower_shown:Q", scale=y_scale), y2="upper_shown:Q"
            )
        rules = _top_rules(run_ds, step, x) if top and "top_eigenvalues" in run_ds else None
        label = _step_label(run_ds, step, kernels)
        subtitle = [f"kernel: {sm.describe()}", widening_note(drawn, sm.max_points)]
        chart = _layer(area, line, rules, _bulk_edge_rule(run_ds, step, x_axis), label).properties(
            width=width,
            height=height,
            title=_title("Hessian eigenvalue density", series, subtitle),
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


def _top_rules(run_ds: xr.Dataset, step: StepArg, x: alt.X) -> alt.Chart:
    frame = _with_ends(frames.top_frame(run_ds), run_ds)
    tooltip = [alt.Tooltip("k:O", title="k"), alt.Tooltip("eigenvalue:Q", format=".5g")]
    tooltip += [alt.Tooltip(f"{c}:Q", format=".3g") for c in ("residual", "overlap") if c in frame]
    rules = alt.Chart(_data(frame)).transform_filter(_current(step, run_ds))
    if "overlap" in frame:
        return rules.mark_rule().encode(
            x=x,
            tooltip=tooltip,
            color=alt.Color(
                "overlap:Q",
                title="share of gradient",
                scale=alt.Scale(scheme="orangered", domain=[0, 1]),
            ),
            size=alt.Size("overlap:Q", scale=alt.Scale(domain=[0, 1], range=[1, 6]), legend=None),
        )
    return rules.mark_rule(color="#c0504d", strokeDash=[3, 2]).encode(x=x, tooltip=tooltip)


def _bulk_edge_rule(run_ds: xr.Dataset, step: StepArg, x_axis: alt.Scale) -> alt.Chart | None:
    """A dashed rule at ``bulk_edge`` of the current step, or None when not stored."""
    names = [n for n in ("bulk_edge", "n_outliers", "outlier_gap") if n in run_ds]
    if "bulk_edge" not in names:
        return None
    long = frames.scalar_frame(run_ds, names)
    frame = long.pivot(index="step", columns="variable", values="value").reset_index()
    frame = _with_ends(frame.dropna(subset=["bulk_edge"]), run_ds)
    if frame.empty:
        return None
    tooltip = [alt.Tooltip("bulk_edge:Q", title="bulk edge", format=".4g")]
    tooltip += [alt.Tooltip(f"{n}:Q", format=".3g") for n in names[1:]]
    return (
        alt.Chart(_data(frame))
        .transform_filter(_current(step, run_ds))
        .mark_rule(color=BULK_EDGE_COLOUR, strokeDash=[6, 3], strokeWidth=1.5)
        .encode(x=alt.X("bulk_edge:Q", scale=x_axis), tooltip=tooltip)
    )


def _step_label(run_ds: xr.Dataset, step: StepArg, kernels: list[Kernel]) -> alt.Chart:
    """Text in the top-left corner naming the step shown, its lr, loss and kernel width."""
    steps = runs.steps_of(run_ds)
    labels = [f"step {s}" for s in steps]
    for name, fmt in (("lr", "lr {:.3g}"), ("loss", "loss {:.4g}")):
        if name in run_ds:
            values = np.asarray(run_ds[name].values, dtype=np.float64)
            labels = [
                f"{lab} · {fmt.format(v)}" if np.isfinite(v) else lab
                for lab, v in zip(labels, values, strict=True)
            ]
    labels = [
        f"{lab} · σ {k.sigma:.3g}" + (f" (×{k.widening:.2g} widened)" if k.widened else "")
        for lab, k in zip(labels, kernels, strict=True)
    ]
    frame = _with_ends(pd.DataFrame({"step": steps, "label": labels}), run_ds)
    return (
        alt.Chart(_data(frame))
        .transform_filter(_current(step, run_ds))
        .mark_text(align="left", baseline="top", fontSize=12, color="black")
        .encode(x=alt.value(6), y=alt.value(6), text="label:N")
    )


def gradient_measure_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    block: runs.BlockArg = None,
    width: int = MEASURE_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """The gradient's cumulative spectral measure at one step: where ``||g||²`` lies in λ.

    A step curve ``G(λ) = Σ_{θ_j ≤ λ} w_j`` over the Ritz values ``θ_j`` (``grad_nodes``)
    of the Lanczos run started at the gradient, each jumping by its share ``w_j`` of
    ``||g||²`` (``grad_weights``; points mark the nodes); ``G`` rises from 0 to 1. A jump at
    the top eigenvalues means the gradient lies in the outlier eigenspace.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``grad_nodes``/``grad_weights`` (step, node), stored by
        ``hessnb.Tracker`` at full records.
    step : int, None or slider parameter
        Which step (see the module docstring); None: the last step holding the measure.
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).
    width, height : int
        Size of each run's panel in pixels.

    Returns
    -------
    altair chart
        Layers: ``G`` (step line), the nodes (points, ``w_j`` in the tooltip); the x axis spans
        every run's and step's nodes.

    Raises
    ------
    ValueError
        No gradient measure stored (``hessnb.spectrum`` output, run files written before
        hessnb stored it, runs of top-k records only), or none at ``step``.
    """
    ds = runs.pick_blocks(ds, block)
    stored = "grad_nodes" in ds and "grad_weights" in ds
    nodes = np.asarray(ds["grad_nodes"].values if stored else [], dtype=np.float64)
    finite = nodes[np.isfinite(nodes)]
    if finite.size == 0:
        raise ValueError(f"gradient_measure_chart: {frames.NO_GRADIENT_MEASURE}")
    lo, hi = float(finite.min()), float(finite.max())
    pad = MEASURE_PADDING * (hi - lo) if hi > lo else 1.0
    domain = (lo - pad, hi + pad)

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        measured = run_ds.sel(step=frames.gradient_measure_steps(run_ds))
        if measured.sizes["step"] == 0:
            raise ValueError(f"gradient_measure_chart: {_called(series)} holds no gradient measure")
        try:
            steps = None if _is_slider(step) else [runs.check_step(measured, step)]
        except ValueError as err:
            raise ValueError(
                f"gradient_measure_chart: only full records store the gradient measure; {err}"
            ) from err
        frame = _with_ends(frames.gradient_measure_frame(measured, steps, domain), measured)
        base = (
            alt.Chart(_data(frame))
            .transform_filter(_current(step, measured))
            .encode(
                x=alt.X(
                    "eigenvalue:Q",
                    title="eigenvalue λ",
                    scale=alt.Scale(domain=list(domain), nice=False),
                ),
                y=alt.Y(
                    "cumulative:Q",
                    title="share of ‖g‖² on eigenvalues ≤ λ",
                    scale=alt.Scale(domain=[0, 1]),
                ),
            )
        )
        curve = base.mark_line(interpolate="step-after", color=SHARPNESS_COLOUR)
        jumps = (
            base.transform_filter("isValid(datum.weight)")
            .mark_point(filled=True, size=30, color=SHARPNESS_COLOUR)
            .encode(
                tooltip=[
                    "step:Q",
                    alt.Tooltip("eigenvalue:Q", title="θ", format=".5g"),
                    alt.Tooltip("weight:Q", title="share of ‖g‖² at θ", format=".3g"),
                    alt.Tooltip("cumulative:Q", title="share at ≤ θ", format=".3f"),
                ],
            )
        )
        chart = _layer(curve, jumps).properties(
            width=width,
            height=height,
            title=_title("gradient's spectral measure", series, [MEASURE_NOTE]),
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


# ---------------------------------------------------------------------- over training
def _check_k(k: int, size: int) -> int:
    """``k`` if it is a rank ``1..size`` of ``top_eigenvalues``, else a clear error."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= size:
        raise ValueError(f"k must lie in 1..{size}, got {k!r}")
    return int(k)


def _step_rule(run_ds: xr.Dataset, step: StepArg) -> alt.Chart:
    """A white vertical rule at the current step (over a heat map)."""
    now = _with_ends(pd.DataFrame({"step": runs.steps_of(run_ds)}), run_ds)
    return (
        alt.Chart(_data(now))
        .transform_filter(_current(step, run_ds))
        .mark_rule(color="white", strokeWidth=2)
        .encode(x="step:Q")
    )


def _marker(frame: pd.DataFrame, run_ds: xr.Dataset, step: StepArg, y: str) -> alt.Chart:
    """A rule and a large point at the current step on a trajectory."""
    base = alt.Chart(_data(_with_ends(frame, run_ds))).transform_filter(_current(step, run_ds))
    return _layer(
        base.mark_rule(color="black", opacity=0.4).encode(x="step:Q"),
        base.mark_point(filled=True, size=90, color="black").encode(x="step:Q", y=y),
    )


def top_eigenvalues_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    k: int | None = None,
    log_y: bool = False,
    block: runs.BlockArg = None,
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Top Ritz values over training steps, one line per ``k``, lr drops dashed.

    Every recorded step is drawn, the top-k records of ``Tracker(top_every=...)`` included.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``top_eigenvalues`` (step, k).
    step : int, None or slider parameter
        Marked as the current step.
    k : int, optional
        Draw only the top ``k`` (default: all stored).
    log_y : bool
        Symmetric-log y axis (eigenvalues may be negative).
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).

    Returns
    -------
    altair chart
        Layers: lr drops (rules), trajectories (lines), current-step marker.
    """
    require(ds, ["top_eigenvalues"], "top_eigenvalues_chart")
    ds = runs.pick_blocks(ds, block)
    if k is not None:
        _check_k(k, ds.sizes["k"])

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        frame = frames.top_frame(run_ds)
        if k is not None:
            frame = frame[frame["k"] <= k]
        y = alt.Y(
            "eigenvalue:Q",
            title="top eigenvalue",
            scale=alt.Scale(type="symlog" if log_y else "linear"),
        )
        lines = (
            alt.Chart(_data(frame))
            .mark_line(point=True)
            .encode(
                x=alt.X("step:Q", title="training step"),
                y=y,
                color=alt.Color("k:O", title="k"),
                tooltip=["step:Q", "k:O", alt.Tooltip("eigenvalue:Q", format=".5g")],
            )
        )
        top1 = frame[frame["k"] == frame["k"].min()]
        chart = _layer(_lr_layer(run_ds), lines, _marker(top1, run_ds, step, "eigenvalue:Q"))
        chart = chart.properties(
            width=width, height=height, title=_title("top eigenvalues", series)
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one, densities_only=False)


def gradient_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    block: runs.BlockArg = None,
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Gradient concentration over training: ``grad_fraction`` and per-k overlaps.

    The stacked areas are ``grad_overlap`` (share of ``||g||^2`` along each top
    eigenvector, when stored); the line is ``grad_fraction`` (their sum, the share in
    the top-k eigenspace) with a marker at the current step. Every recorded step is
    drawn, the top-k records of ``Tracker(top_every=...)`` included.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``grad_fraction`` (step) and optionally ``grad_overlap`` (step, k).
    step : int, None or slider parameter
        Marked as the current step.
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).
    width, height : int
        Size of each series' panel in pixels.

    Returns
    -------
    altair chart
        Layers: lr drops (rules), overlaps (stacked areas), ``grad_fraction`` (line),
        current-step marker.
    """
    require(ds, ["grad_fraction"], "gradient_chart")
    ds = runs.pick_blocks(ds, block)

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        y_scale = alt.Scale(domain=[0, 1])
        areas = None
        if "grad_overlap" in run_ds:
            overlap = frames.top_frame(run_ds).dropna(subset=["overlap"])
            areas = (
                alt.Chart(_data(overlap))
                .mark_area(opacity=0.6)
                .encode(
                    x="step:Q",
                    y=alt.Y("overlap:Q", stack="zero", scale=y_scale),
                    color=alt.Color("k:O", title="k"),
                    tooltip=["step:Q", "k:O", alt.Tooltip("overlap:Q", format=".3f")],
                )
            )
        fraction = frames.scalar_frame(run_ds, ["grad_fraction"])
        line = (
            alt.Chart(_data(fraction))
            .mark_line(color="black")
            .encode(
                x=alt.X("step:Q", title="training step"),
                y=alt.Y("value:Q", title="share of ‖g‖² in top-k eigenspace", scale=y_scale),
                tooltip=["step:Q", alt.Tooltip("value:Q", title="grad_fraction", format=".3f")],
            )
        )
        chart = _layer(_lr_layer(run_ds), areas, line, _marker(fraction, run_ds, step, "value:Q"))
        chart = chart.properties(
            width=width, height=height, title=_title("gradient concentration", series)
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one, densities_only=False)


def _records(base: alt.Chart, y: alt.Y | str) -> alt.Chart:
    """Points at every record, filled at full records (densities), hollow at top-k ones.

    One colour for every chart: Vega-Lite merges the ``fill`` scales of composed charts.
    """
    return base.mark_point(filled=True, size=40, stroke=SHARPNESS_COLOUR, strokeWidth=1.5).encode(
        y=y,
        fill=alt.Fill(
            "record:N",
            scale=alt.Scale(
                domain=[frames.FULL_RECORD, frames.TOP_K_RECORD],
                range=[SHARPNESS_COLOUR, "white"],
            ),
            legend=alt.Legend(title="record", symbolStrokeColor=SHARPNESS_COLOUR),
        ),
    )


def _series(chart: alt.Chart, name: str, scale: alt.Scale) -> alt.Chart:
    """``chart`` dashed as the legend entry ``name`` of ``scale`` (a strokeDash scale).

    The legend is on ``strokeDash``, a channel no other chart uses, so that composing
    this chart with others (whose colour scales Vega-Lite merges) keeps its colours.
    """
    return chart.transform_calculate(series=json.dumps(name)).encode(
        strokeDash=alt.StrokeDash(
            "series:N",
            scale=scale,
            title=None,
            legend=alt.Legend(labelLimit=0, symbolStrokeColor=LEGEND_STROKE),
        )
    )


def sharpness_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    momentum: float | None = None,
    log_y: bool = False,
    block: runs.BlockArg = None,
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
    fraction_height: int = FRACTION_HEIGHT,
) -> alt.TopLevelMixin:
    """Sharpness λ₁ at every recorded step against the stability threshold 2/η.

    λ₁ is ``top_eigenvalues`` at k = 1 at every recorded step: full records (filled
    points) and the top-k records of ``Tracker(top_every=...)`` (hollow points). The
    dashed line is :func:`hessnb.viz.frames.stability_threshold` of the per-step ``lr``
    (recorded with ``tracker.record(step, lr=...)``): ``2/η``, or ``(2+2β)/η`` with
    heavy-ball ``momentum`` β; λ₁ reaching it is the edge of stability. Beneath, sharing
    the x axis, ``grad_fraction`` (share of ``||g||²`` in the top-k eigenspace), when
    stored.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``top_eigenvalues`` (step, k), optionally ``lr`` and ``grad_fraction``
        (step).
    step : int, None or slider parameter
        Marked as the current step.
    momentum : float, optional
        Heavy-ball β of the optimizer (``torch.optim.SGD(momentum=...)``), in ``[0, 1)``.
        Default: the run's recorded ``momentum`` (``hessnb.reference.train`` records it),
        else 0.
    log_y : bool
        Symmetric-log λ axis (a small λ₁ stays visible under a large 2/η).
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).
    width, height : int
        Size of each series' λ₁ panel in pixels.
    fraction_height : int
        Height of each series' ``grad_fraction`` panel.

    Returns
    -------
    altair chart
        Per run, layers: lr drops (rules), 2/η (dashed step line, when ``lr`` is stored),
        λ₁ (line and record points), current-step marker; runs side by side; the
        ``grad_fraction`` row below. The subtitle names the threshold drawn, or says how
        to record ``lr`` when the run has none.
    """
    require(ds, ["top_eigenvalues"], "sharpness_chart")
    ds = runs.pick_blocks(ds, block)
    if momentum is None:
        momentum = frames.recorded_momentum(ds)
    label = frames.threshold_label(momentum)
    with_lr = "lr" in ds and bool(np.isfinite(np.asarray(ds["lr"].values, np.float64)).any())
    dashes = (
        alt.Scale(domain=[SHARPNESS, label], range=[SOLID, DASHED])
        if with_lr
        else alt.Scale(domain=[SHARPNESS], range=[SOLID])
    )
    fraction = "grad_fraction" in ds
    x = alt.X("step:Q", title=None if fraction else "training step")

    def frame_of(run_ds: xr.Dataset) -> pd.DataFrame:
        return _with_ends(frames.sharpness_frame(run_ds, momentum), run_ds)

    def sharpness(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        frame = frame_of(run_ds)
        base = alt.Chart(_data(frame)).encode(
            x=x,
            tooltip=[
                "step:Q",
                alt.Tooltip("sharpness:Q", title="λ₁", format=".5g"),
                "record:N",
                *[
                    alt.Tooltip(f"{c}:Q", format=".4g")
                    for c in ("residual", "lr", "threshold")
                    if c in frame
                ],
            ],
        )
        y = alt.Y(
            "sharpness:Q",
            title="sharpness λ₁",
            scale=alt.Scale(type="symlog" if log_y else "linear"),
        )
        line = _series(base.mark_line(color=SHARPNESS_COLOUR), SHARPNESS, dashes).encode(y=y)
        threshold, note = None, NO_LR_NOTE
        if "threshold" in frame and frame["threshold"].notna().any():
            threshold = _series(
                base.mark_line(color=THRESHOLD_COLOUR, interpolate="step-after"), label, dashes
            ).encode(y=alt.Y("threshold:Q", title="sharpness λ₁"))
            note = f"dashed: the stability threshold {label}"
        chart = _layer(
            _lr_layer(run_ds),
            threshold,
            line,
            _records(base, y),
            _marker(frame, run_ds, step, "sharpness:Q"),
        )
        return chart.properties(
            width=width, height=height, title=_title("sharpness over training", series, [note])
        )

    def gradient_share(run_ds: xr.Dataset, _series: str | None) -> alt.TopLevelMixin:
        frame = frame_of(run_ds)
        y = alt.Y("grad_fraction:Q", title="share of ‖g‖² in top-k", scale=alt.Scale(domain=[0, 1]))
        base = alt.Chart(_data(frame)).encode(
            x=alt.X("step:Q", title="training step"),
            tooltip=["step:Q", "record:N", alt.Tooltip("grad_fraction:Q", format=".3f")],
        )
        return _layer(
            _lr_layer(run_ds),
            base.mark_line(color="black").encode(y=y),
            _records(base, y),
            _marker(frame, run_ds, step, "grad_fraction:Q"),
        ).properties(width=width, height=fraction_height)

    chart = _side_by_side(ds, sharpness, densities_only=False)
    if fraction:
        below = _side_by_side(ds, gradient_share, densities_only=False)
        chart = alt.vconcat(chart, below).resolve_scale(x="shared")
    return _with_slider(chart, step)


def movement_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    block: runs.BlockArg = None,
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """How far the spectrum moved between consecutive densities, over training.

    At each density after a run's first, ``ds.hess.movement()``: the Wasserstein-1
    distance (in eigenvalue units) between that step's spectrum and the previous
    density's. The tooltip adds the previous step and the rate per training step
    (``per_step``), which compares records spaced unevenly.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s), each series with at least two densities.
    step : int, None or slider parameter
        Marked as the current step (no marker at a run's first density).
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).
    width, height : int
        Size of each series' panel in pixels.

    Returns
    -------
    altair chart
        Layers: lr drops (rules), ``W1`` (line with points), current-step marker.

    Raises
    ------
    ValueError
        A series with fewer than two densities.
    """
    ds = runs.pick_blocks(ds, block)

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        steps = runs.steps_of(run_ds)
        if steps.size < 2:
            raise ValueError(
                "movement_chart needs at least two recorded densities per run; "
                f"{_called(series)} has one (step {steps[0]}): track more full records "
                "(Tracker's every=)"
            )
        frame = _with_ends(frames.movement_frame(run_ds), run_ds)
        line = (
            alt.Chart(_data(frame))
            .mark_line(point=True, color=SHARPNESS_COLOUR)
            .encode(
                x=alt.X("step:Q", title="training step"),
                y=alt.Y("w1:Q", title="W1 to the previous density"),
                tooltip=[
                    "step:Q",
                    alt.Tooltip("previous:Q", title="previous density"),
                    alt.Tooltip("w1:Q", title="W1", format=".4g"),
                    alt.Tooltip("per_step:Q", title="W1 per training step", format=".3g"),
                ],
            )
        )
        chart = _layer(_lr_layer(run_ds), line, _marker(frame, run_ds, step, "w1:Q"))
        chart = chart.properties(
            width=width,
            height=height,
            title=_title("spectrum movement", series, [MOVEMENT_NOTE]),
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


def density_heatmap(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    sigma: float | None = None,
    scale: float = 1.0,
    points: int = MAX_POINTS,
    cells: int = HEAT_CELLS,
    x_scale: XScale = "linear",
    decades: float = 10.0,
    smoothing: Smoothing | None = None,
    block: runs.BlockArg = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Heat map of ``log10`` density over training (step x eigenvalue), lr drops dashed.

    Each step is smoothed with its own kernel (as in :func:`density_chart`) and each cell
    shows the mean density over its height, so peaks narrower than a cell keep their mass.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``nodes``/``weights`` over step.
    step : int, None or slider parameter
        Marked by a vertical rule.
    sigma, scale, points, x_scale, smoothing
        As in :func:`density_chart` (``x_scale`` applies to the eigenvalue axis, here y).
    cells : int
        Cells along the eigenvalue axis.
    decades : float
        Colour range below the maximum, in powers of ten.
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).

    Returns
    -------
    altair chart
        Layers: cells (rects), lr drops (rules), current-step rule. The subtitle states
        the kernel and the cell height.
    """
    ds = runs.pick_blocks(ds, block)
    sm = smoothing or Smoothing.of(ds, sigma, points, x_scale, scale=scale)
    height_of_cell = (sm.domain[1] - sm.domain[0]) / cells
    subtitle = [f"kernel: {sm.describe()}", f"mean over cells {height_of_cell:.3g} high"]

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        frame = frames.heat_frame(run_ds, sm, cells, decades)
        rects = (
            alt.Chart(_data(frame))
            .mark_rect(clip=True)
            .encode(
                x=alt.X("step:Q", title="training step"),
                x2="step_end:Q",
                y=alt.Y(
                    "eigenvalue:Q",
                    title="eigenvalue λ",
                    scale=alt.Scale(type=sm.x_scale, domain=list(sm.domain), nice=False),
                ),
                y2="eigenvalue_end:Q",
                color=alt.Color(
                    "log10_density:Q", title="log10 φσ", scale=alt.Scale(scheme="viridis")
                ),
                tooltip=[
                    "step:Q",
                    alt.Tooltip("eigenvalue:Q", format=".4g"),
                    alt.Tooltip("log10_density:Q", format=".2f"),
                ],
            )
        )
        chart = _layer(rects, _lr_layer(run_ds), _step_rule(run_ds, step)).properties(
            width=width, height=height, title=_title("log-density over training", series, subtitle)
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


def _lambda(k: int) -> str:
    """``"λ₁"`` for rank 1, ``"λ₁₂"`` for rank 12."""
    return "λ" + str(k).translate(SUBSCRIPTS)


def layer_sharpness_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    k: int = 1,
    log: bool = True,
    width: int = WIDTH,
    row_height: int = LAYER_ROW_HEIGHT,
) -> alt.TopLevelMixin:
    """Each block's (layer's) top eigenvalue λ_k over training, as a heat map.

    One row per block of the Hessian's diagonal blocks (``hessnb.spectrum(op,
    blocks="layers")``), in the stored order; one column per recorded step, the top-k
    records of ``Tracker(top_every=...)`` included, each reaching to the next recorded
    step; colour: ``top_eigenvalues`` at rank ``k``. Which layer is sharpest, and when it
    became so, reads off at a glance. One panel per curvature and run (a row per run when
    runs hold several curvatures), with one colour scale.

    Parameters
    ----------
    ds : xarray.Dataset
        Per-block spectra: ``top_eigenvalues`` over (run?, step?, curvature?, block, k).
    step : int, None or slider parameter
        Marked by a vertical rule.
    k : int
        Rank of the eigenvalue drawn (1 = the largest).
    log : bool
        Logarithmic colour scale when every value drawn is positive; a symmetric-log
        scale otherwise (the subtitle says so). False: linear.
    width : int
        Width of each panel in pixels.
    row_height : int
        Height of each block's row in pixels.

    Returns
    -------
    altair chart
        Layers: cells (rects, the block, step, λ_k and the block's ``n_params`` in the
        tooltip), current-step rule. Its data holds ``top_eigenvalues.isel(k=k - 1)`` of
        every block and step.

    Raises
    ------
    ValueError
        ``ds`` has no ``block`` dimension (spectra of the whole operator) or no
        ``top_eigenvalues``, or ``k`` is not a stored rank.
    """
    if "block" not in ds.dims:
        raise ValueError(f"layer_sharpness_chart: {NO_BLOCKS}")
    require(ds, ["top_eigenvalues"], "layer_sharpness_chart")
    rank = _check_k(k, ds.sizes["k"])
    blocks = runs.labels(ds, "block")
    values = np.asarray(ds["top_eigenvalues"].isel(k=rank - 1).values, dtype=np.float64)
    values = values[np.isfinite(values)]
    kind, note = "linear", ""
    if log:
        positive = bool(values.size) and bool((values > 0).all())
        kind = "log" if positive else "symlog"
        note = "" if positive else f"symmetric-log colours: some {_lambda(rank)} ≤ 0"
    name = _lambda(rank)

    def one(run_ds: xr.Dataset, series: str | None) -> alt.TopLevelMixin:
        frame = _with_ends(frames.layer_frame(run_ds, rank), run_ds)
        tooltip = [
            "block:N",
            "step:Q",
            alt.Tooltip("eigenvalue:Q", title=name, format=".5g"),
            *(["n_params:Q"] if "n_params" in frame else []),
        ]
        rects = (
            alt.Chart(_data(frame))
            .mark_rect()
            .encode(
                x=alt.X("step:Q", title="training step"),
                x2="step_end:Q",
                y=alt.Y("block:N", title="block", sort=blocks),
                color=alt.Color(
                    "eigenvalue:Q", title=name, scale=alt.Scale(type=kind, scheme="viridis")
                ),
                tooltip=tooltip,
            )
        )
        chart = _layer(rects, _step_rule(run_ds, step)).properties(
            width=width,
            height=row_height * len(blocks),
            title=_title(f"{name} of each block over training", series, [note]),
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one, densities_only=False, keep=("block",))


def _statistics_frame(ds: xr.Dataset, names: list[str], step: StepArg) -> pd.DataFrame:
    """Statistics of every series in long form.

    Returns
    -------
    pandas.DataFrame
        ``step``, ``variable``, ``value``, ``step_end``, ``series`` (its label, ``""`` for
        a single run) and, unless ``step`` is a slider, ``shown``: whether the row is at
        that series' current step.
    """
    parts = []
    series = runs.each_series(ds)
    for label, run_ds in series:
        frame = _with_ends(frames.scalar_frame(run_ds, names), run_ds).assign(series=label or "")
        if not _is_slider(step):
            steps = runs.steps_of(run_ds)
            current = steps[-1] if step is None else step
            frame = frame.assign(shown=frame["step"] == current)
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    if not _is_slider(step) and not frame["shown"].any():
        runs.check_step(series[0][1], step)  # raises, naming the recorded steps
    return frame


def statistics_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    block: runs.BlockArg = None,
    width: int = STATISTIC_WIDTH,
    height: int = STATISTIC_HEIGHT,
) -> alt.TopLevelMixin:
    """The spectrum statistics over training: one panel each, one line per series.

    Panels (those stored): ``outlier_gap`` (λ₁ / bulk edge, log axis), ``n_outliers``
    (top Ritz values isolated above the bulk), ``lambda_min`` and ``negative_mass``
    (quadrature weight on negative eigenvalues); see :mod:`hessnb.linalg.statistics`.
    Series (runs, curvatures, blocks; :func:`hessnb.viz.runs.each_series`) are overlaid,
    coloured by their label, so their statistics compare at a glance.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) holding at least one of the statistics over ``step``.
    step : int, None or slider parameter
        Marked on every line (a series that did not record an int ``step`` has no marker).
    block : str, sequence of str or None
        Block(s) drawn from per-block spectra (default: the first; see the module docstring).
    width, height : int
        Size of each panel in pixels.

    Returns
    -------
    altair chart
        One base chart of all statistics; each panel layers its line and the
        current-step marker on it; panels side by side.

    Raises
    ------
    ValueError
        ``ds`` holds none of the statistics (a run file written before they existed).
    """
    ds = runs.pick_blocks(ds, block)
    names = [n for n in STATISTIC_PANELS if n in frames.statistics_in(ds)]
    if not names:
        raise ValueError(
            f"statistics_chart needs one of {', '.join(STATISTIC_PANELS)}, which this "
            "dataset lacks (a run file written before hessnb stored them)"
        )
    frame = _statistics_frame(ds, names, step)
    several = frame["series"].nunique() > 1
    title = runs.series_title(ds)
    base = alt.Chart(_data(frame)).encode(
        x=alt.X("step:Q", title="training step"),
        color=alt.Color("series:N", title=title) if several else alt.value("#1f4e79"),
        tooltip=[
            alt.Tooltip("series:N", title=title),
            "step:Q",
            alt.Tooltip("value:Q", format=".4g"),
        ]
        if several
        else ["step:Q", alt.Tooltip("value:Q", format=".4g")],
    )
    current = _current(step, ds) if _is_slider(step) else "datum.shown"
    panels = []
    for name in names:
        title, log = STATISTIC_PANELS[name]
        y = alt.Y(
            "value:Q",
            title=title,
            scale=alt.Scale(type="log") if log else alt.Scale(zero=name == "n_outliers"),
            axis=alt.Axis(tickMinStep=1, format="d") if name == "n_outliers" else alt.Axis(),
        )
        panel = base.transform_filter(alt.datum.variable == name).encode(y=y)
        line = panel.mark_line(point=True)
        marker = panel.transform_filter(current).mark_point(filled=True, size=90, opacity=1)
        panels.append(alt.layer(line, marker).properties(width=width, height=height, title=name))
    chart = alt.hconcat(*panels).properties(title="spectrum statistics over training")
    return _with_slider(chart, step)
