"""Stochastic Lanczos quadrature: probes x Lanczos -> an ``xarray.Dataset``.

:func:`estimate` runs the numerics and returns arrays, :func:`to_dataset` packages them in
the schema of :mod:`hessnb.schema`, :func:`spectrum` does both. The dataset stores what
the estimator computed (quadrature nodes and weights per probe, top Ritz values and
residuals, a trace estimate, the a-priori accuracy bound), never a smoothed picture:
densities are derived on demand by the ``ds.hess`` accessor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from hessnb.hessian.params import ParameterSpace
from hessnb.linalg.blocks import Blocks, block_diagonal, index_blocks
from hessnb.linalg.bounds import posterior_bound
from hessnb.linalg.deflation import DEFLATION_TOL, deflate_weights
from hessnb.linalg.lanczos import LanczosResult, lanczos_block
from hessnb.linalg.operator import Operator, as_operator
from hessnb.linalg.quadrature import (
    tridiagonal_to_quadrature,
    wasserstein_bound,
    wasserstein_distance,
)
from hessnb.linalg.statistics import spectrum_statistics
from hessnb.schema import VARIABLES, variable_attrs
from hessnb.settings import SLQSettings
from hessnb.version import __version__

__all__ = [
    "CONFIDENCE",
    "SpectrumEstimate",
    "estimate",
    "describe_blocks",
    "estimate_blocks",
    "probe_vectors",
    "spectrum",
    "to_dataset",
]

#: Confidence of the a-priori Wasserstein-1 bound stored as ``w1_bound``.
CONFIDENCE = 0.95


@dataclass
class SpectrumEstimate:
    """Raw results of :func:`estimate` (numpy float64 unless noted).

    Attributes
    ----------
    nodes, weights : array, shape (probes, lanczos_steps)
        Quadrature per probe; NaN nodes / zero weights past a probe's breakdown. With
        ``settings.deflate`` the weights are the deflated ones.
    lengths : array, shape (probes,)
        Lanczos steps taken per probe.
    n_deflated : array, shape (probes,)
        Converged top Ritz values given weight ``1 / n`` per probe (0 without deflation).
    alpha, beta : array, shape (probes, lanczos_steps)
        The Lanczos tridiagonals (``beta[p, lengths[p] - 1]`` is the final residual norm).
    top_eigenvalues, top_residuals : array, shape (top_k,)
        Largest Ritz values of probe 0 (descending) and ``||H u - theta u||`` for each.
    n_params : int
        Dimension of the operator.
    w1_bound : float
        A-priori Wasserstein-1 bound relative to the spectral range (95 % confidence).
    w1_posterior : float
        A-posteriori bound from this run's tridiagonals (:mod:`hessnb.linalg.bounds`),
        relative to the Ritz range, 95 % confidence; with deflation it adds the exact
        ``W1`` between the plain and the deflated quadrature (triangle inequality).
    settings : SLQSettings
    top_vectors : torch.Tensor, shape (n_params, top_k), or None
        Ritz vectors (unit norm), kept when asked for.
    grad_nodes, grad_weights : array, shape (lanczos_steps,), or None
        Gauss quadrature of the gradient's spectral measure, when a gradient was given.
    grad_alpha, grad_beta : float
        First diagonal and off-diagonal entry of the gradient's Lanczos run:
        ``g.Hg / |g|^2`` and ``|Hg - alpha g| / |g|`` (NaN without a gradient).
    """

    nodes: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray
    n_deflated: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    n_params: int
    w1_bound: float
    w1_posterior: float
    settings: SLQSettings
    top_vectors: torch.Tensor | None = None
    grad_nodes: np.ndarray | None = None
    grad_weights: np.ndarray | None = None
    grad_alpha: float = math.nan
    grad_beta: float = math.nan

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
    result: LanczosResult, top_k: int, keep_vectors: bool, column: int = 0
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    """Top Ritz values, residual norms and (optionally) vectors of one Lanczos run."""
    m = int(result.lengths[column])
    alpha, beta = result.tridiagonal(column)
    theta, _, u = tridiagonal_to_quadrature(alpha.numpy(), beta.numpy())
    order = np.argsort(theta)[::-1][: min(top_k, m)]
    values = np.full(top_k, np.nan)
    residuals = np.full(top_k, np.nan)
    values[: order.size] = theta[order]
    # ||H y - theta y|| = |beta_m| |u_{m,j}| for the Ritz vector y = Q u (exact with full
    # re-orthogonalisation; beta_m is the norm of the last residual, zero at breakdown).
    residuals[: order.size] = abs(float(result.beta[column, m - 1])) * np.abs(u[-1, order])
    if not keep_vectors or result.basis is None:
        return values, residuals, None
    q = result.basis.vectors(column, m)  # (m, n) on the basis' device
    coeff = torch.as_tensor(u[:, order].copy(), dtype=torch.float64, device=q.device)
    vectors = torch.full(
        (q.shape[1], top_k), float("nan"), dtype=torch.float64, device=result.basis.device
    )
    vectors[:, : order.size] = (q.T @ coeff).to(result.basis.device)
    return values, residuals, vectors


def _quadratures(
    result: LanczosResult, columns: range, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, weights and Ritz residuals ``(len(columns), steps)`` of some Lanczos runs."""
    shape = (len(columns), steps)
    nodes, weights, residuals = np.full(shape, np.nan), np.zeros(shape), np.full(shape, np.nan)
    for row, p in enumerate(columns):
        alpha, beta = result.tridiagonal(p)
        theta, tau, u = tridiagonal_to_quadrature(alpha.numpy(), beta.numpy())
        m = theta.size
        nodes[row, :m], weights[row, :m] = theta, tau
        residuals[row, :m] = abs(float(result.beta[p, m - 1])) * np.abs(u[-1])
    return nodes, weights, residuals


