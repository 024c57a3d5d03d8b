"""Long tables behind the charts, read from run datasets through ``ds.hess``.

Views never compute spectra: every density here is ``ds.hess.density`` (or
``density_band``) of stored quadrature nodes and weights, evaluated on one grid shared
by every step (and run) of a view so that steps and runs can be compared point by point.
The functions also hold the checks that turn bad input into clear errors; the dataset
contract itself is :mod:`hessnb.schema`, and kernel widths and grid ends are those of
:mod:`hessnb.linalg.quadrature`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from hessnb import accessor  # noqa: F401  (registers ds.hess)
from hessnb.linalg.quadrature import check_sigma, default_sigma, grid_bounds
from hessnb.schema import QUADRATURE, require

__all__ = [
    "DEFAULT_POINTS",
    "Smoothing",
    "check_step",
    "density_frame",
    "from_json",
    "heat_frame",
    "lr_drops",
    "open_path",
    "resolving_sigma",
    "run_names",
    "scalar_frame",
    "select_run",
    "smoothing",
    "step_ends",
    "steps_of",
    "to_json",
    "top_frame",
]

#: Grid points of a view: enough for a smooth line, few enough to ship every step as JSON.
DEFAULT_POINTS = 600
XScale = Literal["linear", "symlog"]
#: Iterations of the fixed point "kernel width = one spacing of the grid it pads".
RESOLVE_ITERATIONS = 50


@dataclass(frozen=True)
class Smoothing:
    """Kernel width and evaluation grid shared by every step and run of a view.

    Attributes
    ----------
    sigma : float
        Standard deviation of the Gaussian kernel, in eigenvalue units.
    grid : array, shape (g,)
        Eigenvalues at which densities are evaluated (increasing).
    x_scale : {"linear", "symlog"}
        ``"symlog"`` grids are uniform in ``sign(x) log(1 + |x|)``.
    """

    sigma: float
    grid: np.ndarray
    x_scale: str = "linear"


# ---------------------------------------------------------------------- runs and steps
def open_path(path: str | Path) -> xr.Dataset:
    """Load a run file into memory with ``hessnb.open_run`` (the file is closed again)."""
    from hessnb.runfile import open_run

    return open_run(path)


def run_names(ds: xr.Dataset) -> list[str]:
    """Names along the ``run`` dimension, or ``[]`` for a single run."""
    if "run" not in ds.dims:
        return []
    return (
        [str(r) for r in ds["run"].values]
        if "run" in ds.coords
        else [str(i) for i in range(ds.sizes["run"])]
    )


def _as_run(ds: xr.Dataset) -> xr.Dataset:
    """A single spectrum (no ``step`` dim) becomes a run of one step, step 0."""
    if "step" not in ds.dims:
        return ds.expand_dims(step=[0])
    return ds


def select_run(ds: xr.Dataset, run: str | None = None) -> xr.Dataset:
    """One run of ``ds``, keeping only the steps at which it recorded a spectrum.

    Parameters
    ----------
    ds : xarray.Dataset
        A run (dims step, probe, node, ...) or several along ``run``.
    run : str, optional
        Which run; required when ``ds`` holds several.

    Returns
    -------
    xarray.Dataset
        Without a ``run`` dimension, with a ``step`` dimension (a single spectrum becomes
        step 0).

    Raises
    ------
    ValueError
        Unknown run, or a run without any recorded step.
    """
    require(ds, QUADRATURE, "a spectrum view")
    names = run_names(ds)
    label = run
    if names:
        if run is None:
            if len(names) > 1:
                raise ValueError(f"the dataset holds runs {names}; pass run=<one of them>")
            run = names[0]
        if str(run) not in names:
            raise ValueError(f"no run named {run!r}; the dataset holds runs {names}")
        position = names.index(str(run))
        ds = ds.isel(run=position, drop=True)
        label = str(run)
    ds = _as_run(ds)
    if ds.sizes["step"]:
        recorded = np.isfinite(ds["nodes"]).any([d for d in ds["nodes"].dims if d != "step"])
        ds = ds.isel(step=np.flatnonzero(recorded.values))
    if ds.sizes["step"] == 0:
        name = f"run {label!r}" if label is not None else "the run"
        raise ValueError(
            f"{name} holds no recorded steps yet (it is empty); track at least one step "
            "before viewing it"
        )
    return ds


def steps_of(ds: xr.Dataset) -> np.ndarray:
    """Recorded steps of a single run, shape (s,), int64, increasing."""
    return np.asarray(ds["step"].values, dtype=np.int64)


def check_step(ds: xr.Dataset, step: int | None) -> int:
    """``step`` if the run recorded it (the last step when None), else a clear error.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`select_run`).
    step : int, optional
        A training step.

    Returns
    -------
    int
        The step.

    Raises
    ------
    TypeError
        ``step`` is not an int.
    ValueError
        The run did not record ``step`` (the message names the nearest recorded step).
    """
    steps = steps_of(ds)
    if step is None:
        return int(steps[-1])
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int (a training step), got {type(step).__name__}")
    if int(step) not in set(steps.tolist()):
        nearest = int(steps[np.argmin(np.abs(steps - int(step)))])
        shown = ", ".join(map(str, steps[:12])) + (", ..." if steps.size > 12 else "")
        raise ValueError(
            f"step {int(step)} was not recorded; recorded steps are {shown} (nearest: {nearest})"
        )
    return int(step)


def step_ends(steps: np.ndarray) -> np.ndarray:
    """For each step, the next recorded step (a slider value in ``[step, end)`` shows it).

    Parameters
    ----------
    steps : array, shape (s,)
        Recorded steps, increasing.

    Returns
    -------
    array, shape (s,)
        The following step; the last step gets ``step + max(1, last gap)``.
    """
    steps = np.asarray(steps, dtype=np.int64)
    gap = int(np.diff(steps).max()) if steps.size > 1 else 1
    return np.append(steps[1:], steps[-1] + max(gap, 1))


# ---------------------------------------------------------------------- smoothing
def _symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _symexp(u: np.ndarray) -> np.ndarray:
    return np.sign(u) * np.expm1(np.abs(u))


def resolving_sigma(nodes: np.ndarray, points: int) -> float:
    """The paper's kernel width, widened to one spacing of the grid it is evaluated on.

    The grid spans :func:`hessnb.linalg.quadrature.grid_bounds`, whose padding grows with
    the width, so the width is iterated to the fixed point
    ``sigma = max(default_sigma(nodes), (hi - lo) / (points - 1))``.

    Parameters
    ----------
    nodes : array, any shape
        Quadrature nodes (NaN entries are ignored; at least one must be finite).
    points : int
        Grid points ``g``.

    Returns
    -------
    float
        A width at which no isolated node's peak falls between two grid points.
    """
    paper = sigma = default_sigma(nodes)
    for _ in range(RESOLVE_ITERATIONS):
        lo, hi = grid_bounds(nodes, sigma)
        sigma = max(paper, (hi - lo) / (points - 1))
    return sigma


def smoothing(
    ds: xr.Dataset,
    sigma: float | None = None,
    points: int = DEFAULT_POINTS,
    x_scale: XScale = "linear",
) -> Smoothing:
    """Kernel width and grid for a view of ``ds`` (all its steps and runs).

    Parameters
    ----------
    ds : xarray.Dataset
        Holds ``nodes``; every finite node, padded as in
        :func:`hessnb.linalg.quadrature.grid_bounds`, is covered by the grid.
    sigma : float, optional
        Kernel standard deviation. Default: the paper's ``sqrt(1e-5 * max(1, range))``,
        widened to one grid spacing (:func:`resolving_sigma`).
    points : int
        Grid points ``g``.
    x_scale : {"linear", "symlog"}
        Grid uniform in eigenvalue, or in ``sign(x) log(1 + |x|)`` (Vega-Lite's symlog).

    Returns
    -------
    Smoothing
        ``grid`` has shape ``(points,)``.
    """
    require(ds, QUADRATURE, "a density view")
    if x_scale not in ("linear", "symlog"):
        raise ValueError(f"x_scale must be 'linear' or 'symlog', got {x_scale!r}")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
        raise ValueError(f"points must be an int >= 2 (grid size), got {points!r}")
    if sigma is not None:
        sigma = check_sigma(sigma)
    nodes = np.asarray(ds["nodes"].values, dtype=np.float64)
    nodes = nodes[np.isfinite(nodes)]
    if nodes.size == 0:
        raise ValueError(
            "the dataset is empty (no finite quadrature nodes, no recorded steps); track at "
            "least one step before viewing it"
        )
    if sigma is None:
        sigma = resolving_sigma(nodes, int(points))
    lo, hi = grid_bounds(nodes, sigma)
    if x_scale == "linear":
        grid = np.linspace(lo, hi, int(points))
    else:
        grid = _symexp(np.linspace(_symlog(lo), _symlog(hi), int(points)))
    return Smoothing(sigma=float(sigma), grid=grid, x_scale=x_scale)


# ---------------------------------------------------------------------- tables
def to_json(frame: pd.DataFrame) -> str:
    """Rows as a JSON array of objects (NaN as null; floats round-trip exactly)."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return json.dumps(rows, separators=(",", ":"))


def from_json(text: str) -> pd.DataFrame:
    """Inverse of :func:`to_json` (for reading a chart's data back)."""
    return pd.DataFrame(json.loads(text))


def _steps(ds: xr.Dataset, steps: Sequence[int] | None) -> xr.Dataset:
    if steps is None:
        return ds
    return ds.sel(step=[check_step(ds, int(s)) for s in steps])


def density_frame(
    ds: xr.Dataset,
    sm: Smoothing,
    steps: Sequence[int] | None = None,
    band: bool = False,
    level: float = 0.9,
) -> pd.DataFrame:
    """Densities of one run at ``steps`` (all when None) on ``sm.grid``.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`select_run`).
    sm : Smoothing
        Kernel width and grid (``g`` points).
    steps : sequence of int, optional
        Recorded steps to include (``s`` of them).
    band : bool
        Add the probe-bootstrap band.
    level : float
        Coverage of the band.

    Returns
    -------
    pandas.DataFrame, s * g rows
        ``step``, ``eigenvalue``, ``density`` (= ``ds.hess.density(sm.sigma, sm.grid)``)
        and, when ``band`` and there are at least 2 probes, ``lower``/``upper``: the
        probe-bootstrap ``level`` band of ``ds.hess.density_band``.
    """
    sub = _steps(ds, steps)
    dens = sub.hess.density(sigma=sm.sigma, grid=sm.grid)
    frame = dens.to_dataframe().reset_index()[["step", "eigenvalue", "density"]]
    if band and sub.sizes.get("probe", 1) >= 2:
        # one step at a time: the bootstrap holds (resamples, g) per call
        bands = [
            sub.isel(step=[i]).hess.density_band(sigma=sm.sigma, grid=sm.grid, level=level)
            for i in range(sub.sizes["step"])
        ]
        both = xr.concat(bands, dim="step")
        frame["lower"] = both["lower"].values.ravel()
        frame["upper"] = both["upper"].values.ravel()
    return frame


def heat_frame(ds: xr.Dataset, sm: Smoothing, decades: float = 12.0) -> pd.DataFrame:
    """``log10`` density of one run as cells (step x eigenvalue) for a heat map.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`select_run`), ``s`` steps.
    sm : Smoothing
        Kernel width and grid (``g`` points).
    decades : float
        Depth of the colour range below the maximum, in powers of ten.

    Returns
    -------
    pandas.DataFrame, s * g rows
        ``step``, ``step_end``, ``eigenvalue``, ``eigenvalue_end``, ``log10_density``
        (clipped below at ``max - decades``).
    """
    logd = ds.hess.density(sigma=sm.sigma, grid=sm.grid, log=True)
    values = np.maximum(logd.values, float(np.nanmax(logd.values)) - decades)
    steps = steps_of(ds)
    ends = step_ends(steps)
    grid = sm.grid
    # each cell reaches half a cell into the next one: no hairline gaps when rasterised
    widths = np.diff(grid, append=2 * grid[-1] - grid[-2])
    edges = grid + 1.5 * widths
    return pd.DataFrame(
        {
            "step": np.repeat(steps, grid.size),
            "step_end": np.repeat(ends, grid.size),
            "eigenvalue": np.tile(grid, steps.size),
            "eigenvalue_end": np.tile(edges, steps.size),
            "log10_density": values.ravel(),
        }
    )


def top_frame(ds: xr.Dataset, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Top Ritz values of one run, one row per (step, k) with a finite value.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run with ``top_eigenvalues`` (step, k).
    steps : sequence of int, optional
        Recorded steps to include (default: all).

    Returns
    -------
    pandas.DataFrame
        ``step``, ``k``, ``eigenvalue``, ``residual`` (when stored) and ``overlap``
        (the eigenvector's share of the gradient, when ``grad_overlap`` is stored).
    """
    require(ds, ["top_eigenvalues"], "a top-eigenvalue view")
    sub = _steps(ds, steps)
    table = {"eigenvalue": sub["top_eigenvalues"]}
    if "top_residuals" in sub:
        table["residual"] = sub["top_residuals"]
    if "grad_overlap" in sub:
        table["overlap"] = sub["grad_overlap"]
    frame = xr.Dataset(table).to_dataframe().reset_index()
    keep = ["step", "k", *table]
    return frame[keep].dropna(subset=["eigenvalue"]).reset_index(drop=True)


def scalar_frame(ds: xr.Dataset, names: Sequence[str]) -> pd.DataFrame:
    """Per-step scalars of one run in long form.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run holding ``names``, each of shape (step,).
    names : sequence of str
        Variables to include.

    Returns
    -------
    pandas.DataFrame
        ``step``, ``variable``, ``value``; NaN values are dropped.
    """
    require(ds, names, "a trajectory view")
    parts = [
        pd.DataFrame(
            {
                "step": steps_of(ds),
                "variable": name,
                "value": np.asarray(ds[name].values, dtype=np.float64),
            }
        )
        for name in names
    ]
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def lr_drops(ds: xr.Dataset) -> np.ndarray:
    """Steps at which the learning rate decreased.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run, optionally with ``lr`` (step).

    Returns
    -------
    array of int64, shape (d,)
        Empty when ``lr`` is absent or never decreases (NaN entries are skipped).
    """
    if "lr" not in ds:
        return np.zeros(0, dtype=np.int64)
    lr = np.asarray(ds["lr"].values, dtype=np.float64)
    steps = steps_of(ds)
    known = np.isfinite(lr)
    lr, steps = lr[known], steps[known]
    return steps[1:][lr[1:] < lr[:-1]]
