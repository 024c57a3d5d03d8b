"""A self-contained interactive HTML report of one or several runs.

The page holds the density at every recorded step (each smoothed with its own paper
kernel) and the gradient's spectral measure (when stored), the top-eigenvalue
trajectories, the gradient concentration, the sharpness against 2/η, the spectrum's
movement between densities, the spectrum statistics (when stored) and a log-density heat
map, all driven by one Vega-Lite "training step" slider over the densities. Trajectories
draw every record, the top-k records of ``Tracker(top_every=...)`` included; at most
``max_steps`` densities are embedded. Runs holding several curvature matrices show a
panel for each; runs holding the Hessian's diagonal blocks show one block in these views
(``block=``, default the first) and every block's λ₁ in :func:`hessnb.viz.charts.
layer_sharpness_chart`. Vega's JavaScript is inlined, so the file opens in
any browser with no kernel and no network. ``hessnb report RUN... --html out.html``
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


def _densities(ds: xr.Dataset) -> np.ndarray:
    """Positions along ``step`` of the steps holding a density in any run."""
    if "step" not in ds.dims:
        return np.zeros(1, dtype=np.int64)
    return np.flatnonzero(runs.density_mask(ds))


def _thin(ds: xr.Dataset, max_steps: int) -> xr.Dataset:
    """``ds`` at its densities: at most ``max_steps``, evenly spread, first and last kept.

    Top-k records are dropped: only the density views, the statistics and the slider
    read the result.
    """
    if max_steps < 2:
        raise ValueError(f"max_steps must be at least 2, got {max_steps}")
    if "step" not in ds.dims:
        return ds
    densities = _densities(ds)
    keep = np.unique(np.round(np.linspace(0, densities.size - 1, max_steps)).astype(int))
    return ds.isel(step=densities[keep] if densities.size > max_steps else densities)


def _rows(views: list[alt.TopLevelMixin], several: bool) -> list[alt.TopLevelMixin]:
    """Views side by side in one row, or (each already several panels) one per row."""
    if several or len(views) < 2:
        return views
    return [alt.hconcat(*views)]


def report_chart(
    ds: xr.Dataset,
    *,
    sigma: float | None = None,
    scale: float = 1.0,
    points: int = REPORT_POINTS,
    max_steps: int | None = None,
    momentum: float | None = None,
    block: str | None = None,
) -> alt.VConcatChart:
    """All report charts stacked, linked by one step slider over the densities.

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
    max_steps : int, optional
        Embed at most this many densities (evenly spread) in the density views, the
        statistics and the slider; trajectories and the movement still use every record.
        Default: every density.
    momentum : float, optional
        Heavy-ball β of the optimizer, for the sharpness chart's threshold (2+2β)/η
        (default: the run's recorded ``momentum``, else 0).
    block : str, optional
        For per-block spectra, the block the views show (default: the first).

    Returns
    -------
    altair.VConcatChart
        Density beside the gradient's spectral measure (when every run stores it);
        trajectories (top eigenvalues, gradient share, when stored); sharpness against
        2/η (more than one record) beside the movement (at least two densities in every
        run); spectrum statistics (when stored); for more than one density, the
        log-density heat map; for per-block spectra, every block's λ₁ over training.
    """
    shown = runs.pick_blocks(ds, block)
    dense = shown if max_steps is None else _thin(shown, max_steps)
    series = runs.each_series(dense)
    slider = charts.step_slider(dense)
    sm = Smoothing.of(dense, sigma, points, scale=scale)
    at_step = [charts.density_chart(dense, slider, smoothing=sm)]
    if all(frames.gradient_measure_steps(one).size for _, one in series):
        at_step.append(charts.gradient_measure_chart(dense, slider))
    trajectories = []
    if "top_eigenvalues" in ds:
        trajectories.append(charts.top_eigenvalues_chart(shown, slider))
    if "grad_fraction" in ds:
        trajectories.append(charts.gradient_chart(shown, slider))
    evolution = []
    if "top_eigenvalues" in ds and ds.sizes.get("step", 1) > 1:
        evolution.append(charts.sharpness_chart(shown, slider, momentum=momentum))
    if all(one.sizes["step"] > 1 for _, one in runs.each_series(shown)):
        evolution.append(charts.movement_chart(shown, slider))
    several = len(series) > 1
    rows = [
        *_rows(at_step, several),
        *_rows(trajectories, several),
        *_rows(evolution, several),
    ]
    if frames.statistics_in(dense):
        rows.append(charts.statistics_chart(dense, slider))
    if _densities(dense).size > 1:
        rows.append(charts.density_heatmap(dense, slider, smoothing=sm))
    if "block" in ds.dims and "top_eigenvalues" in ds:
        rows.append(charts.layer_sharpness_chart(ds, slider))
    return alt.vconcat(*rows).add_params(slider)


def _series_lines(ds: xr.Dataset, block: str | None) -> str:
    """A paragraph per series dimension: ``Runs: bn, no-bn``, ``Curvatures: ...``, ..."""
    lines = []
    for dim in runs.series_dims(ds):
        names = ", ".join(runs.labels(ds, dim))
        lines.append(f"<p>{dim.capitalize()}s: {html.escape(names)}</p>")
    if "block" in ds.dims:
        (shown,) = runs.labels(runs.pick_blocks(ds, block), "block")
        lines.append(
            f"<p>The views show block <b>{html.escape(shown)}</b>; the last chart shows "
            "every block.</p>"
        )
    return "".join(lines)


def _header(
    ds: xr.Dataset, title: str, shown: int, thinned_from: int | None, block: str | None
) -> str:
    attrs = {k: ds.attrs[k] for k in PROVENANCE if k in ds.attrs}
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in attrs.items()
    )
    note = (
        f"<p>Showing {shown} of {thinned_from} recorded densities (evenly spread); the "
        "trajectories show every record.</p>"
        if thinned_from
        else ""
    )
    return (
        f"<h1 style='font-family:sans-serif'>{html.escape(title)}</h1>"
        "<p style='font-family:sans-serif'>Hessian eigenvalue density by stochastic Lanczos "
        "quadrature. Move the <b>training step</b> slider below the charts; hover for "
        f"values.</p>{_series_lines(ds, block)}{note}"
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
    momentum: float | None = None,
    block: str | None = None,
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
        Embed at most this many densities (evenly spread) to bound the file size;
        trajectories show every record.
    title : str
        Page heading.
    momentum : float, optional
        Heavy-ball β of the optimizer, for the sharpness chart's threshold (2+2β)/η
        (default: the run's recorded ``momentum``, else 0).
    block : str, optional
        For per-block spectra, the block the views show (default: the first); every
        block's λ₁ is drawn below them.

    Returns
    -------
    Path
        The file written.
    """
    html_path = Path(html_path)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is HTML: give a path ending in .html, got {html_path}")
    ds = load_runs(sources)
    before = _densities(ds).size
    shown = _densities(_thin(ds, max_steps)).size
    chart = report_chart(
        ds, sigma=sigma, points=points, max_steps=max_steps, momentum=momentum, block=block
    )
    header = _header(ds, title, shown, before if shown < before else None, block)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(to_html(chart, header=header), encoding="utf-8")
    return html_path
