"""A-posteriori Wasserstein-1 bound for stochastic Lanczos quadrature (SLQ).

SLQ with ``P`` Gaussian probes ``v_p`` and ``m`` Lanczos steps replaces the spectral
measure ``mu = (1/n) sum_i delta(lambda_i)`` of a symmetric ``n x n`` operator by the
probe average of Gauss quadratures ``G_p`` of the probe measures
``mu_v = sum_i (u_i . v)^2 delta(lambda_i) / |v|^2``. The a-priori bound of
:func:`hessnb.linalg.quadrature.wasserstein_bound` holds for every operator and is
therefore loose; :func:`posterior_bound` bounds ``W1(mu, mean_p G_p)`` from the run's own
tridiagonals. With ``F`` the CDF of ``mu``, ``Fbar`` the probe average of the CDFs of
``mu_{v_p}`` and ``Ghat`` that of the quadratures,

    ``W1(mu, mean_p G_p) = int_a^b |F(x) - Ghat(x)| dx``,

and the integrand is bounded cell by cell on a grid of ``[a, b]`` in three steps.

1. Lanczos part (deterministic; :func:`quadrature_cdf_bounds`). ``T_m`` and the final
   residual norm ``beta_m`` fix the moments ``int t^j d mu_v`` for ``j <= 2m``. For any
   real ``s`` the ``(m+1) x (m+1)`` matrix ``T~(s) = [[T_m, beta_m e_m], [beta_m e_m^T, s]]``
   is the Jacobi matrix of an ``(m+1)``-node rule ``rho`` with these ``2m + 1`` moments
   (the Gauss-Radau rule through each of its nodes), and each of its nodes
   ``xi`` satisfies the Chebyshev-Markov-Stieltjes (Markov-Krein) inequalities
   ``rho((-inf, xi)) <= mu_v((-inf, xi))`` and ``mu_v((-inf, xi]) <= rho((-inf, xi])``
   for every measure on the real line with those moments (the classical Gauss-node form,
   ``G((-inf, theta_k)) <= mu_v((-inf, theta_k)) <= mu_v((-inf, theta_k]) <=
   G((-inf, theta_k])``, is the limit ``s -> inf``). As the CDF is monotone, brackets at
   the nodes of a few such rules bound ``F_{v_p}`` on every cell of the grid; at a
   breakdown (``beta_m = 0``) the Krylov space is invariant and ``F_{v_p} = G_p``.
2. Probe part (probability ``>= confidence``; :func:`cdf_levels`). Write ``g = U^T v``
   in an eigenbasis ordered by eigenvalue (ties in any fixed order) and
   ``Phi(k) = sum_{i <= k} g_i^2 / |g|^2``; then ``F_v(x) = Phi(n F(x))``, ``Phi`` is
   nondecreasing in ``k`` and ``Phi(k) ~ Beta(k/2, (n-k)/2)``. For one probe the
   quantiles of this Beta law bound ``Phi(k)``. For ``P`` probes the average of ``P``
   independent ``Beta(a, b)`` is smaller in convex order than ``W ~ Beta(Pa, Pb)``
   (``W = sum_p S_p Phi_p / sum_p S_p`` with ``S_p = |g_p|^2`` independent of the
   directions, so the average is ``E[W | Phi_1..Phi_P]``), hence
   ``P(average >= c + E(W - c)_+ / eta) <= eta`` for every ``c`` (Markov's inequality on
   ``(average - c)_+``): the conditional value-at-risk of ``W``. A union bound over a grid
   of levels ``K_g`` (every ``k <= 16`` from each end, then steps ``~ sqrt(k) / 2``), with
   failure probability ``eta_g`` proportional to ``min(K_g, n - K_g)^(-1/2)`` and summing to
   ``1 - confidence``, holds all levels at once; between grid levels the monotonicity of
   ``Phi`` interpolates (``Phi(K_g) <= Phi(k) <= Phi(K_{g+1})``). The bracket is narrow
   where ``F`` is near 0 or 1 (it scales like ``sqrt(min(k, n-k)) / n``), which is the
   outlier region that dominates the spectral range.
3. Combination. On each cell the probe average ``Fbar`` lies in the bracket of step 1;
   step 2 makes ``F = k/n`` admissible only if the level bracket of ``k`` meets it. The
   integrand is ``max(q_max - Ghat, Ghat - q_min)`` over the admissible ``[q_min, q_max]``,
   a rigorous supremum over every ``F`` consistent with the run.

Assumptions (each is needed for the bound to hold):

- The probes are independent Gaussian vectors ``N(0, c I)``, drawn independently of the
  operator (as :func:`hessnb.slq.probe_vectors` does); Rademacher probes are not covered.
- Exact arithmetic: the stored tridiagonal is that of the operator and probe (full
  re-orthogonalisation keeps the floating-point one within rounding of it). CDF values
  are compared with an allowance of ``TOLERANCE`` for rounding.
- The spectrum lies in ``[a, b]``. By default ``a`` and ``b`` are the smallest and
  largest Ritz values minus / plus their residual norms ``beta_m |U[m-1, j]|``, over all
  probes: this assumes that the extreme Ritz values approximate the extreme eigenvalues
  (an eigenvalue is within the residual norm of each Ritz value, but an eigenvalue beyond
  ``b`` whose eigenvector the Krylov spaces missed would go unnoticed). Pass ``interval``
  when rigorous bounds of the spectrum are known. Nothing else uses the interval: if the
  spectrum leaves it, ``W1`` exceeds the bound by at most
  ``(a - lambda_min) F(a) + (lambda_max - b) (1 - F(b))``, the integral outside ``[a, b]``.
- ``scipy.special.betainc`` (the Beta CDF) is accurate to rounding: the quantiles from
  ``betaincinv`` are checked against it and moved inwards until they pass.

The relative bound divides by the Ritz range ``max theta - min theta`` over all probes,
which never exceeds ``lambda_max - lambda_min``: it bounds ``W1 / (lambda_max -
lambda_min)``, and multiplying it by the true range bounds ``W1``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.special import betainc, betaincinv

from hessnb.linalg.quadrature import tridiagonal_to_quadrature
from hessnb.validation import check_positive_int

__all__ = [
    "PosteriorBound",
    "cdf_levels",
    "posterior_bound",
    "quadrature_cdf_bounds",
]

#: Gauss-Radau rules per probe placed by importance in the Lanczos part (each costs one
#: ``(m+1) x (m+1)`` tridiagonal eigenproblem).
RULES = 128
#: Cells of the integration grid above which Radau points are thinned (many probes).
MAX_CELLS = 200_000
#: Distances per gap end at which Radau rules are placed (see ``_radau_targets``).
POSITIONS_PER_END = 3
#: A Ritz value whose residual norm is below this fraction of a neighbouring gap counts as
#: converged: the gap end gets a Radau rule at a few residual norms from it.
CONVERGED = 2.0**-10
#: Levels ``min(k, n - k) <= DENSE_LEVELS`` each get their own term in the union bound.
DENSE_LEVELS = 16
#: Beyond them, grid levels are ``LEVEL_STEP * sqrt(j)`` apart (``j = min(k, n - k)``).
LEVEL_STEP = 0.5
#: Failure probability of a grid level is proportional to ``j ** -LEVEL_EXPONENT``.
LEVEL_EXPONENT = 0.5
#: Allowance for rounding: in CDF values (the weights of a quadrature sum to 1 within it),
#: and, times the largest Ritz value in magnitude, at the ends of the default interval.
TOLERANCE = 1e-12


@dataclass(frozen=True)
class PosteriorBound:
    """An a-posteriori Wasserstein-1 bound and its parts.

    Attributes
    ----------
    absolute : float
        Bound on ``W1(mu, SLQ estimate)`` in eigenvalue units, holding with probability at
        least ``confidence`` over the Gaussian probes (under the module's assumptions).
    lanczos : float
        Deterministic bound on ``W1(mean_p mu_{v_p}, SLQ estimate)``, the quadrature error
        of the run's own probes (eigenvalue units); zero at an invariant Krylov space.
    interval : tuple of float
        ``(a, b)``, the interval assumed to contain the spectrum.
    ritz_range : float
        ``max theta - min theta`` over all probes (at most ``lambda_max - lambda_min``).
    confidence : float
        Probability over the probes with which ``absolute`` holds.
    """

    absolute: float
    lanczos: float
    interval: tuple[float, float]
    ritz_range: float
    confidence: float

    @property
    def relative(self) -> float:
        """``absolute / ritz_range``: a bound on ``W1 / (lambda_max - lambda_min)``.

        ``0`` for a zero bound, ``inf`` for a positive bound with a zero Ritz range.
        """
        if self.absolute == 0:
            return 0.0
        return self.absolute / self.ritz_range if self.ritz_range > 0 else math.inf


# ----------------------------------------------------------------------------- Lanczos part
def _radau_targets(
    nodes: np.ndarray,
    weights: np.ndarray,
    residuals: np.ndarray,
    ends: tuple[float, float],
    rules: int,
) -> np.ndarray:
    """Points in the gaps of ``[a, nodes..., b]`` where Radau rules are placed.

    Next to a Ritz value with residual norm ``r`` the bracket closes within a few ``r``.
    So each gap end whose Ritz value has ``r < CONVERGED * width`` gets a target at
    ``max(8 r, 2^-40 width)`` from it, outside the budget. Then gaps in decreasing order
    of ``width * (left weight + right weight)`` (their Gauss-node bracket integrated over
    the gap) get their midpoint and, per end, ``POSITIONS_PER_END`` distances log-spaced
    from ``clip(8 r / width, 2^-40, 1/4)`` to ``1/4`` of the width, until ``rules``
    targets are placed.

    Returns
    -------
    array, shape (t,)
        Distinct targets strictly inside gaps, ascending.
    """
    edges = np.concatenate([[min(ends[0], nodes[0])], nodes, [max(ends[1], nodes[-1])]])
    lo, hi = edges[:-1], edges[1:]
    widths = hi - lo
    # residual norms of the Ritz values at the left / right end of each gap (none at a, b)
    res_lo = np.concatenate([[np.inf], residuals])
    res_hi = np.concatenate([residuals, [np.inf]])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_lo, rel_hi = res_lo / widths, res_hi / widths
    free_lo = (widths > 0) & (rel_lo < CONVERGED)
    free_hi = (widths > 0) & (rel_hi < CONVERGED)
    free = [
        lo[free_lo] + np.maximum(8 * res_lo[free_lo], 2.0**-40 * widths[free_lo]),
        hi[free_hi] - np.maximum(8 * res_hi[free_hi], 2.0**-40 * widths[free_hi]),
    ]
    importance = widths * (np.concatenate([[0.0], weights]) + np.concatenate([weights, [0.0]]))
    order = np.argsort(importance, kind="stable")[::-1]
    order = order[importance[order] > 0]
    steps = np.linspace(0.0, 1.0, POSITIONS_PER_END)
    near_lo = np.nan_to_num(np.clip(8 * rel_lo[order], 2.0**-40, 0.25), nan=0.25)
    near_hi = np.nan_to_num(np.clip(8 * rel_hi[order], 2.0**-40, 0.25), nan=0.25)
    w = widths[order, None]
    from_lo = lo[order, None] + near_lo[:, None] ** (1 - steps) * 0.25**steps * w
    from_hi = hi[order, None] - near_hi[:, None] ** (1 - steps) * 0.25**steps * w
    per_gap = np.concatenate(
        [lo[order, None] + 0.5 * w, np.stack([from_lo, from_hi], axis=2).reshape(len(order), -1)],
        axis=1,
    ).ravel()  # gap by gap, in order of importance
    inside = (per_gap > np.repeat(lo[order], 1 + 2 * POSITIONS_PER_END)) & (
        per_gap < np.repeat(hi[order], 1 + 2 * POSITIONS_PER_END)
    )
    per_gap = per_gap[inside]
    _, first = np.unique(per_gap, return_index=True)
    budgeted = per_gap[np.sort(first)][:rules]
    targets = np.unique(np.concatenate([*free, budgeted]))
    return targets[np.isin(targets, nodes, invert=True)]


def quadrature_cdf_bounds(
    alpha: np.ndarray,
    beta: np.ndarray,
    interval: tuple[float, float] | None = None,
    rules: int = RULES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brackets of one probe's spectral CDF at points, from its Lanczos tridiagonal.

    With ``F_v(x) = mu_v((-inf, x])`` the CDF of the probe's spectral measure, every
    returned point ``xi`` has ``lower <= F_v(xi)`` and ``upper >= F_v(xi^-)`` (the limit
    from the left); as ``F_v`` is nondecreasing, ``F_v(x)`` lies between the largest
    ``lower`` at points ``<= x`` and the smallest ``upper`` at points ``> x``.

    The points are the Gauss nodes (``lower = G(theta^-)``, ``upper = G(theta)``) and the
    nodes of up to ``rules`` Gauss-Radau rules ``T~(s)`` (``lower = rho((-inf, xi))``,
    ``upper = rho((-inf, xi])``), which hold by the Chebyshev-Markov-Stieltjes inequalities
    (see the module docstring). With ``beta_m = 0`` (an invariant Krylov space) ``mu_v``
    is the Gauss quadrature and the nodes carry ``lower = G(theta)``,
    ``upper = G(theta^-)``, which pin ``F_v`` down everywhere.

    Parameters
    ----------
    alpha : array, shape (m,)
        Diagonal of ``T_m``.
    beta : array, shape (m,)
        Off-diagonal of ``T_m`` followed by the final residual norm ``beta_m``.
    interval : (float, float), optional
        Spectrum ends ``(a, b)``; only used to place Radau rules in the end gaps
        ``(a, theta_1)`` and ``(theta_m, b)`` (default: the Ritz values minus / plus
        their residual norms).
    rules : int
        Gauss-Radau rules placed by importance; gap ends next to converged Ritz values
        get one more each, outside this budget (none at all when ``beta_m = 0``).

    Returns
    -------
    points, lower, upper : array, shape (p,)
        Points in ascending order and the CDF brackets there.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim != 1 or alpha.size < 1 or beta.shape != alpha.shape:
        raise ValueError(
            f"need alpha and beta of shape (m,) with m >= 1 (beta ending in the final "
            f"residual norm), got {alpha.shape} and {beta.shape}"
        )
    nodes, weights, vectors = tridiagonal_to_quadrature(alpha, beta[:-1])
    cdf = np.concatenate([[0.0], np.cumsum(weights)])
    beta_m = float(beta[-1])
    if beta_m == 0:
        return nodes, cdf[1:], cdf[:-1]
    points, lower, upper = [nodes], [cdf[:-1]], [cdf[1:]]
    last = vectors[-1]  # last components of the eigenvectors of T_m
    residuals = beta_m * np.abs(last)  # Ritz residual norms |A y_j - theta_j y_j|
    if interval is None:
        interval = (nodes[0] - residuals[0], nodes[-1] + residuals[-1])
    targets = _radau_targets(nodes, weights, residuals, interval, max(int(rules), 0))
    scale = max(abs(interval[0]), abs(interval[1]), interval[1] - interval[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        for xi in targets:
            # s puts xi among the eigenvalues of T~(s): the secular equation
            # s = xi - beta_m^2 sum_j U[m-1, j]^2 / (xi - theta_j).
            s = xi - beta_m**2 * np.sum(last**2 / (xi - nodes))
            if not abs(s) <= 1e4 * scale:  # NaN, inf, or so large that rounding would tell
                continue
            radau_nodes, radau_vectors = eigh_tridiagonal(np.append(alpha, s), beta)
            radau_cdf = np.cumsum(radau_vectors[0] ** 2)
            points.append(radau_nodes)
            lower.append(radau_cdf - radau_vectors[0] ** 2)
            upper.append(radau_cdf)
    points, lower, upper = (np.concatenate(x) for x in (points, lower, upper))
    order = np.argsort(points, kind="stable")
    return points[order], lower[order], upper[order]


def _cell_brackets(
    points: np.ndarray, lower: np.ndarray, upper: np.ndarray, left: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of a CDF on cells ``[left, right)`` from point brackets (ascending points).

    Returns
    -------
    low, high : array, shape (cells,)
        ``max lower`` over points ``<= left`` (0 if none) and ``min upper`` over points
        ``>= right`` (1 if none).
    """
    running_max = np.maximum.accumulate(lower)
    running_min = np.minimum.accumulate(upper[::-1])[::-1]
    i = np.searchsorted(points, left, side="right") - 1
    j = np.searchsorted(points, right, side="left")
    low = np.where(i >= 0, running_max[np.maximum(i, 0)], 0.0)
    high = np.where(j < points.size, running_min[np.minimum(j, points.size - 1)], 1.0)
    return low, high


# ----------------------------------------------------------------------------- probe part
def _level_grid(dim: int) -> np.ndarray:
    """Levels ``1 <= k <= n - 1`` of the union bound: dense near both ends, then sparse.

    Returns
    -------
    array of int64, shape (g,)
        Ascending levels, symmetric under ``k -> n - k``.
    """
    half = dim // 2
    if half < 1:
        return np.zeros(0, dtype=np.int64)
    dense = np.arange(1, min(DENSE_LEVELS, half) + 1, dtype=np.float64)
    sparse = [dense]
    j = dense[-1]
    while j < half:  # about 4 sqrt(n) / LEVEL_STEP levels in all, 64 per iteration
        block = j + max(1.0, LEVEL_STEP * math.sqrt(j)) * np.arange(1, 65)
        sparse.append(np.floor(block))
        j = block[-1]
    js = np.unique(np.concatenate(sparse).astype(np.int64))
    js = js[js <= half]
    return np.unique(np.concatenate([js, dim - js]))


def _beta_quantile_low(a: np.ndarray, b: np.ndarray, level: np.ndarray) -> np.ndarray:
    """``x`` with ``P(Beta(a, b) < x) <= level`` (checked with the forward function)."""
    x = betaincinv(a, b, level)
    for _ in range(200):
        bad = betainc(a, b, x) > level
        if not bad.any():
            return x
        x = np.where(bad, x * (1 - 1e-9) - 1e-300, x)
        x = np.maximum(x, 0.0)
    raise FloatingPointError("could not certify a Beta quantile; scipy.special is inaccurate")


def _lower_level(a: np.ndarray, b: np.ndarray, level: np.ndarray, average: bool) -> np.ndarray:
    """Lower bound ``l`` on ``Phi`` at failure probability ``level``.

    One probe (``average`` False): ``Phi ~ Beta(a, b)`` and ``l`` is its ``level``-quantile.
    Several probes: ``Phi`` is an average dominated in convex order by ``W ~ Beta(a, b)``
    and ``l = x - E(x - W)_+ / level`` for ``x`` near the ``level``-quantile of ``W``
    (Markov's inequality on ``(x - Phi)_+``, valid for any ``x``).
    """
    x = _beta_quantile_low(a, b, level)
    if not average:
        return x
    shortfall = x * betainc(a, b, x) - a / (a + b) * betainc(a + 1, b, x)
    return x - np.maximum(shortfall, 0.0) / level


@functools.lru_cache(maxsize=32)
def cdf_levels(dim: int, probes: int, confidence: float) -> tuple[np.ndarray, ...]:
    """Brackets of the probe-averaged CDF at the levels of the true CDF.

    With probability at least ``confidence`` over ``probes`` independent Gaussian probes,
    for every returned level ``k`` the probe average of ``Phi_p(k)`` (the probe measure's
    mass on the ``k`` smallest eigenvalues, see the module docstring) lies in
    ``[lower, upper]``; levels ``0`` and ``n`` are exact (``Phi = 0`` and ``1``). Cost:
    ``O(sqrt(n))`` incomplete-beta evaluations; results are cached.

    Parameters
    ----------
    dim : int
        Operator dimension ``n``.
    probes : int
        Number of probes ``P`` averaged.
    confidence : float
        In ``(0, 1)``.

    Returns
    -------
    levels : array of int64, shape (g,)
        Ascending, from ``0`` to ``n``.
    lower, upper : array, shape (g,)
        Read-only brackets of the probe-averaged ``Phi`` at each level.
    """
    dim = check_positive_int("dim", dim)
    probes = check_positive_int("probes", probes)
    confidence = _check_confidence(confidence)
    grid = _level_grid(dim)
    lower = upper = np.zeros(0)
    if grid.size:
        j = np.minimum(grid, dim - grid).astype(np.float64)
        share = j**-LEVEL_EXPONENT
        # each level fails on either side with probability (1 - confidence) * share / 2
        level = (1 - confidence) * share / share.sum() / 2
        a, b = probes * grid / 2.0, probes * (dim - grid) / 2.0
        lower = _lower_level(a, b, level, probes > 1)
        upper = 1 - _lower_level(b, a, level, probes > 1)  # 1 - Phi has the mirrored law
    levels = np.concatenate([[0], grid, [dim]]).astype(np.int64)
    lower = np.clip(np.concatenate([[0.0], lower, [1.0]]), 0.0, 1.0)
    upper = np.clip(np.concatenate([[0.0], upper, [1.0]]), 0.0, 1.0)
    for array in (levels, lower, upper):
        array.flags.writeable = False
    return levels, lower, upper


def _admissible(
    levels: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    dim: int,
    low: np.ndarray,
    high: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Range ``[q_min, q_max]`` of ``F = k / n`` compatible with ``Fbar`` in ``[low, high]``.

    Level ``k`` with ``K_g <= k < K_{g+1}`` has ``Phi(k) >= lower_g``; with
    ``K_{g-1} < k <= K_g`` it has ``Phi(k) <= upper_g``. So ``q_max`` is the largest
    ``K_{g+1} - 1`` (or ``n``) over ``g`` with ``lower_g <= high``, and ``q_min`` the
    smallest ``K_{g-1} + 1`` (or ``0``) over ``g`` with ``upper_g >= low``.

    Returns
    -------
    q_min, q_max : array, shape (cells,)
    """
    last = np.append(levels[1:] - 1, dim)
    order = np.argsort(lower, kind="stable")
    best = np.maximum.accumulate(last[order])
    i = np.searchsorted(lower[order], high + TOLERANCE, side="right") - 1
    q_max = np.where(i >= 0, best[np.maximum(i, 0)], 0) / dim
    first = np.insert(levels[:-1] + 1, 0, 0)
    order = np.argsort(-upper, kind="stable")
    best = np.minimum.accumulate(first[order])
    i = np.searchsorted(-upper[order], -(low - TOLERANCE), side="right") - 1
    q_min = np.where(i >= 0, best[np.maximum(i, 0)], dim) / dim
    return q_min, q_max


# ----------------------------------------------------------------------------- the bound
def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return confidence


def _check_run(
    alpha: np.ndarray, beta: np.ndarray, dim: int, lengths: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(alpha, beta, lengths)`` as float64 / int64 arrays of 2-D / 1-D shape."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim == 1:
        alpha, beta = alpha[None], beta.reshape(1, -1) if beta.ndim == 1 else beta
    if alpha.ndim != 2 or beta.shape != alpha.shape or alpha.shape[1] < 1:
        raise ValueError(
            "alpha and beta must both have shape (probes, m) as stored by "
            f"LanczosResult (beta[p, lengths[p] - 1] the final residual norm), got "
            f"{alpha.shape} and {beta.shape}"
        )
    probes, steps = alpha.shape
    dim = check_positive_int("dim", dim)
    if dim < steps:
        raise ValueError(
            f"dim ({dim}) is smaller than the Lanczos steps m ({steps}): a Krylov space has "
            "at most dim dimensions; pass the operator dimension"
        )
    if lengths is None:
        lengths = np.full(probes, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (probes,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers of shape ({probes},), got {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > steps:
        raise ValueError(f"lengths must lie in 1..{steps}, got {lengths.tolist()}")
    for p, m in enumerate(lengths):
        if not (np.isfinite(alpha[p, :m]).all() and np.isfinite(beta[p, :m]).all()):
            raise ValueError(f"alpha / beta of probe {p} contain NaN or inf in the first {m}")
        if (beta[p, :m] < 0).any():
            raise ValueError(f"beta of probe {p} has negative entries; norms are >= 0")
    return alpha, beta, lengths.astype(np.int64)


def posterior_bound(
    alpha: np.ndarray,
    beta: np.ndarray,
    dim: int,
    confidence: float = 0.95,
    interval: tuple[float, float] | None = None,
    *,
    lengths: np.ndarray | None = None,
    rules: int = RULES,
) -> PosteriorBound:
    """A-posteriori bound on the Wasserstein-1 error of an SLQ run.

    The estimate is plain SLQ: the probe average of the Gauss quadratures of the
    tridiagonals (weights ``U[0, j]**2``); weights changed afterwards (e.g. deflated ones)
    are not covered. See the module docstring for the derivation and its assumptions.
    Cost per probe:
    ``rules`` symmetric tridiagonal eigenproblems of size ``m + 1``; the probe part costs
    ``O(sqrt(n))`` incomplete-beta evaluations once per ``(n, probes, confidence)``.

    Parameters
    ----------
    alpha, beta : array, shape (probes, m)
        Diagonals and off-diagonals of the tridiagonals as stored by
        :class:`hessnb.linalg.lanczos.LanczosResult`: ``beta[p, lengths[p] - 1]`` is the
        final residual norm (0 at a breakdown) and entries past ``lengths[p]`` are
        ignored. Shape ``(m,)`` is one probe.
    dim : int
        Operator dimension ``n >= m``.
    confidence : float
        Probability over the Gaussian probes with which the bound holds, in ``(0, 1)``.
    interval : (float, float), optional
        Ends ``(a, b)`` of an interval known to contain the spectrum. Default: the
        extreme Ritz values over all probes minus / plus their residual norms (assumes the
        extreme Ritz values approximate the extreme eigenvalues).
    lengths : array of int, shape (probes,), optional
        Lanczos steps taken per probe (default: ``m`` for all).
    rules : int
        Gauss-Radau rules per probe in the Lanczos part (more: tighter and slower; see
        :func:`quadrature_cdf_bounds`).

    Returns
    -------
    PosteriorBound

    Raises
    ------
    ValueError
        On shape mismatches, ``dim < m``, ``confidence`` outside ``(0, 1)``, non-finite
        data, or an ``interval`` that does not contain every Ritz value.
    """
    confidence = _check_confidence(confidence)
    alpha, beta, lengths = _check_run(alpha, beta, dim, lengths)
    rules = int(rules)
    if rules < 0:
        raise ValueError(f"rules must be >= 0, got {rules}")
    runs = [(alpha[p, :m], beta[p, :m]) for p, m in enumerate(lengths)]
    quadratures = [tridiagonal_to_quadrature(a, b[:-1]) for a, b in runs]
    lows = [q[0][0] for q in quadratures]
    highs = [q[0][-1] for q in quadratures]
    ritz_range = float(max(highs) - min(lows))
    if interval is None:
        ends = [
            (q[0][0] - b[-1] * abs(q[2][-1, 0]), q[0][-1] + b[-1] * abs(q[2][-1, -1]))
            for q, (_, b) in zip(quadratures, runs, strict=True)
        ]
        pad = TOLERANCE * max(abs(min(lows)), abs(max(highs)))  # rounding of Ritz values
        interval = (min(e[0] for e in ends) - pad, max(e[1] for e in ends) + pad)
    a_end, b_end = (float(x) for x in interval)
    if not (math.isfinite(a_end) and math.isfinite(b_end)):
        raise ValueError(f"interval must be finite, got {interval}")
    if a_end > min(lows) or b_end < max(highs):
        raise ValueError(
            f"interval [{a_end:g}, {b_end:g}] must contain every Ritz value (they lie in "
            f"the spectrum), which span [{min(lows):g}, {max(highs):g}]"
        )
    brackets = [quadrature_cdf_bounds(a, b, (a_end, b_end), rules) for a, b in runs]
    # Cells: every Gauss node (so Ghat is constant on each) and the Radau points in (a, b),
    # evenly thinned beyond MAX_CELLS (any grid gives a valid bound; finer is tighter).
    extra = np.unique(np.concatenate([pts for pts, *_ in brackets]))
    extra = extra[(extra > a_end) & (extra < b_end)]
    extra = extra[:: max(1, math.ceil(extra.size / MAX_CELLS))]
    grid = np.unique(np.concatenate([[a_end, b_end], *(q[0] for q in quadratures), extra]))
    left, right = grid[:-1], grid[1:]
    low, high, ghat = (np.zeros(left.size) for _ in range(3))
    for (pts, lo, hi), (nodes, weights, _) in zip(brackets, quadratures, strict=True):
        cell_low, cell_high = _cell_brackets(pts, lo, hi, left, right)
        low += cell_low
        high += cell_high
        ghat += np.concatenate([[0.0], np.cumsum(weights)])[
            np.searchsorted(nodes, left, side="right")
        ]
    probes = len(runs)
    low, high, ghat = low / probes, high / probes, ghat / probes
    width = right - left
    lanczos = float(np.sum(width * np.maximum(high - ghat, ghat - low).clip(min=0)))
    levels, level_low, level_high = cdf_levels(dim, probes, confidence)
    q_min, q_max = _admissible(levels, level_low, level_high, dim, low, high)
    absolute = float(np.sum(width * np.maximum(q_max - ghat, ghat - q_min).clip(min=0)))
    return PosteriorBound(absolute, lanczos, (a_end, b_end), ritz_range, confidence)