def _summarise(
    result: LanczosResult,
    columns: range,
    dim: int,
    settings: SLQSettings,
    keep_vectors: bool,
) -> SpectrumEstimate:
    """The spectrum estimate of the Lanczos runs ``columns`` of a block run.

    ``dim`` is the dimension of the space the runs' start vectors were drawn in (the
    operator's, or one diagonal block's): it scales traces, deflated weights and bounds.
    """
    steps, probes = settings.lanczos_steps, len(columns)
    nodes, weights, residuals = _quadratures(result, columns, steps)
    alpha = result.alpha[columns.start : columns.stop].numpy()
    beta = result.beta[columns.start : columns.stop].numpy()
    lengths = result.lengths[columns.start : columns.stop].numpy()
    taken = int(lengths.max())  # below steps when a block is smaller than lanczos_steps
    bound = posterior_bound(alpha[:, :taken], beta[:, :taken], dim, CONFIDENCE, lengths=lengths)
    n_deflated = np.zeros(probes, dtype=np.int64)
    shift = 0.0  # W1 between the plain and the deflated quadrature
    if settings.deflate:
        plain = weights
        weights, n_deflated = deflate_weights(nodes, weights, residuals, dim)
        if n_deflated.any():
            shift = wasserstein_distance((nodes, plain), (nodes, weights))
    posterior = (bound.absolute + shift) / bound.ritz_range if bound.ritz_range > 0 else 0.0
    values, top_residuals, vectors = _ritz(result, settings.top_k, keep_vectors, columns.start)
    return SpectrumEstimate(
        nodes=nodes,
        weights=weights,
        lengths=lengths,
        n_deflated=n_deflated,
        alpha=alpha,
        beta=beta,
        top_eigenvalues=values,
        top_residuals=top_residuals,
        n_params=dim,
        w1_bound=wasserstein_bound(min(steps, dim), probes, dim, CONFIDENCE),
        w1_posterior=posterior,
        settings=settings,
        top_vectors=vectors,
    )


