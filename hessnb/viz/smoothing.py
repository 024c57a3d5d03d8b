"""Kernel widths and grids of the views: every step smoothed with its own paper's kernel.

Each spectrum of a view (each step of each run) is smoothed with the kernel width of the
paper's reference code for *its own* Ritz values, ``sigma_s = sqrt(1e-5 * max(1,
range_s))`` (:func:`hessnb.linalg.quadrature.default_sigma` of that step's nodes, all
probes), times one ``scale`` common to every step (1 = the paper; the explorer's σ slider
moves it). Passing ``sigma`` instead smooths every step with that one width.

Each step also gets its own grid, between :func:`hessnb.linalg.quadrature.grid_bounds` of
its nodes, on a lattice of spacing ``sigma / RESOLUTION``: every lattice point within
``REACH`` kernel widths of a node, plus ``COARSE`` points spread over the whole span (the
tails between distant nodes). A bulk with isolated outliers thus needs a few hundred to
a few thousand points, however wide its range, and the kernel drawn is the kernel asked
for. Only when that grid would exceed ``max_points`` (at one point per kernel width) does
the grid become uniform with ``max_points`` points and the kernel widen to its spacing, so
that no node's peak falls between two grid points; :attr:`Kernel.widening` says by how
much, and the charts print it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from hessnb.linalg.quadrature import SIGMA2_PER_RANGE, check_sigma, default_sigma, grid_bounds
from hessnb.schema import QUADRATURE, require
from hessnb.viz.runs import each_series, steps_of

__all__ = [
    "COARSE",
    "MAX_POINTS",
    "REACH",
    "RESOLUTION",
    "Kernel",
    "Smoothing",
    "XScale",
    "step_grid",
    "widening_note",
]

XScale = Literal["linear", "symlog"]
#: Grid points per kernel width near every node.
RESOLUTION = 2
#: Kernel widths around each node sampled at full resolution (beyond 8 widths a
#: Gaussian has fallen by e^-32, below any density a chart draws).
REACH = 8
#: Points spread evenly over a step's whole span.
COARSE = 200
#: Most grid points of one step's density (each step's density is shipped as JSON).
MAX_POINTS = 3000
#: Iterations of the fixed point "kernel width = one spacing of the grid it pads".
RESOLVE_ITERATIONS = 50
#: Relative slack below which a kernel counts as not widened (float rounding).
WIDENING_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Kernel:
    """Kernel width and grid of one step's density.

    Attributes
    ----------
    step : int
        The training step.
    paper : float
        The paper's width for this step's nodes, ``sqrt(1e-5 * max(1, range))``.
    requested : float
        The width asked for: ``scale * paper``, or the view's fixed ``sigma``.
    sigma : float
        The width drawn (``requested``, or wider when the grid could not resolve it).
    grid : array, shape (g,)
        Eigenvalues at which the density is evaluated (increasing).
    """

    step: int
    paper: float
    requested: float
    sigma: float
    grid: np.ndarray

    @property
    def widening(self) -> float:
        """``sigma / requested``: 1 when the kernel drawn is the kernel asked for."""
        return self.sigma / self.requested

    @property
    def widened(self) -> bool:
        """Whether the grid forced a wider kernel than requested."""
        return self.widening > 1 + WIDENING_TOLERANCE


def _lattice(nodes: np.ndarray, sigma: float, spacing: float, max_points: int) -> np.ndarray | None:
    """Adaptive grid of one step (see the module docstring), or None above ``max_points``."""
    lo, hi = grid_bounds(nodes, sigma)
    last = math.ceil((hi - lo) / spacing)  # the last point is clipped to hi
    centres = np.unique(nodes)
    reach = REACH * sigma
    starts = np.clip(np.ceil((centres - reach - lo) / spacing), 0, last).astype(np.int64)
    stops = np.clip(np.floor((centres + reach - lo) / spacing), 0, last).astype(np.int64)
    width = int((stops - starts).max()) + 1
    if centres.size * width > 20 * max_points:  # far too many before merging: don't build
        return None
    near = starts[:, None] + np.arange(width)[None, :]
    near = near[near <= stops[:, None]]
    coarse = np.round(np.linspace(0, last, min(COARSE, last + 1))).astype(np.int64)
    index = np.unique(np.concatenate([near, coarse, [0, last]]))
    if index.size > max_points:
        return None
    return np.unique(np.minimum(lo + index * spacing, hi))  # clipping may repeat hi


def _uniform(nodes: np.ndarray, requested: float, points: int) -> tuple[float, np.ndarray]:
    """``points`` evenly spaced eigenvalues and a kernel at least one spacing wide.

    The grid spans :func:`grid_bounds`, whose padding grows with the width, so the width
    is iterated to the fixed point ``sigma = max(requested, (hi - lo) / (points - 1))``.
    """
    sigma = requested
    for _ in range(RESOLVE_ITERATIONS):
        lo, hi = grid_bounds(nodes, sigma)
        sigma = max(requested, (hi - lo) / (points - 1))
    lo, hi = grid_bounds(nodes, sigma)
    return sigma, np.linspace(lo, hi, points)


def step_grid(nodes: np.ndarray, sigma: float, max_points: int) -> tuple[float, np.ndarray]:
    """The grid of one step's density and the kernel width drawn on it.

    Parameters
    ----------
    nodes : array, any shape
        That step's quadrature nodes (NaN entries are ignored; at least one is finite).
    sigma : float
        Kernel width requested.
    max_points : int
        Most grid points ``g``.

    Returns
    -------
    sigma : float
        ``sigma`` itself, or (only when no adaptive grid of at most ``max_points`` points
        resolves it) the spacing of a uniform grid of ``max_points`` points.
    grid : array, shape (g,)
        Increasing eigenvalues covering every node padded as in :func:`grid_bounds`.
    """
    finite = np.asarray(nodes, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    for per_width in (RESOLUTION, 1):
        grid = _lattice(finite, sigma, sigma / per_width, max_points)
        if grid is not None:
            return sigma, grid
    return _uniform(finite, sigma, max_points)


@dataclass(frozen=True)
class Smoothing:
    """How a view smooths: per-step kernels, grid size and the x range of the view.

    Attributes
    ----------
    scale : float
        Multiplier of every step's own paper width (1 = the paper's kernel).
    sigma : float or None
        One fixed width for every step (overrides ``scale``).
    max_points : int
        Most grid points of one step's density.
    x_scale : {"linear", "symlog"}
        Scale of the eigenvalue axis.
    domain : (float, float)
        Eigenvalue range covering every step's grid in the view (runs share it).
    """

    scale: float = 1.0
    sigma: float | None = None
    max_points: int = MAX_POINTS
    x_scale: str = "linear"
    domain: tuple[float, float] = (math.nan, math.nan)

    @classmethod
    def of(
        cls,
        ds: xr.Dataset,
        sigma: float | None = None,
        points: int = MAX_POINTS,
        x_scale: XScale = "linear",
        *,
        scale: float = 1.0,
    ) -> Smoothing:
        """The smoothing of a view of ``ds`` (all its steps and runs).

        Parameters
        ----------
        ds : xarray.Dataset
            Holds ``nodes``: a spectrum, a run, or runs along ``run``, with or without
            ``curvature`` and ``block`` dimensions (every series counts).
        sigma : float, optional
            One kernel width for every step. Default: each step's own paper width times
            ``scale``.
        points : int
            Most grid points of one step's density.
        x_scale : {"linear", "symlog"}
            Scale of the eigenvalue axis.
        scale : float
            Multiplier of every step's paper width (ignored when ``sigma`` is given).

        Returns
        -------
        Smoothing
            With ``domain`` covering every step's grid of every series
            (:func:`hessnb.viz.runs.each_series`).
        """
        require(ds, QUADRATURE, "a density view")
        if x_scale not in ("linear", "symlog"):
            raise ValueError(f"x_scale must be 'linear' or 'symlog', got {x_scale!r}")
        if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
            raise ValueError(f"points must be an int >= 2 (grid size), got {points!r}")
        if sigma is not None:
            sigma = check_sigma(sigma)
        scale = check_sigma(scale)
        if not np.isfinite(np.asarray(ds["nodes"].values, dtype=np.float64)).any():
            raise ValueError(
                "the dataset is empty (no finite quadrature nodes, no recorded steps); track "
                "at least one step before viewing it"
            )
        policy = cls(scale=float(scale), sigma=sigma, max_points=int(points), x_scale=x_scale)
        grids = [k.grid for _, one in each_series(ds) for k in policy.kernels(one)]
        domain = (float(min(g[0] for g in grids)), float(max(g[-1] for g in grids)))
        return cls(policy.scale, sigma, policy.max_points, x_scale, domain)

    def kernel(self, nodes: np.ndarray, step: int) -> Kernel:
        """The kernel of one step from its nodes (any shape, NaN ignored)."""
        paper = default_sigma(nodes)
        requested = self.sigma if self.sigma is not None else self.scale * paper
        sigma, grid = step_grid(nodes, requested, self.max_points)
        return Kernel(int(step), paper, requested, sigma, grid)

    def kernels(self, run_ds: xr.Dataset) -> list[Kernel]:
        """One kernel per recorded step of a single series (from ``runs.each_series``)."""
        nodes = run_ds["nodes"].transpose("step", ...).values
        return [self.kernel(n, s) for n, s in zip(nodes, steps_of(run_ds), strict=True)]

    def describe(self) -> str:
        """The kernel policy in words (for chart subtitles)."""
        rule = f"σ² = {SIGMA2_PER_RANGE:g}·max(1, range)"
        if self.sigma is not None:
            return f"σ = {self.sigma:.3g} for every step"
        if self.scale == 1:
            return f"each step's own σ, {rule} (the paper's)"
        return f"{self.scale:.3g} × each step's own paper σ ({rule})"


def widening_note(kernels: list[Kernel], max_points: int) -> str:
    """``""``, or a sentence saying how much wider than requested the widest kernel is."""
    widened = [k for k in kernels if k.widened]
    if not widened:
        return ""
    worst = max(widened, key=lambda k: k.widening)
    return (
        f"σ widened up to ×{worst.widening:.2g} (step {worst.step}) to fit {max_points} grid points"
    )
