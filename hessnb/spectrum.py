"""Stochastic Lanczos quadrature: probes x Lanczos -> an ``xarray.Dataset``.

The dataset stores what the estimator computed (quadrature nodes and weights per probe,
top Ritz values and residuals, a trace estimate, the a-priori accuracy bound), never a
smoothed picture: densities are derived on demand by the ``ds.hess`` accessor.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from hessnb.lanczos import LanczosResult, check_positive_int, check_steps, lanczos_block
from hessnb.quadrature import tridiagonal_to_quadrature, wasserstein_bound

__all__ = ["MatrixOperator", "SpectrumEstimate", "estimate", "probe_vectors", "spectrum"]

CONFIDENCE = 0.95


class LinearOperator(Protocol):
    """What SLQ needs: a dimension and a block product ``H @ V`` on float64 ``(n, k)``."""

    n_params: int
    device: torch.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor: ...


class MatrixOperator:
    """An explicit symmetric matrix as an operator (tests, teaching, small examples).

    Parameters
    ----------
    matrix : array or tensor, shape (n, n)
        Symmetric; converted to float64.
    """

    def __init__(self, matrix: torch.Tensor | np.ndarray) -> None:
        m = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
        m = m.to(torch.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(m.shape)}")
        if not torch.allclose(m, m.T, rtol=1e-10, atol=1e-12 * float(m.abs().max() + 1)):
            raise ValueError("the matrix is not symmetric; a Hessian must be (use (A + A.T) / 2)")
        self.matrix = m
        self.n_params = m.shape[0]
        self.device = m.device

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A @ V`` for ``V`` of shape ``(n, k)``."""
        return self.matrix @ vectors.to(self.matrix.device, torch.float64)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A @ v`` for ``v`` of shape ``(n,)``."""
        return self.matmat(v.reshape(-1, 1))[:, 0]


@dataclass
class SpectrumEstimate:
    """Raw results of :func:`estimate` (numpy float64 unless noted).

    Attributes
    ----------
    nodes, weights : array, shape (probes, steps)
        Quadrature per probe; NaN nodes / zero weights past a probe's breakdown.
    lengths : array, shape (probes,)
        Lanczos steps taken per probe.
    top_eigenvalues, top_residuals : array, shape (top_k,)
        Largest Ritz values of probe 0 (descending) and ``||H u - theta u||`` for each.
    top_vectors : torch.Tensor, shape (n_params, top_k), or None
        Ritz vectors (unit norm), kept when asked for.
    n_params : int
    w1_bound : float
        A-priori Wasserstein-1 bound relative to the spectral range (95 % confidence).
    """

    nodes: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    n_params: int
    w1_bound: float
    top_vectors: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def traces(self) -> np.ndarray:
        """Per-probe trace estimates ``n sum_j tau_j theta_j``, shape (probes,)."""
        return self.n_params * np.nansum(self.weights * np.nan_to_num(self.nodes), axis=1)


def probe_vectors(dim: int, probes: int, seed: int) -> torch.Tensor:
    """The Gaussian start vectors for ``seed``: ``(dim, probes)`` float64, on the CPU.

    The same seed gives the same vectors on every device and at every training step.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(probes, dim, generator=generator, dtype=torch.float64).T


def _check_settings(lanczos_steps: int, probes: int, top_k: int, dim: int) -> None:
    check_positive_int("probes", probes)
    check_positive_int("top_k", top_k)
    check_steps(dim, lanczos_steps, name="lanczos_steps")
    if top_k > lanczos_steps:
        raise ValueError(
            f"top_k={top_k} exceeds lanczos_steps={lanczos_steps}: Lanczos gives at most one "
            "Ritz value per step; lower top_k or raise lanczos_steps"
        )


def _as_operator(op: Any) -> LinearOperator:
    if isinstance(op, (np.ndarray, torch.Tensor)):
        return MatrixOperator(op)
    if not hasattr(op, "matmat") or not hasattr(op, "n_params"):
        raise TypeError(
            f"{type(op).__name__} is not an operator: pass a hessnb.HessianOperator, a "
            "symmetric matrix, or an object with n_params and matmat(V)"
        )
    return op