def _run(
    operator: Operator,
    matmat: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    settings: SLQSettings,
    placement: str,
    on_step: Callable[[int], None] | None,
) -> LanczosResult:
    """Lanczos from every column of ``start`` in lockstep, with the operator fixed."""
    with operator.reuse():
        return lanczos_block(
            matmat,
            operator.dim,
            settings.lanczos_steps,
            start=start,
            placement=placement,
            device=operator.device,
            callback=on_step,
        )


def estimate(
    op: Any,
    settings: SLQSettings | None = None,
    *,
    placement: str = "device",
    on_step: Callable[[int], None] | None = None,
    keep_vectors: bool = False,
    gradient: torch.Tensor | None = None,
) -> SpectrumEstimate:
    """Run SLQ and return raw arrays (see :func:`spectrum` for the dataset form).

    All probes run in lockstep through the operator's block product: one pass over the
    data per Lanczos step serves every probe (and the gradient, when given).

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
    gradient : torch.Tensor, shape (n_params,), optional
        A non-zero vector ``g`` whose spectral measure ``sum_i (u_i . g)^2 / |g|^2
        delta(lambda_i)`` is estimated too, by one more Lanczos run in the same block
        (``grad_nodes``, ``grad_weights``). The probes' results do not change.
    """
    operator = as_operator(op)
    settings = (settings or SLQSettings()).for_dimension(operator.dim)
    start = probe_vectors(operator.dim, settings.probes, settings.seed)
    if gradient is not None:
        g = _check_gradient(gradient, operator.dim)
        if not g.any():
            raise ValueError("gradient is zero; its spectral measure is undefined (pass None)")
        start = torch.cat([start, g[:, None]], dim=1)
    result = _run(operator, operator.matmat, start, settings, placement, on_step)
    try:
        est = _summarise(result, range(settings.probes), operator.dim, settings, keep_vectors)
    finally:
        if result.basis is not None:  # Ritz vectors are a new tensor: the basis can go
            result.basis.close()
    if gradient is not None:
        _add_gradient_measure(est, result, settings.probes)
    return est


def _check_gradient(gradient: torch.Tensor, dim: int) -> torch.Tensor:
    """``gradient`` as a flat float64 CPU tensor of ``dim`` finite numbers."""
    g = torch.as_tensor(gradient).detach().reshape(-1).to("cpu", torch.float64)
    if g.numel() != dim or not bool(torch.isfinite(g).all()):
        raise ValueError(
            f"gradient must be a finite vector of {dim} numbers (the operator's dimension), "
            f"got {g.numel()} numbers"
        )
    return g


def _add_gradient_measure(est: SpectrumEstimate, result: LanczosResult, column: int) -> None:
    """Store the gradient's spectral measure, from Lanczos run ``column``, in ``est``."""
    nodes, weights, _ = _quadratures(result, range(column, column + 1), est.nodes.shape[1])
    est.grad_nodes, est.grad_weights = nodes[0], weights[0]
    est.grad_alpha = float(result.alpha[column, 0])
    est.grad_beta = float(result.beta[column, 0])


