"""Altair chart builders for Hessian spectra and their evolution over training.

Every builder takes a dataset (a single spectrum, a tracked run, or several runs along a
``run`` dimension), returns an altair chart and never displays it. Datasets with several
runs are drawn side by side with shared scales. ``step`` selects what is "current":

- an ``int``: that recorded step (the chart carries only its density);
- ``None``: the last recorded step;
- a parameter from :func:`step_slider`: every step is embedded and a Vega-Lite slider
  picks one in the browser, so exported HTML stays interactive without a kernel.

Densities are ``ds.hess.density`` on one grid shared by every step and run of a chart;
the y axis is logarithmic by default (the paper's view: outliers carry weight ~1/n).
"""

from __future__ import annotations

from collections.abc import Callable

import altair as alt
import numpy as np
import pandas as pd
import xarray as xr

from hessnb.schema import require
from hessnb.viz import frames
from hessnb.viz.frames import DEFAULT_POINTS, Smoothing, XScale

__all__ = [
    "StepArg",
    "density_chart",
    "density_heatmap",
    "gradient_chart",
    "step_slider",
    "top_eigenvalues_chart",
]

StepArg = int | alt.Parameter | None
SLIDER_NAME = "at_step"
#: Lowest density drawn on a log axis (the paper plots about 1e-10 ... 1e2).
Y_FLOOR = 1e-10
WIDTH, HEIGHT = 420, 240
TRAJECTORY_WIDTH = 300


# ---------------------------------------------------------------------- plumbing
def _data(frame: pd.DataFrame) -> alt.InlineData:
    """Rows inlined as one JSON string (altair moves identical tables to one dataset).

    A string is neither copied nor validated record by record when charts are composed,
    and is exempt from altair's 5000-row limit; Vega parses it with the ``json`` format.
    """
    return alt.InlineData(values=frames.to_json(frame), format=alt.DataFormat(type="json"))


def _is_slider(step: StepArg) -> bool:
    return isinstance(step, alt.Parameter)


def _current(step: StepArg, run_ds: xr.Dataset) -> str:
    """Vega expression true for the rows of the current step (rows need ``step_end``)."""
    if _is_slider(step):
        name = step.name
        return f"datum.step <= {name} && {name} < datum.step_end"
    return f"datum.step == {frames.check_step(run_ds, step)}"


def _with_ends(frame: pd.DataFrame, run_ds: xr.Dataset) -> pd.DataFrame:
    steps = frames.steps_of(run_ds)
    ends = dict(zip(steps.tolist(), frames.step_ends(steps).tolist(), strict=True))
    return frame.assign(step_end=frame["step"].map(ends))


def _side_by_side(
    ds: xr.Dataset, build: Callable[[xr.Dataset, str | None], alt.TopLevelMixin]
) -> alt.TopLevelMixin:
    """``build(run_ds, run_name)`` for each run, concatenated with shared scales."""
    names = frames.run_names(ds)
    if len(names) <= 1:
        return build(frames.select_run(ds), names[0] if names else None)
    charts = [build(frames.select_run(ds, name), name) for name in names]
    return alt.hconcat(*charts).resolve_scale(x="shared", y="shared", color="shared")


def _title(what: str, run: str | None) -> str:
    return f"{what} · {run}" if run else what