def _ritz(result: LanczosResult, top_k: int, keep_vectors: bool):
    """Top Ritz values, residual norms and (optionally) vectors of probe 0."""
    m = int(result.lengths[0])
    alpha, beta = result.tridiagonal(0)
    theta, _, u = tridiagonal_to_quadrature(alpha.numpy(), beta.numpy())
    order = np.argsort(theta)[::-1][: min(top_k, m)]
    values = np.full(top_k, np.nan)
    residuals = np.full(top_k, np.nan)
    values[: order.size] = theta[order]
    # ||H y - theta y|| = |beta_m| |u_{m,j}| for the Ritz vector y = Q u (exact with full
    # re-orthogonalisation; beta_m is the norm of the last residual, zero at breakdown).
    residuals[: order.size] = abs(float(result.beta[0, m - 1])) * np.abs(u[-1, order])
    vectors = None
    if keep_vectors and result.basis is not None:
        q = result.basis.vectors(0, m)  # (m, n) on the basis' device
        coeff = torch.as_tensor(u[:, order].copy(), dtype=torch.float64, device=q.device)
        vectors = (q.T @ coeff).to(result.basis.device)
        if vectors.shape[1] < top_k:
            pad = torch.full(
                (vectors.shape[0], top_k - vectors.shape[1]),
                float("nan"),
                dtype=torch.float64,
                device=vectors.device,
            )
            vectors = torch.cat([vectors, pad], dim=1)
    return values, residuals, vectors


def estimate(
    op: Any,
    lanczos_steps: int = 90,
    probes: int = 1,
    seed: int = 0,
    top_k: int = 10,
    *,
    basis: str = "device",
    progress: bool = True,
    keep_vectors: bool = False,
) -> SpectrumEstimate:
    """Run SLQ and return raw arrays (see :func:`spectrum` for the dataset form).

    All probes run in lockstep through ``op.matmat``: one pass over the data per Lanczos
    step serves every probe.
    """
    op = _as_operator(op)
    dim = int(op.n_params)
    _check_settings(lanczos_steps, probes, top_k, dim)
    start = probe_vectors(dim, probes, seed)
    bar = tqdm(
        total=lanczos_steps,
        desc=f"Lanczos ({probes} probe{'s' * (probes > 1)})",
        unit="step",
        disable=not progress,
        leave=False,
    )
    reuse = getattr(op, "reuse_graphs", contextlib.nullcontext)
    try:
        with reuse():  # the parameters are fixed during one Lanczos run
            result = lanczos_block(
                op.matmat,
                dim,
                lanczos_steps,
                start=start,
                basis=basis,
                device=getattr(op, "device", None),
                callback=lambda _j: bar.update(1),
            )
    finally:
        bar.close()
    nodes = np.full((probes, lanczos_steps), np.nan)
    weights = np.zeros((probes, lanczos_steps))
    for p in range(probes):
        alpha, beta = result.tridiagonal(p)
        theta, tau, _ = tridiagonal_to_quadrature(alpha.numpy(), beta.numpy())
        nodes[p, : theta.size], weights[p, : tau.size] = theta, tau
    try:
        values, residuals, vectors = _ritz(result, top_k, keep_vectors)
    finally:
        if result.basis is not None:  # Ritz vectors are a new tensor: the basis can go
            result.basis.close()
    return SpectrumEstimate(
        nodes=nodes,
        weights=weights,
        lengths=result.lengths.numpy(),
        top_eigenvalues=values,
        top_residuals=residuals,
        n_params=dim,
        w1_bound=wasserstein_bound(lanczos_steps, probes, dim, CONFIDENCE),
        top_vectors=vectors,
        settings={"lanczos_steps": lanczos_steps, "probes": probes, "seed": seed, "top_k": top_k},
    )


