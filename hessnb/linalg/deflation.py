"""Deflated SLQ: converged top Ritz pairs counted as eigenvalues of weight ``1 / n``.

A Gaussian probe ``v`` puts the random weight ``(u_i . v)^2 / |v|^2`` (mean ``1 / n``,
relative spread ``sqrt(2)``) on every eigenvalue ``lambda_i``, so a few outliers far
above the bulk carry a large share of the quadrature's Wasserstein error. Once Lanczos has
converged on such an outlier (its Ritz residual is tiny), its eigenvalue is known: the
deflated estimate gives it its exact weight ``1 / n`` and spreads the remaining
``1 - c / n`` over the other Ritz values in proportion to their weights, which is the
probe's spectral measure restricted to the complement of the converged eigenvectors.
This reuses the Lanczos run already made (no extra operator products), in the spirit of
variance-reduced SLQ (Bhattacharjee, Jayaram, Musco, Musco & Ray, 2024).

The rule, per probe, from the top Ritz value down (stopping at the first failure):

* the Ritz residual ``|beta_m U[m-1, j]|`` is at most ``tol * max_j |theta_j|``;
* ``n tau_j <= SIMPLE_LIMIT``: a simple eigenvalue's weight times ``n`` is a
  chi-square(1) variable (divided by ``|v|^2 / n``), which exceeds 23.9 with probability
  1e-6; a larger weight means a multiple eigenvalue (or a cluster), which must keep the
  weight the probe gave it.

A converged Ritz value with ``n tau_j < GHOST_LIMIT`` (1e-10; a chi-square(1) variable
falls below it with probability 8e-6) is a rounding copy of an eigenvalue already found
(finite-precision Lanczos can add one inside a multiple eigenvalue's eigenspace): it keeps
its negligible weight and the walk goes on below it.

A converged Ritz value is taken to be a simple eigenvalue: Lanczos cannot see
multiplicities, and a double eigenvalue whose weight passes the test is counted once.
When every Ritz value of a probe converges (an invariant subspace), the probe is deflated
only if there are ``n`` of them (the whole spectrum); otherwise it is left as it is. A
probe with nothing converged keeps its plain SLQ weights (``n_deflated`` is 0).
"""

from __future__ import annotations

import numpy as np

from hessnb.validation import check_positive_int

__all__ = ["DEFLATION_TOL", "GHOST_LIMIT", "SIMPLE_LIMIT", "deflate_weights"]

#: Ritz residual, relative to the largest |Ritz value|, below which a pair is converged.
DEFLATION_TOL = 1e-6
#: Largest ``n * tau`` taken for a simple eigenvalue (chi-square(1) upper 1e-6 quantile).
SIMPLE_LIMIT = 23.9
#: ``n * tau`` below which a converged Ritz value is a rounding copy (see the module text).
GHOST_LIMIT = 1e-10
#: Probe weight off the converged Ritz values below which nothing is left to estimate.
REST_MIN = 1e-8


def deflate_weights(
    nodes: np.ndarray,
    weights: np.ndarray,
    residuals: np.ndarray,
    dim: int,
    tol: float = DEFLATION_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Deflated quadrature weights.

    Parameters
    ----------
    nodes, weights : array, shape (probes, m)
        Ritz values and Gauss weights per probe (NaN nodes and zero weights past a
        breakdown).
    residuals : array, shape (probes, m)
        Ritz residual norm ``||H y_j - theta_j y_j||`` of every node.
    dim : int
        Dimension ``n`` of the operator.
    tol : float
        Relative residual tolerance (see :data:`DEFLATION_TOL`).

    Returns
    -------
    weights : array, shape (probes, m)
        Converged top nodes carry ``1 / n``; the others share ``1 - c / n`` in proportion
        to their plain weights. Each probe's weights still sum to 1.
    n_deflated : array, shape (probes,), int64
        ``c``, the number of deflated Ritz values per probe.
    """
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    residuals = np.atleast_2d(np.asarray(residuals, dtype=np.float64))
    if not nodes.shape == weights.shape == residuals.shape:
        raise ValueError(
            f"nodes {nodes.shape}, weights {weights.shape} and residuals {residuals.shape} "
            "must have the same (probes, m) shape"
        )
    dim = check_positive_int("dim", dim)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol}")
    out = weights.copy()
    counts = np.zeros(nodes.shape[0], dtype=np.int64)
    for p in range(nodes.shape[0]):
        valid = np.flatnonzero(np.isfinite(nodes[p]) & (weights[p] > 0))
        if valid.size == 0:
            continue
        theta, tau, res = nodes[p, valid], weights[p, valid], residuals[p, valid]
        scale = np.max(np.abs(theta))
        order = np.argsort(theta)[::-1]
        converged = res[order] <= tol * scale
        ghost = converged & (dim * tau[order] < GHOST_LIMIT)
        ok = converged & (dim * tau[order] <= SIMPLE_LIMIT)
        run = int(np.argmin(ok)) if not ok.all() else ok.size  # the top run of converged
        chosen = valid[order[:run][~ghost[:run]]]
        c = chosen.size
        rest = np.setdiff1d(valid, chosen)
        left = 1.0 - weights[p, chosen].sum()  # the probe's weight off the converged ones
        if c == 0 or (c != dim and left <= REST_MIN):  # nothing found, or an invariant space
            continue
        out[p, chosen] = 1.0 / dim
        out[p, rest] = weights[p, rest] * (1.0 - c / dim) / max(left, REST_MIN)
        counts[p] = c
    return out, counts
