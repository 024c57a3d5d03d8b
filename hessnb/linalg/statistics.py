"""Statistics of one spectrum read off its quadrature: negative part, bulk edge, outliers.

The outlier rule
----------------
Take the Ritz values of probe 0 (the probe that gives ``top_eigenvalues``) in descending
order, ``theta_1 >= theta_2 >= ... >= theta_m``. The value ``theta_i`` stands **isolated**
when the gap below it is large against the width of everything below it:

    theta_i - theta_(i+1) > GAP_RATIO * (theta_(i+1) - theta_m),    GAP_RATIO = 0.1,

for ``i <= m // 3`` (deep in the bulk the width below shrinks to nothing and the ratio
loses meaning). ``n_outliers`` is the largest such ``i`` (0 when there is none): the top
``i`` Ritz values lie above a gap of at least a tenth of the bulk's width. ``bulk_edge``
is ``theta_(n_outliers + 1)``, the top of the bulk, and ``outlier_gap = lambda_1 /
bulk_edge`` (NaN when the bulk edge is not positive).

Negative mass
-------------
``negative_mass`` is the quadrature weight on Ritz values below ``-sigma``, averaged over
probes, with ``sigma = sqrt(1e-5 max(1, range))`` the paper's kernel width for that
spectrum (:func:`hessnb.linalg.quadrature.default_sigma`). Network Hessians put most of
their weight in a bulk at zero that Lanczos represents by a node within rounding of
zero; counting ``theta < 0`` strictly would flip between about 0 and about 1 with the
sign of that node. Eigenvalues closer to zero than one kernel width are not resolved as
negative.

Extreme Ritz values converge first (their residuals say how well), so isolated
eigenvalues are found with one probe; the Ritz values inside the bulk are quadrature
nodes, dense where the spectrum is, which is what makes the gap test meaningful.
"""

from __future__ import annotations

import numpy as np

from hessnb.linalg.quadrature import default_sigma

__all__ = ["GAP_RATIO", "STATISTICS", "spectrum_statistics"]

#: An isolated Ritz value stands above a gap of at least this fraction of the width below.
GAP_RATIO = 0.1
#: Names of the statistics, as stored in datasets (see ``hessnb.schema``).
STATISTICS = ("lambda_min", "negative_mass", "bulk_edge", "n_outliers", "outlier_gap")


def _outliers(theta: np.ndarray) -> int:
    """Number of isolated top values of one probe's finite Ritz values (descending)."""
    m = theta.size
    if m < 3:
        return 0
    gaps = theta[:-1] - theta[1:]
    below = theta[1:] - theta[-1]
    limit = max(1, m // 3)
    isolated = np.flatnonzero(gaps[:limit] > GAP_RATIO * below[:limit])
    return int(isolated[-1] + 1) if isolated.size else 0


def spectrum_statistics(nodes: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """``lambda_min``, ``negative_mass``, ``bulk_edge``, ``n_outliers``, ``outlier_gap``.

    Parameters
    ----------
    nodes, weights : array, shape (probes, m)
        Quadrature per probe (NaN nodes and zero weights past a breakdown are ignored).

    Returns
    -------
    dict of float
        ``lambda_min``: the smallest Ritz value over all probes. ``negative_mass``: the
        quadrature weight on nodes below ``-sigma``, averaged over probes. ``bulk_edge``,
        ``n_outliers`` and ``outlier_gap``: see the module docstring (probe 0).
    """
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    finite = np.isfinite(nodes)
    if not finite[0].any():
        raise ValueError("probe 0 holds no finite Ritz value")
    tolerance = default_sigma(nodes)
    negative = np.where(finite & (nodes < -tolerance), weights, 0.0).sum(axis=1)
    present = np.where(finite, weights, 0.0).sum(axis=1) > 0
    theta = np.sort(nodes[0][finite[0]])[::-1]
    count = _outliers(theta)
    edge = float(theta[count]) if count < theta.size else float(theta[-1])
    top = float(theta[0])
    return {
        "lambda_min": float(np.nanmin(np.where(finite, nodes, np.nan))),
        "negative_mass": float(negative[present].mean()),
        "bulk_edge": edge,
        "n_outliers": float(count),
        "outlier_gap": top / edge if edge > 0 else float("nan"),
    }