def estimate_blocks(
    op: Any,
    blocks: Blocks,
    settings: SLQSettings | None = None,
    *,
    placement: str = "device",
    on_step: Callable[[int], None] | None = None,
    keep_vectors: bool = False,
    gradient: torch.Tensor | None = None,
) -> list[SpectrumEstimate]:
    """SLQ of every diagonal block ``A_bb`` of an operator, in one lockstep Lanczos run.

    Each block gets ``settings.probes`` Gaussian probes supported on it (drawn with
    ``settings.seed`` in the block's own dimension), and every Lanczos step multiplies
    all ``blocks x probes`` vectors in one block product (:func:`hessnb.linalg.blocks.
    block_diagonal`): for a Hessian, each batch's forward and first backward serve every
    block. A block smaller than ``lanczos_steps`` stops at its dimension (exact).

    Parameters
    ----------
    op : operator
        Anything :func:`hessnb.linalg.as_operator` accepts.
    blocks : Blocks
        Disjoint coordinate blocks of the operator's space.
    settings, placement, on_step, keep_vectors
        As for :func:`estimate` (Ritz vectors are ``(n_params, top_k)``, zero outside
        their block).
    gradient : torch.Tensor, shape (n_params,), optional
        Also the spectral measure of each block's part ``g_b`` of ``g`` in ``A_bb``, from
        one more column per block in the same pass (blocks where ``g_b`` is zero get none).

    Returns
    -------
    list of SpectrumEstimate
        One per block, in the order of ``blocks.labels``; ``n_params`` is the block's size.
    """
    operator = as_operator(op)
    settings = (settings or SLQSettings()).for_dimension(operator.dim)
    if blocks.dim != operator.dim:
        raise ValueError(
            f"the blocks split a space of dimension {blocks.dim}, but the operator has "
            f"dimension {operator.dim}; make the blocks from this operator"
        )
    start = torch.cat(
        [
            blocks.scatter(b, probe_vectors(size, settings.probes, settings.seed))
            for b, size in enumerate(blocks.sizes)
        ],
        dim=1,
    )
    # an operator with a restricted product (HessianOperator.block_matmat) differentiates
    # only each block's parameters; the mask keeps exactly the block either way
    restricted = getattr(op, "block_matmat", None)
    matmat = block_diagonal(
        restricted if callable(restricted) else operator.matmat, blocks, operator.device
    )
    columns: dict[int, int] = {}  # block -> its gradient column
    if gradient is not None:
        g = _check_gradient(gradient, operator.dim)
        parts = [blocks.scatter(b, g[index, None]) for b, index in enumerate(blocks.indices)]
        nonzero = [b for b, part in enumerate(parts) if part.any()]
        columns = {b: start.shape[1] + i for i, b in enumerate(nonzero)}
        start = torch.cat([start, *(parts[b] for b in columns)], dim=1)
    result = _run(operator, matmat, start, settings, placement, on_step)
    probes = settings.probes
    try:
        ests = [
            _summarise(result, range(b * probes, (b + 1) * probes), size, settings, keep_vectors)
            for b, size in enumerate(blocks.sizes)
        ]
    finally:
        if result.basis is not None:
            result.basis.close()
    for b, column in columns.items():
        _add_gradient_measure(ests[b], result, column)
    return ests


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
        "w1_posterior": est.w1_posterior,
        "n_deflated": est.n_deflated.astype(np.int64),
        **spectrum_statistics(est.nodes, est.weights),
        "n_params": np.int64(est.n_params),
    }
    if est.grad_nodes is not None:
        values.update(grad_nodes=est.grad_nodes, grad_weights=est.grad_weights)
    data = {
        name: (VARIABLES[name].dims, value, variable_attrs(name)) for name, value in values.items()
    }
    data["w1_bound"][2].update(confidence=CONFIDENCE, reference="Chen, Trogdon & Ubaru (2021)")
    data["w1_posterior"][2].update(confidence=CONFIDENCE, method="hessnb.linalg.bounds")
    coords = {
        "probe": np.arange(probes),
        "node": np.arange(steps),
        "k": np.arange(1, est.top_eigenvalues.size + 1),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(est.settings.as_attrs())
    if est.settings.deflate:
        ds.attrs["deflation_tol"] = DEFLATION_TOL
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
    deflate: bool = True,
    settings: SLQSettings | None = None,
    blocks: str | Mapping[str, Any] | Blocks | None = None,
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
    deflate : bool
        Deflated SLQ (the default): converged top Ritz values (residual below ``1e-6`` of
        the largest) get their exact weight ``1 / n`` and the probes estimate the rest
        (:mod:`hessnb.linalg.deflation`); no extra HVPs. ``n_deflated`` says how many per
        probe; with none converged the result is plain SLQ.
    settings : SLQSettings, optional
        All five settings at once (then the five keywords above must stay at defaults).
    blocks : "layers", "parameters", mapping or Blocks, optional
        Spectra of the diagonal blocks of the operator instead of the whole: for a
        ``HessianOperator``, ``"layers"`` (one block per module), ``"parameters"`` or
        ``{group: parameter or module names}`` (:meth:`hessnb.hessian.params.
        ParameterSpace.blocks`); for any operator, ``{name: slice or coordinates}``. All
        blocks run in one lockstep Lanczos (:func:`estimate_blocks`); the dataset gains a
        ``block`` dimension named by the blocks, and ``n_params`` per block.
    placement : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis is stored.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        ``nodes``, ``weights`` (probe, node); ``top_eigenvalues``, ``top_residuals`` (k);
        ``n_deflated`` (probe); ``trace``, ``trace_stderr``, ``w1_bound``, ``n_params``;
        the spectrum's statistics ``lambda_min``, ``negative_mass``, ``bulk_edge``,
        ``n_outliers``, ``outlier_gap`` (see :mod:`hessnb.linalg.statistics` for the
        outlier rule); provenance in ``attrs``.
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
        settings,
        lanczos_steps=lanczos_steps,
        probes=probes,
        top_k=top_k,
        seed=seed,
        deflate=deflate,
    )
    operator = as_operator(op)  # provenance describes the operator, not the array
    bar = tqdm(
        total=settings.lanczos_steps,
        desc=f"Lanczos ({settings.probes} probe{'s' * (settings.probes > 1)})",
        unit="step",
        disable=not progress,
        leave=False,
    )
    attrs = provenance(operator)
    try:
        if blocks is None:
            est = estimate(
                operator, settings, placement=placement, on_step=lambda _j: bar.update(1)
            )
            return to_dataset(est, attrs)
        chosen = resolve_blocks(op, blocks, operator.dim)
        ests = estimate_blocks(
            operator, chosen, settings, placement=placement, on_step=lambda _j: bar.update(1)
        )
    finally:
        bar.close()
    return blocks_dataset(ests, chosen, {**attrs, "blocks": describe_blocks(blocks)})