def provenance(op: Any) -> dict[str, Any]:
    """Attributes describing the operator (model, data size, dtype, BN mode)."""
    from hessnb import __version__

    attrs: dict[str, Any] = {"hessnb_version": __version__}
    model = getattr(op, "model", None)
    if model is not None:
        attrs["model"] = type(model).__name__
        attrs["bn_mode"] = op.bn_mode
        attrs["has_batchnorm"] = int(op.has_batchnorm)
        attrs["n_examples"] = int(op.n_examples)
        attrs["dtype"] = str(op.dtype).replace("torch.", "")
    else:
        attrs["model"] = type(op).__name__
    return attrs


def to_dataset(est: SpectrumEstimate, attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """Package a :class:`SpectrumEstimate` as the dataset schema of ``hessnb``."""
    probes, steps = est.nodes.shape
    top_k = est.top_eigenvalues.size
    traces = est.traces
    stderr = float(np.std(traces, ddof=1) / math.sqrt(probes)) if probes > 1 else np.nan
    ds = xr.Dataset(
        {
            "nodes": (
                ("probe", "node"),
                est.nodes,
                {"long_name": "quadrature node (Ritz value)", "units": "1"},
            ),
            "weights": (
                ("probe", "node"),
                est.weights,
                {"long_name": "quadrature weight", "units": "1"},
            ),
            "lanczos_length": (
                ("probe",),
                est.lengths.astype(np.int64),
                {"long_name": "Lanczos steps taken"},
            ),
            "top_eigenvalues": (
                ("k",),
                est.top_eigenvalues,
                {"long_name": "top Hessian eigenvalue (Ritz value)", "units": "1"},
            ),
            "top_residuals": (
                ("k",),
                est.top_residuals,
                {"long_name": "Ritz residual norm ||Hu - theta u||", "units": "1"},
            ),
            "trace": ((), float(traces.mean()), {"long_name": "Hessian trace estimate"}),
            "trace_stderr": (
                (),
                stderr,
                {"long_name": "standard error of the trace estimate over probes"},
            ),
            "w1_bound": (
                (),
                est.w1_bound,
                {
                    "long_name": "a-priori Wasserstein-1 bound relative to the spectral range",
                    "confidence": CONFIDENCE,
                    "reference": "Chen, Trogdon & Ubaru (2021)",
                },
            ),
            "n_params": ((), np.int64(est.n_params), {"long_name": "number of parameters"}),
        },
        coords={"probe": np.arange(probes), "node": np.arange(steps), "k": np.arange(1, top_k + 1)},
    )
    ds.attrs.update({f"{k}": v for k, v in est.settings.items()})
    ds.attrs["n_params"] = int(est.n_params)
    ds.attrs.update(attrs or {})
    return ds


def spectrum(
    op: Any,
    lanczos_steps: int = 90,
    probes: int = 1,
    seed: int = 0,
    top_k: int = 10,
    *,
    basis: str = "device",
    progress: bool = True,
) -> xr.Dataset:
    """Estimate the Hessian eigenvalue density with stochastic Lanczos quadrature.

    Parameters
    ----------
    op : HessianOperator, symmetric matrix, or operator
        Anything with ``n_params`` and ``matmat(V)``.
    lanczos_steps : int
        Lanczos steps ``m`` per probe (float64, full re-orthogonalisation).
    probes : int
        Gaussian probe vectors ``P``, run together (one data pass per step for all).
    seed : int
        Seed of the probe vectors (the same seed gives the same probes).
    top_k : int
        Number of top Ritz values (and residuals) to keep.
    basis : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis is stored.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        ``nodes``, ``weights`` (probe, node); ``top_eigenvalues``, ``top_residuals`` (k);
        ``trace``, ``trace_stderr``, ``w1_bound``, ``n_params``; provenance in ``attrs``.
        Use ``ds.hess.density()`` for the smoothed density.

    Examples
    --------
    >>> import numpy as np, hessnb
    >>> ds = hessnb.spectrum(np.diag(np.arange(1.0, 51.0)), lanczos_steps=50, top_k=3,
    ...                      progress=False)
    >>> ds.top_eigenvalues.values.round(6)
    array([50., 49., 48.])
    """
    op = _as_operator(op)  # provenance describes the operator, not the array it came from
    est = estimate(op, lanczos_steps, probes, seed, top_k, basis=basis, progress=progress)
    return to_dataset(est, provenance(op))
