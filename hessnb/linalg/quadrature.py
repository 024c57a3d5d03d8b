"""Gaussian quadrature from Lanczos tridiagonals, and smoothed spectral densities.

All functions are pure numpy/scipy in float64. Nodes may be padded with NaN (and weight 0)
where a probe stopped early; every function here ignores such entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.special import logsumexp
from scipy.stats import wasserstein_distance as _scipy_w1

__all__ = [
    "check_sigma",
    "default_grid",
    "default_sigma",
    "gaussian_density",
    "grid_bounds",
    "log_gaussian_density",
    "moments",
    "spectral_measure",
    "tridiagonal_to_quadrature",
    "wasserstein_bound",
    "wasserstein_distance",
]

#: Relative kernel variance of the paper's reference code: sigma^2 = 1e-5 * range.
SIGMA2_PER_RANGE = 1e-5
GRID_POINTS = 10_000


def tridiagonal_to_quadrature(
    alpha: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, weights and eigenvectors of a symmetric tridiagonal matrix.

    Parameters
    ----------
    alpha : array, shape (m,)
        Diagonal of ``T_m``.
    beta : array, shape (m - 1,)
        Off-diagonal of ``T_m``.

    Returns
    -------
    nodes : array, shape (m,)
        Ritz values ``theta_j`` in ascending order.
    weights : array, shape (m,)
        ``tau_j = U[0, j]**2``; they sum to 1.
    vectors : array, shape (m, m)
        Eigenvectors ``U`` of ``T_m`` (columns).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim != 1 or beta.shape != (max(alpha.size - 1, 0),):
        raise ValueError(
            f"need alpha of shape (m,) and beta of shape (m-1,), got {alpha.shape} and {beta.shape}"
        )
    if alpha.size == 1:
        return alpha.copy(), np.ones(1), np.ones((1, 1))
    nodes, vectors = eigh_tridiagonal(alpha, beta)
    weights = vectors[0] ** 2
    return nodes, weights / weights.sum(), vectors


def _finite(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    mask = np.isfinite(nodes)
    return np.where(mask, nodes, 0.0), np.where(mask, weights, 0.0)


def check_sigma(sigma: float) -> float:
    """``sigma`` as a float, or a ValueError unless it is positive and finite."""
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    return sigma


def default_sigma(nodes: np.ndarray) -> float:
    """Kernel width of the paper's reference code.

    ``sigma = sqrt(1e-5 * max(1, theta_max - theta_min))`` over all finite nodes.
    """
    finite = np.asarray(nodes, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("no finite nodes to choose a kernel width from")
    spread = float(finite.max() - finite.min())
    return math.sqrt(SIGMA2_PER_RANGE * max(1.0, spread))


def grid_bounds(nodes: np.ndarray, sigma: float) -> tuple[float, float]:
    """Ends of a density grid: all finite nodes, padded by ``max(0.01, 6 sigma)`` each side.

    The paper's reference code pads by 0.01; padding by six kernel widths as well keeps
    the whole mass of the outermost Gaussians on the grid, so the density integrates to 1.

    Parameters
    ----------
    nodes : array, any shape
        Quadrature nodes (NaN entries are ignored).
    sigma : float
        Standard deviation of the Gaussian kernel (positive).

    Returns
    -------
    lo, hi : float
        ``min(nodes) - pad`` and ``max(nodes) + pad``.
    """
    finite = np.asarray(nodes, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("no finite nodes to build a grid around")
    pad = max(0.01, 6.0 * check_sigma(sigma))
    return float(finite.min() - pad), float(finite.max() + pad)


def default_grid(nodes: np.ndarray, sigma: float, points: int = GRID_POINTS) -> np.ndarray:
    """A linear grid of ``points`` eigenvalues between the :func:`grid_bounds`.

    Returns
    -------
    array, shape (points,)
    """
    lo, hi = grid_bounds(nodes, sigma)
    return np.linspace(lo, hi, int(points))


def _log_terms(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float, chunk: int
) -> Iterator[np.ndarray]:
    """``log tau_j + log g_sigma(t - theta_j)`` for ``chunk`` nodes at a time.

    Yields arrays of shape ``(..., c, g)``; NaN nodes carry weight 0 (log -inf).
    """
    sigma = check_sigma(sigma)
    nodes, weights = _finite(nodes, weights)
    grid = np.asarray(grid, dtype=np.float64)
    log_norm = math.log(sigma * math.sqrt(2 * math.pi))
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    for lo in range(0, nodes.shape[-1], chunk):
        diff = grid - nodes[..., lo : lo + chunk, None]
        yield log_w[..., lo : lo + chunk, None] - 0.5 * (diff / sigma) ** 2 - log_norm


def log_gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float, chunk: int = 64
) -> np.ndarray:
    """Natural log of the smoothed density, stable far from every node.

    ``log phi(t) = log sum_j tau_j g_sigma(t - theta_j)`` over the last axis of ``nodes``
    (one probe), computed with log-sum-exp so that values like 1e-200 stay finite.

    Parameters
    ----------
    nodes, weights : array, shape (..., m)
    grid : array, shape (g,)
    sigma : float
    chunk : int
        Nodes processed at once (bounds memory to ``chunk x g`` per leading index).

    Returns
    -------
    array, shape (..., g)
    """
    out = None
    for terms in _log_terms(nodes, weights, grid, sigma, chunk):
        part = logsumexp(terms, axis=-2)
        out = part if out is None else np.logaddexp(out, part)
    return out


def gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float, chunk: int = 64
) -> np.ndarray:
    """Smoothed density ``sum_j tau_j g_sigma(t - theta_j)`` on a grid.

    Parameters
    ----------
    nodes, weights : array, shape (..., m)
        Quadrature nodes and weights (NaN nodes are ignored).
    grid : array, shape (g,)
    sigma : float
        Standard deviation of the Gaussian kernel.
    chunk : int
        Nodes processed at once (bounds memory to ``chunk x g`` per leading index).

    Returns
    -------
    array, shape (..., g)
    """
    return sum(
        np.exp(terms).sum(axis=-2) for terms in _log_terms(nodes, weights, grid, sigma, chunk)
    )


def moments(nodes: np.ndarray, weights: np.ndarray, orders: int | list[int]) -> np.ndarray:
    """Quadrature moments ``sum_j tau_j theta_j**k``, estimates of ``tr(H^k) / n``.

    Returns an array of shape ``(..., len(orders))`` (or ``(...)`` for one int order).
    """
    nodes, weights = _finite(nodes, weights)
    ks = np.atleast_1d(np.asarray(orders))
    values = np.stack([(weights * nodes**k).sum(axis=-1) for k in ks], axis=-1)
    return values[..., 0] if np.ndim(orders) == 0 else values


def wasserstein_bound(steps: int, probes: int, dim: int, confidence: float = 0.95) -> float:
    """A-priori Wasserstein-1 bound ``t`` relative to the spectral range.

    From Chen, Trogdon & Ubaru (2021): with ``m >= 12 / t + 1/2`` Lanczos steps and
    ``P >= 4 (n + 2)^-1 t^-2 ln(2 n / eta)`` Gaussian probes, the SLQ spectral measure is
    within ``t (lambda_max - lambda_min)`` of the true one in Wasserstein-1 distance with
    probability at least ``1 - eta``. Solving both for ``t`` and taking the larger:

    ``t = max(12 / (m - 1/2), sqrt(4 ln(2 n / eta) / ((n + 2) P)))``

    Parameters
    ----------
    steps, probes, dim : int
        Lanczos steps ``m``, probes ``P`` and operator dimension ``n``.
    confidence : float
        ``1 - eta``.

    Returns
    -------
    float
        ``t``; multiply by the spectral range for an absolute distance. A value of 1 or
        more is vacuous (any two measures on the range are that close).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    eta = 1 - confidence
    t_steps = 12.0 / (steps - 0.5)
    t_probes = math.sqrt(4.0 * math.log(2.0 * dim / eta) / ((dim + 2) * probes))
    return max(t_steps, t_probes)


