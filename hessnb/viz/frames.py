"""Long tables behind the charts, read from run datasets through ``ds.hess``.

Views never compute spectra: every density here is ``ds.hess.density`` (or
``density_band``) of stored quadrature nodes and weights, each step with its own kernel
and grid (:mod:`hessnb.viz.smoothing`). The per-step statistics (``lambda_min``,
``outlier_gap``, ...) are read as stored; run files written before they existed simply
lack them, and :func:`statistics_in` says which a dataset holds. Trajectory tables
(:func:`top_frame`, :func:`sharpness_frame`, :func:`scalar_frame`) take every step of the
run they are given, top-k records included; :func:`gradient_measure_frame` and
:func:`movement_frame` read full records only. Every table is of one series (one run, one
curvature, one block: :func:`hessnb.viz.runs.each_series`), except :func:`layer_frame`,
which keeps the ``block`` dimension.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy.integrate import cumulative_trapezoid

from hessnb import accessor  # noqa: F401  (registers ds.hess)
from hessnb.linalg.statistics import STATISTICS
from hessnb.schema import require
from hessnb.viz.runs import check_step, density_mask, labels, step_ends, steps_of
from hessnb.viz.smoothing import Smoothing

__all__ = [
    "FULL_RECORD",
    "NO_GRADIENT_MEASURE",
    "TOP_K_RECORD",
    "check_momentum",
    "recorded_momentum",
    "density_frame",
    "from_csv",
    "gradient_measure_frame",
    "gradient_measure_steps",
    "heat_frame",
    "kernel_frame",
    "layer_frame",
    "lr_drops",
    "movement_frame",
    "scalar_frame",
    "sharpness_frame",
    "stability_threshold",
    "statistics_in",
    "threshold_label",
    "to_csv",
    "top_frame",
]

#: Values of the ``record`` column of :func:`sharpness_frame`.
FULL_RECORD, TOP_K_RECORD = "full record (density)", "top-k record"
#: Why a run has no gradient measure to draw.
NO_GRADIENT_MEASURE = (
    "the gradient's spectral measure (grad_nodes, grad_weights) is not stored in this run: "
    "hessnb.Tracker's full records store it; top-k records, hessnb.spectrum and run files "
    "written before hessnb stored it do not"
)


def to_csv(frame: pd.DataFrame) -> tuple[str, dict[str, str]]:
    """Rows as CSV text for Vega, with the parse directive that types its columns.

    Floats are written in full (they round-trip exactly), NaN as an empty field (which
    Vega parses as null), booleans as 0/1.

    Returns
    -------
    text : str
        A header line, then one line per row.
    parse : dict
        Column -> ``"number"`` for numeric and boolean columns (the rest stay strings).
    """
    frame = frame.copy()
    parse = {}
    for name in frame.columns:
        if pd.api.types.is_bool_dtype(frame[name]):
            frame[name] = frame[name].astype(np.int8)
        if pd.api.types.is_numeric_dtype(frame[name]):
            parse[str(name)] = "number"
    return frame.to_csv(index=False, lineterminator="\n"), parse


def from_csv(text: str) -> pd.DataFrame:
    """Inverse of :func:`to_csv` (for reading a chart's data back; floats exactly)."""
    # pandas 3 parses floats round-trip by default and deprecates asking for it
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(io.StringIO(text), **exact)


def _steps(ds: xr.Dataset, steps: Sequence[int] | None) -> xr.Dataset:
    if steps is None:
        return ds
    return ds.sel(step=[check_step(ds, int(s)) for s in steps])


def kernel_frame(ds: xr.Dataset, sm: Smoothing) -> pd.DataFrame:
    """The kernel of every recorded step of one run.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`hessnb.viz.runs.select_run`), ``s`` steps.
    sm : Smoothing
        The view's smoothing.

    Returns
    -------
    pandas.DataFrame, s rows
        ``step``, ``paper_sigma`` (the paper's width for that step's nodes), ``sigma``
        (the width drawn), ``widening`` (drawn / requested, 1 unless the grid forced a
        wider kernel) and ``points`` (grid size).
    """
    kernels = sm.kernels(ds)
    return pd.DataFrame(
        {
            "step": [k.step for k in kernels],
            "paper_sigma": [k.paper for k in kernels],
            "sigma": [k.sigma for k in kernels],
            "widening": [k.widening for k in kernels],
            "points": [k.grid.size for k in kernels],
        }
    )


#: Fewest probes for which a bootstrap band is drawn: resampling fewer probes than this
#: gives quantiles of a handful of curves, not an uncertainty worth drawing.
MIN_BAND_PROBES = 8


def density_frame(
    ds: xr.Dataset,
    sm: Smoothing,
    steps: Sequence[int] | None = None,
    band: bool = False,
    level: float = 0.9,
) -> pd.DataFrame:
    """Densities of one run at ``steps`` (all when None), each on its own grid.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`hessnb.viz.runs.select_run`).
    sm : Smoothing
        The view's smoothing: step ``s`` is smoothed with its kernel ``k_s``
        (``Smoothing.kernels``), on ``g_s`` grid points.
    steps : sequence of int, optional
        Recorded steps to include.
    band : bool
        Add the probe-bootstrap band.
    level : float
        Coverage of the band.

    Returns
    -------
    pandas.DataFrame, sum of g_s rows
        ``step``, ``eigenvalue``, ``density`` (= ``ds.hess.density(k_s.sigma,
        k_s.grid)`` at that step) and, when ``band`` and there are at least
        :data:`MIN_BAND_PROBES` probes, ``lower``/``upper``: the probe-bootstrap
        ``level`` band of ``ds.hess.density_band``.
    """
    sub = _steps(ds, steps)
    with_band = band and sub.sizes.get("probe", 1) >= MIN_BAND_PROBES
    parts = []
    for kernel in sm.kernels(sub):
        one = sub.sel(step=[kernel.step])
        dens = one.hess.density(sigma=kernel.sigma, grid=kernel.grid).isel(step=0)
        part = {"step": kernel.step, "eigenvalue": kernel.grid, "density": dens.values}
        if with_band:
            bounds = one.hess.density_band(sigma=kernel.sigma, grid=kernel.grid, level=level)
            part["lower"] = bounds["lower"].values[0]
            part["upper"] = bounds["upper"].values[0]
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def heat_frame(
    ds: xr.Dataset, sm: Smoothing, cells: int = 150, decades: float = 12.0
) -> pd.DataFrame:
    """``log10`` of the mean density over cells (step x eigenvalue) for a heat map.

    Each step's density is evaluated with its own kernel on its own grid (as in
    :func:`density_frame`) and integrated over ``cells`` equal cells spanning
    ``sm.domain``, so a cell taller than the kernel shows the mass inside it rather
    than missing a narrow peak.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`hessnb.viz.runs.select_run`), ``s`` steps.
    sm : Smoothing
        The view's smoothing.
    cells : int
        Cells along the eigenvalue axis, ``c``.
    decades : float
        Depth of the colour range below the maximum, in powers of ten.

    Returns
    -------
    pandas.DataFrame, s * c rows
        ``step``, ``step_end``, ``eigenvalue``, ``eigenvalue_end``, ``log10_density``
        (the cell mean, clipped below at ``max - decades``).
    """
    if isinstance(cells, bool) or not isinstance(cells, (int, np.integer)) or cells < 2:
        raise ValueError(f"cells must be an int >= 2, got {cells!r}")
    edges = np.linspace(*sm.domain, int(cells) + 1)
    width = edges[1] - edges[0]
    means = []
    for kernel in sm.kernels(ds):
        dens = ds.sel(step=[kernel.step]).hess.density(sigma=kernel.sigma, grid=kernel.grid)
        cdf = cumulative_trapezoid(dens.values[0], kernel.grid, initial=0.0)
        mass = np.diff(np.interp(edges, kernel.grid, cdf, left=0.0, right=cdf[-1]))
        means.append(np.maximum(mass, 0.0) / width)
    with np.errstate(divide="ignore"):
        logd = np.log10(np.stack(means))
    values = np.maximum(logd, float(np.max(logd)) - decades)
    steps = steps_of(ds)
    # each cell reaches half a cell into the next one: no hairline gaps when rasterised
    return pd.DataFrame(
        {
            "step": np.repeat(steps, cells),
            "step_end": np.repeat(step_ends(steps), cells),
            "eigenvalue": np.tile(edges[:-1], steps.size),
            "eigenvalue_end": np.tile(edges[1:] + width / 2, steps.size),
            "log10_density": values.ravel(),
        }
    )


def statistics_in(ds: xr.Dataset) -> list[str]:
    """The spectrum statistics (``hessnb.linalg.statistics.STATISTICS``) ``ds`` holds."""
    return [name for name in STATISTICS if name in ds]


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


def layer_frame(ds: xr.Dataset, k: int = 1) -> pd.DataFrame:
    """The top eigenvalue of rank ``k`` of every block at every step of one series.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run and curvature whose ``top_eigenvalues`` are over (step, block, k):
        :func:`hessnb.viz.runs.each_series` with ``keep=("block",)``.
    k : int
        Rank (1 = the largest); position ``k - 1`` along ``k``.

    Returns
    -------
    pandas.DataFrame
        ``step``, ``block`` (in the stored order within each step), ``eigenvalue``
        (``top_eigenvalues.isel(k=k - 1)``) and, when stored per block, ``n_params``;
        rows without a value (blocks a step did not record) are dropped.
    """
    require(ds, ["top_eigenvalues"], "a per-block view", dims=("step", "block"))
    values = ds["top_eigenvalues"].isel(k=k - 1).transpose("step", "block").values
    steps, blocks = steps_of(ds), labels(ds, "block")
    frame = pd.DataFrame(
        {
            "step": np.repeat(steps, len(blocks)),
            "block": np.tile(np.asarray(blocks, dtype=object), steps.size),
            "eigenvalue": values.ravel(),
        }
    )
    if "n_params" in ds and ds["n_params"].dims == ("block",):
        frame["n_params"] = np.tile(ds["n_params"].values, steps.size)
    return frame.dropna(subset=["eigenvalue"]).reset_index(drop=True)


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


def check_momentum(momentum: float) -> float:
    """``momentum`` as a float if it is a heavy-ball coefficient in ``[0, 1)``, else raise."""
    if isinstance(momentum, bool) or not isinstance(
        momentum, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"momentum must be a number in [0, 1), got {type(momentum).__name__}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum must lie in [0, 1) (heavy-ball beta), got {momentum!r}")
    return float(momentum)


def recorded_momentum(ds: xr.Dataset) -> float:
    """The run's ``momentum`` variable (``hessnb.reference.train`` records it), else 0.

    Raises
    ------
    ValueError
        If the recorded momentum changes during the run (pass ``momentum=`` instead).
    """
    if "momentum" not in ds:
        return 0.0
    values = np.unique(np.asarray(ds["momentum"].values, dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size > 1:
        raise ValueError(
            f"the recorded momentum changes during the run ({values.tolist()}); pass "
            "momentum=<the heavy-ball beta to draw> explicitly"
        )
    return check_momentum(float(values[0])) if values.size else 0.0


def stability_threshold(lr: np.ndarray, momentum: float = 0.0) -> np.ndarray:
    """Largest sharpness at which (heavy-ball) gradient descent is stable, ``(2 + 2β) / η``.

    On a quadratic with curvature ``λ``, gradient descent with step ``η`` diverges along
    the top eigenvector once ``λ > 2 / η``; heavy-ball momentum ``β`` (``torch.optim.SGD``'s
    ``momentum``) moves the threshold to ``(2 + 2β) / η``.

    Parameters
    ----------
    lr : array, shape (s,)
        Learning rate ``η`` per step (NaN stays NaN).
    momentum : float
        ``β`` in ``[0, 1)``; 0 is plain gradient descent.

    Returns
    -------
    array, shape (s,), float64
    """
    beta = check_momentum(momentum)
    return (2.0 + 2.0 * beta) / np.asarray(lr, dtype=np.float64)


def threshold_label(momentum: float = 0.0) -> str:
    """Names the line :func:`stability_threshold` draws and the optimizer it holds for.

    ``"2/η (gradient descent)"`` for ``momentum`` 0, else e.g.
    ``"(2+2β)/η, β = 0.9 (heavy-ball momentum)"``.
    """
    beta = check_momentum(momentum)
    if beta == 0.0:
        return "2/η (gradient descent)"
    return f"(2+2β)/η, β = {beta:g} (heavy-ball momentum)"


def sharpness_frame(ds: xr.Dataset, momentum: float = 0.0) -> pd.DataFrame:
    """The top eigenvalue λ₁ at every step of one run, its kind of record and 2/η.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run with ``top_eigenvalues`` (step, k), ``s`` steps (from
        ``select_run(..., densities_only=False)`` to include the top-k records).
    momentum : float
        Heavy-ball ``β`` of the optimizer, for the threshold (see
        :func:`stability_threshold`).

    Returns
    -------
    pandas.DataFrame, s rows
        ``step``, ``sharpness`` (``top_eigenvalues`` at k = 1), ``full`` (whether the step
        holds a density), ``record`` (:data:`FULL_RECORD` or :data:`TOP_K_RECORD`), and
        when stored ``residual`` (``top_residuals`` at k = 1), ``grad_fraction``, ``lr``
        and ``threshold`` (= ``stability_threshold(lr, momentum)``).
    """
    require(ds, ["top_eigenvalues"], "a sharpness view")
    beta = check_momentum(momentum)
    full = density_mask(ds)
    frame = pd.DataFrame(
        {
            "step": steps_of(ds),
            "sharpness": ds["top_eigenvalues"].transpose("step", "k").values[:, 0],
            "full": full,
            "record": np.where(full, FULL_RECORD, TOP_K_RECORD),
        }
    )
    if "top_residuals" in ds:
        frame["residual"] = ds["top_residuals"].transpose("step", "k").values[:, 0]
    if "grad_fraction" in ds:
        frame["grad_fraction"] = np.asarray(ds["grad_fraction"].values, dtype=np.float64)
    if "lr" in ds:
        frame["lr"] = np.asarray(ds["lr"].values, dtype=np.float64)
        frame["threshold"] = stability_threshold(frame["lr"].to_numpy(), beta)
    return frame


def gradient_measure_steps(ds: xr.Dataset) -> np.ndarray:
    """Steps of one run that hold the gradient's spectral measure, shape (m,), int64.

    Empty when ``grad_nodes`` is absent (``hessnb.spectrum`` without a gradient, run files
    written before hessnb stored it) or NaN everywhere (top-k records, zero gradients).
    """
    if "grad_nodes" not in ds or "grad_weights" not in ds:
        return np.zeros(0, dtype=np.int64)
    finite = np.isfinite(ds["grad_nodes"].transpose("step", "node").values).any(axis=1)
    return steps_of(ds)[finite]


def gradient_measure_frame(
    ds: xr.Dataset,
    steps: Sequence[int] | None = None,
    domain: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """The gradient's cumulative spectral measure ``G(λ) = Σ_{θ_j ≤ λ} w_j`` per step.

    ``θ_j``/``w_j`` are ``grad_nodes``/``grad_weights``: the Ritz values of the Lanczos run
    started at the gradient ``g`` and the share of ``||g||²`` at each, so ``G`` rises from
    0 to 1 (to rounding) and ``G(λ)`` is the share of ``||g||²`` on eigenvalues ``≤ λ``.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run with ``grad_nodes`` and ``grad_weights`` (step, node).
    steps : sequence of int, optional
        Steps to include (default: every step holding the measure,
        :func:`gradient_measure_steps`).
    domain : (float, float), optional
        Add a row at ``domain[0]`` with ``G = 0`` before each step's nodes and one at
        ``domain[1]`` with ``G = Σ w_j`` after them, so a step curve spans the axis.

    Returns
    -------
    pandas.DataFrame, sum of (m_s + 2 if domain else m_s) rows
        ``step``, ``eigenvalue`` (θ_j increasing, with the domain's ends), ``weight``
        (``w_j``; NaN on the domain rows) and ``cumulative`` (``G(θ_j)``, the cumulative
        sum of the weights in increasing θ).

    Raises
    ------
    ValueError
        The run holds no gradient measure, or not at one of ``steps``.
    """
    measured = gradient_measure_steps(ds)
    if measured.size == 0:
        raise ValueError(NO_GRADIENT_MEASURE)
    sub = ds.sel(step=measured)
    if steps is not None:
        sub = sub.sel(step=[check_step(sub, int(s)) for s in steps])
    nodes = sub["grad_nodes"].transpose("step", "node").values
    weights = sub["grad_weights"].transpose("step", "node").values
    parts = []
    for step, theta, w in zip(steps_of(sub), nodes, weights, strict=True):
        keep = np.isfinite(theta)
        order = np.argsort(theta[keep], kind="stable")
        theta, w = theta[keep][order], np.nan_to_num(w[keep][order])
        cumulative = np.cumsum(w)
        if domain is not None:
            theta = np.concatenate([[domain[0]], theta, [domain[1]]])
            w = np.concatenate([[np.nan], w, [np.nan]])
            cumulative = np.concatenate([[0.0], cumulative, cumulative[-1:]])
        parts.append(
            pd.DataFrame({"step": step, "eigenvalue": theta, "weight": w, "cumulative": cumulative})
        )
    return pd.concat(parts, ignore_index=True)


def movement_frame(ds: xr.Dataset) -> pd.DataFrame:
    """How far the spectrum moved between consecutive densities of one run.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run with at least two densities.

    Returns
    -------
    pandas.DataFrame, one row per density after the first
        ``step``, ``previous`` (the density before it), ``w1`` (``ds.hess.movement()``:
        Wasserstein-1 distance between the two spectra, eigenvalue units) and
        ``per_step`` (``w1 / (step - previous)``).
    """
    moved = ds.hess.movement()
    steps = np.asarray(moved["step"].values, dtype=np.int64)
    densities = steps_of(ds)[density_mask(ds)]
    return pd.DataFrame(
        {
            "step": steps,
            "previous": densities[np.searchsorted(densities, steps) - 1],
            "w1": moved.values,
            "per_step": moved["per_step"].values,
        }
    )
