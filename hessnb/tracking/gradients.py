"""Gradient-projection statistics against the top Hessian eigenvectors.

With ``u_1 .. u_k`` orthonormal (top Ritz vectors) and ``g`` the full-dataset gradient:
``grad_fraction = ||P_k g||^2 / ||g||^2 = sum_i (u_i . g)^2 / ||g||^2`` and
``grad_overlap[i] = (u_i . g)^2 / ||g||^2`` (Gur-Ari et al. 2018; PAPER.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["cosine", "projection_statistics"]


def projection_statistics(
    vectors: torch.Tensor, direction: torch.Tensor
) -> tuple[float, np.ndarray, float]:
    """How much of ``direction`` lies in the span of orthonormal ``vectors``.

    Parameters
    ----------
    vectors : torch.Tensor, shape (n, k)
        Orthonormal columns (NaN columns, e.g. missing Ritz vectors, are ignored).
    direction : torch.Tensor, shape (n,)
        The gradient (or an optimizer's update direction).

    Returns
    -------
    fraction : float
        ``||P_k d||^2 / ||d||^2`` in [0, 1]; NaN when ``d`` is zero.
    overlaps : numpy.ndarray, shape (k,)
        ``(u_i . d)^2 / ||d||^2`` per column (NaN for NaN columns or zero ``d``).
    norm : float
        ``||d||``.
    """
    if vectors.ndim != 2 or direction.ndim != 1 or vectors.shape[0] != direction.shape[0]:
        raise ValueError(
            f"need vectors (n, k) and a direction (n,), got {tuple(vectors.shape)} and "
            f"{tuple(direction.shape)}"
        )
    d = direction.to(torch.float64)
    v = vectors.to(device=d.device, dtype=torch.float64)
    norm2 = float(d @ d)
    valid = torch.isfinite(v).all(dim=0)
    coeffs = torch.full((v.shape[1],), float("nan"), dtype=torch.float64)
    coeffs[valid.cpu()] = (v[:, valid].T @ d).cpu()
    if norm2 == 0.0:
        return float("nan"), np.full(v.shape[1], np.nan), 0.0
    overlaps = (coeffs**2 / norm2).numpy()
    fraction = float(np.nansum(overlaps)) if valid.any() else float("nan")
    return min(fraction, 1.0), overlaps, math.sqrt(norm2)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two flat vectors (NaN if either is zero)."""
    a, b = a.to(torch.float64), b.to(device=a.device, dtype=torch.float64)
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")