def resolve_blocks(op: Any, spec: str | Mapping[str, Any] | Blocks, dim: int) -> Blocks:
    """:class:`Blocks` of ``op``'s space from a ``blocks=`` value of :func:`spectrum`.

    Raises
    ------
    ValueError
        For a named split (``"layers"``) of an operator without parameter names, or a
        mapping that names no parameter; see :meth:`hessnb.hessian.params.ParameterSpace.
        blocks` and :func:`hessnb.linalg.blocks.index_blocks`.
    """
    if isinstance(spec, Blocks):
        return spec
    space = getattr(op, "space", None)
    names_given = isinstance(spec, str) or (
        isinstance(spec, Mapping)
        and all(isinstance(v, str) or _all_strings(v) for v in spec.values())
    )
    if names_given:
        if not isinstance(space, ParameterSpace):
            raise ValueError(
                f"blocks={spec!r} names parameters, but {type(op).__name__} has no parameter "
                "names; pass a HessianOperator, or blocks as {name: slice or coordinates}"
            )
        return space.blocks(spec)
    if isinstance(spec, Mapping):
        return index_blocks(spec, dim)
    raise TypeError(
        f"blocks must be 'layers', 'parameters', a mapping or Blocks, got {type(spec).__name__}"
    )


def _all_strings(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def describe_blocks(spec: Any) -> str:
    """The ``blocks`` attribute of a dataset: the split's name, or ``"custom"``."""
    return spec if isinstance(spec, str) else "custom"


def blocks_dataset(
    ests: list[SpectrumEstimate], blocks: Blocks, attrs: dict[str, Any]
) -> xr.Dataset:
    """One dataset of per-block spectra along a ``block`` dimension (see :func:`spectrum`)."""
    parts = [to_dataset(est) for est in ests]
    ds = xr.concat(parts, dim="block", data_vars="all", combine_attrs="override")
    ds = ds.assign_coords(block=("block", list(blocks.labels)))
    ds.attrs.update(attrs, n_params=int(blocks.dim))
    return ds


def provenance(operator: Operator) -> dict[str, Any]:
    """Dataset attributes describing ``operator`` and this version of hessnb."""
    return {**operator.provenance(), "hessnb_version": __version__}