def spectral_measure(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe-averaged spectral measure of a quadrature as flat atoms.

    Parameters
    ----------
    nodes, weights : array, shape (m,) or (probes, m)
        Quadrature per probe (weights of each probe sum to 1); NaN nodes and zero weights
        (past a breakdown) are dropped.

    Returns
    -------
    atoms, masses : array, shape (a,)
        Node positions and their masses (summing to 1: each probe carries ``1 / probes``).
    """
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    keep = np.isfinite(nodes) & (weights > 0)
    if not keep.any():
        raise ValueError("the quadrature holds no finite node with positive weight")
    return nodes[keep], weights[keep] / nodes.shape[0]


def wasserstein_distance(
    a: tuple[np.ndarray, np.ndarray] | np.ndarray, b: tuple[np.ndarray, np.ndarray] | np.ndarray
) -> float:
    """Wasserstein-1 distance between two spectral measures, in eigenvalue units.

    Parameters
    ----------
    a, b : (nodes, weights) or array of eigenvalues
        A quadrature (see :func:`spectral_measure`), or exact eigenvalues ``(n,)`` each of
        mass ``1 / n``.

    Returns
    -------
    float
        ``W1(a, b)``; divide by a spectral range for a relative error.
    """

    def atoms(x: tuple[np.ndarray, np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(x, tuple):
            return spectral_measure(*x)
        values = np.asarray(x, dtype=np.float64).ravel()
        return values, np.full(values.size, 1.0 / values.size)

    (xa, wa), (xb, wb) = atoms(a), atoms(b)
    return float(_scipy_w1(xa, xb, u_weights=wa, v_weights=wb))