def step_slider(ds: xr.Dataset, name: str = SLIDER_NAME) -> alt.Parameter:
    """A Vega-Lite parameter bound to a range slider over the recorded steps.

    The slider moves in steps of the greatest common divisor of the gaps between
    recorded steps; a value between two recorded steps shows the earlier one.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s); the slider spans the steps recorded by any run.
    name : str
        Parameter name, used in the charts' filter expressions.

    Returns
    -------
    altair.Parameter
        Pass it as ``step`` to the chart builders; it starts at the last step.
    """
    names = frames.run_names(ds) or [None]
    steps = np.unique(
        np.concatenate([frames.steps_of(frames.select_run(ds, run)) for run in names])
    )
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
    points: int = DEFAULT_POINTS,
    x_scale: XScale = "linear",
    log_y: bool = True,
    band: bool = True,
    top: bool = True,
    y_floor: float = Y_FLOOR,
    y_max: float | None = None,
    smoothing: Smoothing | None = None,
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
    sigma, points, x_scale
        Kernel width (default: the paper's, at least one grid spacing), grid size ``g``
        and x scale (``"symlog"`` spreads the bulk near zero); ignored when
        ``smoothing`` is given.
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
        Kernel and grid to use (e.g. one shared by several charts).

    Returns
    -------
    altair chart
        Layers: band (area), density (line), top eigenvalues (rules), step label (text).
        Its data holds ``ds.hess.density(sigma, grid)`` at the step(s) shown.
    """
    sm = smoothing or frames.smoothing(ds, sigma, points, x_scale)
    if log_y and not y_floor > 0:
        raise ValueError(f"y_floor must be positive on a log axis, got {y_floor}")

    def one(run_ds: xr.Dataset, run: str | None) -> alt.TopLevelMixin:
        steps = None if _is_slider(step) else [frames.check_step(run_ds, step)]
        frame = _with_ends(frames.density_frame(run_ds, sm, steps, band=band), run_ds)
        upper = frame["upper"].max() if "upper" in frame else 0.0
        top_value = y_max or max(float(frame["density"].max()), float(upper)) * (
            3.0 if log_y else 1.05
        )
        x = alt.X(
            "eigenvalue:Q",
            title="eigenvalue λ",
            scale=alt.Scale(
                type=sm.x_scale, domain=[float(sm.grid[0]), float(sm.grid[-1])], nice=False
            ),
        )
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
        label = _step_label(run_ds, step, sm)
        chart = _layer(area, line, rules, label).properties(
            width=width, height=height, title=_title("Hessian eigenvalue density", run)
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


def _step_label(run_ds: xr.Dataset, step: StepArg, sm: Smoothing) -> alt.Chart:
    """Text in the top-left corner naming the step shown (and lr, loss when stored)."""
    steps = frames.steps_of(run_ds)
    labels = [f"step {s}" for s in steps]
    for name, fmt in (("lr", "lr {:.3g}"), ("loss", "loss {:.4g}")):
        if name in run_ds:
            values = np.asarray(run_ds[name].values, dtype=np.float64)
            labels = [
                f"{lab} · {fmt.format(v)}" if np.isfinite(v) else lab
                for lab, v in zip(labels, values, strict=True)
            ]
    labels = [f"{lab} · σ {sm.sigma:.3g}" for lab in labels]
    frame = _with_ends(pd.DataFrame({"step": steps, "label": labels}), run_ds)
    return (
        alt.Chart(_data(frame))
        .transform_filter(_current(step, run_ds))
        .mark_text(align="left", baseline="top", fontSize=12, color="black")
        .encode(x=alt.value(6), y=alt.value(6), text="label:N")
    )


# ---------------------------------------------------------------------- over training
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
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Top Ritz values over training steps, one line per ``k``, lr drops dashed.

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

    Returns
    -------
    altair chart
        Layers: lr drops (rules), trajectories (lines), current-step marker.
    """
    require(ds, ["top_eigenvalues"], "top_eigenvalues_chart")

    def one(run_ds: xr.Dataset, run: str | None) -> alt.TopLevelMixin:
        frame = frames.top_frame(run_ds)
        if k is not None:
            if not 1 <= k <= run_ds.sizes["k"]:
                raise ValueError(f"k must lie in 1..{run_ds.sizes['k']}, got {k}")
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
        chart = chart.properties(width=width, height=height, title=_title("top eigenvalues", run))
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


def gradient_chart(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    width: int = TRAJECTORY_WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Gradient concentration over training: ``grad_fraction`` and per-k overlaps.

    The stacked areas are ``grad_overlap`` (share of ``||g||^2`` along each top
    eigenvector, when stored); the line is ``grad_fraction`` (their sum, the share in
    the top-k eigenspace) with a marker at the current step.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``grad_fraction`` (step) and optionally ``grad_overlap`` (step, k).
    step : int, None or slider parameter
        Marked as the current step.
    width, height : int
        Size of each run's panel in pixels.

    Returns
    -------
    altair chart
        Layers: lr drops (rules), overlaps (stacked areas), ``grad_fraction`` (line),
        current-step marker.
    """
    require(ds, ["grad_fraction"], "gradient_chart")

    def one(run_ds: xr.Dataset, run: str | None) -> alt.TopLevelMixin:
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
            width=width, height=height, title=_title("gradient concentration", run)
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)


def density_heatmap(
    ds: xr.Dataset,
    step: StepArg = None,
    *,
    sigma: float | None = None,
    points: int = 150,
    x_scale: XScale = "linear",
    decades: float = 10.0,
    smoothing: Smoothing | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin:
    """Heat map of ``log10`` density over training (step x eigenvalue), lr drops dashed.

    Parameters
    ----------
    ds : xarray.Dataset
        Run(s) with ``nodes``/``weights`` over step.
    step : int, None or slider parameter
        Marked by a vertical rule.
    sigma, points, x_scale, smoothing
        As in :func:`density_chart` (``x_scale`` applies to the eigenvalue axis, here y).
    decades : float
        Colour range below the maximum, in powers of ten.

    Returns
    -------
    altair chart
        Layers: cells (rects), lr drops (rules), current-step rule.
    """
    sm = smoothing or frames.smoothing(ds, sigma, points, x_scale)

    def one(run_ds: xr.Dataset, run: str | None) -> alt.TopLevelMixin:
        frame = frames.heat_frame(run_ds, sm, decades)
        cells = (
            alt.Chart(_data(frame))
            .mark_rect()
            .encode(
                x=alt.X("step:Q", title="training step"),
                x2="step_end:Q",
                y=alt.Y(
                    "eigenvalue:Q",
                    title="eigenvalue λ",
                    scale=alt.Scale(type=sm.x_scale, nice=False),
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
        now = _with_ends(pd.DataFrame({"step": frames.steps_of(run_ds)}), run_ds)
        marker = (
            alt.Chart(_data(now))
            .transform_filter(_current(step, run_ds))
            .mark_rule(color="white", strokeWidth=2)
            .encode(x="step:Q")
        )
        chart = _layer(cells, _lr_layer(run_ds), marker).properties(
            width=width, height=height, title=_title("log-density over training", run)
        )
        return _with_slider(chart, step)

    return _side_by_side(ds, one)
