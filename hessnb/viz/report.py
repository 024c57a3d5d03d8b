"""A self-contained interactive HTML report of one or several runs.

The page holds the density at every recorded step (each smoothed with its own paper
kernel), the top-eigenvalue trajectories, the gradient concentration, the spectrum
statistics (when stored) and a log-density heat map, all driven by one Vega-Lite
"training step" slider. Vega's JavaScript is inlined, so the file opens in any
browser with no kernel and no network. ``hessnb report RUN... --html out.html``
(:mod:`hessnb.cli.report`) writes it with :func:`write_report`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import altair as alt
import numpy as np
import xarray as xr

from hessnb.schema import PROVENANCE, QUADRATURE, require
from hessnb.viz import charts, frames, runs
from hessnb.viz.export import to_html
from hessnb.viz.smoothing import Smoothing

__all__ = ["MAX_STEPS", "REPORT_POINTS", "load_runs", "report_chart", "write_report"]

Source = xr.Dataset | str | Path
#: Most grid points per step's density in a report (every step's density is embedded).
REPORT_POINTS = 2000
#: Steps embedded at most (evenly spread), bounding the file size.
MAX_STEPS = 60


def load_runs(sources: Source | Sequence[Source]) -> xr.Dataset:
    """One dataset from run datasets or run files, several runs along ``run``.

    Runs are named by their ``run`` attribute, else the file name (made unique); steps
    missing from a run are NaN-padded (``hessnb.runfile.combine_runs``). A single
    dataset that already has a ``run`` dimension is kept as it is.

    Parameters
    ----------
    sources : dataset, path, or a sequence of them
        Runs (from ``hessnb.Tracker`` / ``hessnb.open_run``) or their netCDF files.

    Returns
    -------
    xarray.Dataset
        The single run, or all runs combined along a ``run`` dimension.

    Raises
    ------
    ValueError
        No source, a source without ``nodes``/``weights``, or a combined dataset given
        together with other runs.
    """
    from hessnb.runfile import combine_runs

    if isinstance(sources, (xr.Dataset, str, Path)):
        sources = [sources]
    named: dict[str, xr.Dataset] = {}
    for i, source in enumerate(sources):
        ds = source if isinstance(source, xr.Dataset) else runs.open_path(source)
        require(ds, QUADRATURE, "a report")
        if "run" in ds.dims and len(sources) > 1:
            raise ValueError(
                "combine runs either in one dataset (dim 'run') or as separate files, not both"
            )
        fallback = f"run{i}" if isinstance(source, xr.Dataset) else Path(source).stem
        name = str(ds.attrs.get("run") or fallback)
        named[name if name not in named else f"{name}-{i}"] = ds
    if not named:
        raise ValueError("a report needs at least one run (a dataset or a run file)")
    if len(named) == 1:
        return next(iter(named.values()))
    return combine_runs(named)


def _thin(ds: xr.Dataset, max_steps: int) -> xr.Dataset:
    """At most ``max_steps`` steps, evenly spread, first and last kept."""
    if max_steps < 2:
        raise ValueError(f"max_steps must be at least 2, got {max_steps}")
    if "step" not in ds.dims or ds.sizes["step"] <= max_steps:
        return ds
    keep = np.unique(np.round(np.linspace(0, ds.sizes["step"] - 1, max_steps)).astype(int))
    return ds.isel(step=keep)


def report_chart(
    ds: xr.Dataset,
    *,
    sigma: float | None = None,
    scale: float = 1.0,
    points: int = REPORT_POINTS,
) -> alt.VConcatChart:
    """All report charts stacked, linked by one step slider (every step embedded).

    Parameters
    ----------
    ds : xarray.Dataset
        A run, or several along ``run`` (e.g. from :func:`load_runs`).
    sigma : float, optional
        One kernel width for every step (default: each step's own paper width).
    scale : float
        Multiplier of every step's paper width (ignored when ``sigma`` is given).
    points : int
        Most grid points per step's density.

    Returns
    -------
    altair.VConcatChart
        Density, trajectories (top eigenvalues, gradient share, when stored), spectrum
        statistics (when stored) and, for more than one step, the log-density heat map.
    """
    slider = charts.step_slider(ds)
    sm = Smoothing.of(ds, sigma, points, scale=scale)
    rows = [charts.density_chart(ds, slider, smoothing=sm)]
    trajectories = []
    if "top_eigenvalues" in ds:
        trajectories.append(charts.top_eigenvalues_chart(ds, slider))
    if "grad_fraction" in ds:
        trajectories.append(charts.gradient_chart(ds, slider))
    if runs.run_names(ds)[1:]:
        rows += trajectories  # each is already runs side by side
    elif trajectories:
        rows.append(alt.hconcat(*trajectories))
    if frames.statistics_in(ds):
        rows.append(charts.statistics_chart(ds, slider))
    if ds.sizes.get("step", 1) > 1:
        rows.append(charts.density_heatmap(ds, slider, smoothing=sm))
    return alt.vconcat(*rows).add_params(slider)


def _header(ds: xr.Dataset, title: str, thinned_from: int | None) -> str:
    attrs = {k: ds.attrs[k] for k in PROVENANCE if k in ds.attrs}
    names = runs.run_names(ds)
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in attrs.items()
    )
    note = (
        f"<p>Showing {ds.sizes['step']} of {thinned_from} recorded steps (evenly spread).</p>"
        if thinned_from
        else ""
    )
    run_line = f"<p>Runs: {html.escape(', '.join(names))}</p>" if names else ""
    return (
        f"<h1 style='font-family:sans-serif'>{html.escape(title)}</h1>"
        "<p style='font-family:sans-serif'>Hessian eigenvalue density by stochastic Lanczos "
        "quadrature. Move the <b>training step</b> slider below the charts; hover for "
        f"values.</p>{run_line}{note}"
        f"<table style='font-family:sans-serif;font-size:13px'>{rows}</table>"
    )


def write_report(
    sources: Source | Sequence[Source],
    html_path: str | Path,
    *,
    sigma: float | None = None,
    points: int = REPORT_POINTS,
    max_steps: int = MAX_STEPS,
    title: str = "hessnb report",
) -> Path:
    """Write the self-contained interactive HTML report of one or several runs.

    Parameters
    ----------
    sources : dataset, path, or a sequence of them
        Runs (from ``hessnb.Tracker`` / ``hessnb.open_run``) or their netCDF files.
    html_path : str or Path
        Output file (``.html``).
    sigma : float, optional
        One kernel width for every step (default: each step's own paper width).
    points : int
        Most grid points per step's density.
    max_steps : int
        Embed at most this many steps (evenly spread) to bound the file size.
    title : str
        Page heading.

    Returns
    -------
    Path
        The file written.
    """
    html_path = Path(html_path)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is HTML: give a path ending in .html, got {html_path}")
    ds = load_runs(sources)
    before = ds.sizes.get("step", 1)
    ds = _thin(ds, max_steps)
    chart = report_chart(ds, sigma=sigma, points=points)
    header = _header(ds, title, before if ds.sizes.get("step", 1) < before else None)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(to_html(chart, header=header), encoding="utf-8")
    return html_path
