"""Stochastic Lanczos quadrature: probes x Lanczos -> an ``xarray.Dataset``.

:func:`estimate` runs the numerics and returns arrays, :func:`to_dataset` packages them in
the schema of :mod:`hessnb.schema`, :func:`spectrum` does both. The dataset stores what
the estimator computed (quadrature nodes and weights per probe, top Ritz values and
residuals, a trace estimate, the a-priori accuracy bound), never a smoothed picture:
densities are derived on demand by the ``ds.hess`` accessor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from hessnb.linalg.lanczos import LanczosResult, lanczos_block
from hessnb.linalg.operator import Operator, as_operator
from hessnb.linalg.quadrature import tridiagonal_to_quadrature, wasserstein_bound
from hessnb.linalg.statistics import spectrum_statistics
from hessnb.schema import VARIABLES, variable_attrs
from hessnb.settings import SLQSettings
from hessnb.version import __version__

__all__ = ["CONFIDENCE", "SpectrumEstimate", "estimate", "probe_vectors", "spectrum", "to_dataset"]

#: Confidence of the a-priori Wasserstein-1 bound stored as ``w1_bound``.
CONFIDENCE = 0.95


@dataclass
class SpectrumEstimate:
    """Raw results of :func:`estimate` (numpy float64 unless noted).

    Attributes
    ----------
    nodes, weights : array, shape (probes, lanczos_steps)
        Quadrature per probe; NaN nodes / zero weights past a probe's breakdown.
    lengths : array, shape (probes,)
        Lanczos steps taken per probe.
    top_eigenvalues, top_residuals : array, shape (top_k,)
        Largest Ritz values of probe 0 (descending) and ``||H u - theta u||`` for each.
    n_params : int
        Dimension of the operator.
    w1_bound : float
        A-priori Wasserstein-1 bound relative to the spectral range (95 % confidence).
    settings : SLQSettings
    top_vectors : torch.Tensor, shape (n_params, top_k), or None
        Ritz vectors (unit norm), kept when asked for.
    """

    nodes: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    n_params: int
    w1_bound: float
    settings: SLQSettings
    top_vectors: torch.Tensor | None = None

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


def _ritz(
    result: LanczosResult, top_k: int, keep_vectors: bool
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
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
    if not keep_vectors or result.basis is None:
        return values, residuals, None
    q = result.basis.vectors(0, m)  # (m, n) on the basis' device
    coeff = torch.as_tensor(u[:, order].copy(), dtype=torch.float64, device=q.device)
    vectors = torch.full(
        (q.shape[1], top_k), float("nan"), dtype=torch.float64, device=result.basis.device
    )
    vectors[:, : order.size] = (q.T @ coeff).to(result.basis.device)
    return values, residuals, vectors


def estimate(
    op: Any,
    settings: SLQSettings | None = None,
    *,
    placement: str = "device",
    on_step: Callable[[int], None] | None = None,
    keep_vectors: bool = False,
) -> SpectrumEstimate:
    """Run SLQ and return raw arrays (see :func:`spectrum` for the dataset form).

    All probes run in lockstep through the operator's block product: one pass over the
    data per Lanczos step serves every probe.

    Parameters
    ----------
    op : operator
        Anything :func:`hessnb.linalg.as_operator` accepts.
    settings : SLQSettings, optional
        Default ``SLQSettings()``.
    placement : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis is stored.
    on_step : callable, optional
        Called with the Lanczos step index after each step (progress bars).
    keep_vectors : bool
        Also return the top Ritz vectors.
    """
    operator = as_operator(op)
    settings = (settings or SLQSettings()).for_dimension(operator.dim)
    start = probe_vectors(operator.dim, settings.probes, settings.seed)
    with operator.reuse():  # the operator is fixed during one Lanczos run
        result = lanczos_block(
            operator.matmat,
            operator.dim,
            settings.lanczos_steps,
            start=start,
            placement=placement,
            device=operator.device,
            callback=on_step,
        )
    nodes = np.full((settings.probes, settings.lanczos_steps), np.nan)
    weights = np.zeros((settings.probes, settings.lanczos_steps))
    for p in range(settings.probes):
        alpha, beta = result.tridiagonal(p)
        theta, tau, _ = tridiagonal_to_quadrature(alpha.numpy(), beta.numpy())
        nodes[p, : theta.size], weights[p, : tau.size] = theta, tau
    try:
        values, residuals, vectors = _ritz(result, settings.top_k, keep_vectors)
    finally:
        if result.basis is not None:  # Ritz vectors are a new tensor: the basis can go
            result.basis.close()
    return SpectrumEstimate(
        nodes=nodes,
        weights=weights,
        lengths=result.lengths.numpy(),
        top_eigenvalues=values,
        top_residuals=residuals,
        n_params=operator.dim,
        w1_bound=wasserstein_bound(
            settings.lanczos_steps, settings.probes, operator.dim, CONFIDENCE
        ),
        settings=settings,
        top_vectors=vectors,
    )


def to_dataset(est: SpectrumEstimate, attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """Package a :class:`SpectrumEstimate` in the schema of :mod:`hessnb.schema`."""
    probes, steps = est.nodes.shape
    traces = est.traces
    stderr = float(np.std(traces, ddof=1) / math.sqrt(probes)) if probes > 1 else np.nan
    values = {
        "nodes": est.nodes,
        "weights": est.weights,
        "lanczos_length": est.lengths.astype(np.int64),
        "top_eigenvalues": est.top_eigenvalues,
        "top_residuals": est.top_residuals,
        "trace": float(traces.mean()),
        "trace_stderr": stderr,
        "w1_bound": est.w1_bound,
        **spectrum_statistics(est.nodes, est.weights),
        "n_params": np.int64(est.n_params),
    }
    data = {
        name: (VARIABLES[name].dims, value, variable_attrs(name)) for name, value in values.items()
    }
    data["w1_bound"][2].update(confidence=CONFIDENCE, reference="Chen, Trogdon & Ubaru (2021)")
    coords = {
        "probe": np.arange(probes),
        "node": np.arange(steps),
        "k": np.arange(1, est.top_eigenvalues.size + 1),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(est.settings.as_attrs())
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
    settings: SLQSettings | None = None,
    placement: str = "device",
    progress: bool = True,
) -> xr.Dataset:
    """Estimate the Hessian eigenvalue density with stochastic Lanczos quadrature.

    Parameters
    ----------
    op : HessianOperator, symmetric matrix, or operator
        Anything with ``shape`` and ``matmat(V)`` or ``@``: a ``HessianOperator``, a scipy
        ``LinearOperator``, a curvlinops operator, a dense symmetric array or tensor.
    lanczos_steps : int
        Lanczos steps ``m`` per probe (float64, full re-orthogonalisation).
    probes : int
        Gaussian probe vectors ``P``, run together (one data pass per step for all).
    seed : int
        Seed of the probe vectors (the same seed gives the same probes).
    top_k : int
        Number of top Ritz values (and residuals) to keep.
    settings : SLQSettings, optional
        All four settings at once (then the four keywords above must stay at defaults).
    placement : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis is stored.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        ``nodes``, ``weights`` (probe, node); ``top_eigenvalues``, ``top_residuals`` (k);
        ``trace``, ``trace_stderr``, ``w1_bound``, ``n_params``; the spectrum's statistics
        ``lambda_min``, ``negative_mass``, ``bulk_edge``, ``n_outliers``, ``outlier_gap``
        (see :mod:`hessnb.linalg.statistics` for the outlier rule); provenance in
        ``attrs``.
        Use ``ds.hess.density()`` for the smoothed density.

    Examples
    --------
    >>> import numpy as np, hessnb
    >>> ds = hessnb.spectrum(np.diag(np.arange(1.0, 51.0)), lanczos_steps=50, top_k=3,
    ...                      progress=False)
    >>> ds.top_eigenvalues.values.round(6)
    array([50., 49., 48.])
    """
    settings = SLQSettings.resolve(
        settings, lanczos_steps=lanczos_steps, probes=probes, top_k=top_k, seed=seed
    )
    operator = as_operator(op)  # provenance describes the operator, not the array
    bar = tqdm(
        total=settings.lanczos_steps,
        desc=f"Lanczos ({settings.probes} probe{'s' * (settings.probes > 1)})",
        unit="step",
        disable=not progress,
        leave=False,
    )
    try:
        est = estimate(operator, settings, placement=placement, on_step=lambda _j: bar.update(1))
    finally:
        bar.close()
    return to_dataset(est, provenance(operator))


def provenance(operator: Operator) -> dict[str, Any]:
    """Dataset attributes describing ``operator`` and this version of hessnb."""
    return {**operator.provenance(), "hessnb_version": __version__}
