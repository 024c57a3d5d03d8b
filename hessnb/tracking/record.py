"""Record one training step: the spectrum and the gradient statistics, as one dataset.

:func:`record_step` is pure with respect to files: it computes and returns the record;
the :class:`~hessnb.tracking.tracker.Tracker` decides when to call it and appends the
result to the run file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr

from hessnb.hessian.operator import HessianOperator
from hessnb.linalg.blocks import Blocks
from hessnb.linalg.operator import as_operator
from hessnb.linalg.topk import top_eigenpairs
from hessnb.schema import DIMENSIONS, VARIABLES, variable_attrs
from hessnb.settings import SLQSettings
from hessnb.slq import SpectrumEstimate, estimate, estimate_blocks, provenance, to_dataset
from hessnb.tracking.gradients import cosine, projection_statistics

__all__ = [
    "CURVATURE_FREE",
    "TOP_TOL",
    "Recorded",
    "check_scalars",
    "flat_update",
    "gradient_statistics",
    "join_curvatures",
    "record_step",
    "record_top",
]

#: Relative Ritz residual (to the largest Ritz value) at which a dense record stops.
TOP_TOL = 1e-4


def check_scalars(scalars: dict[str, Any]) -> dict[str, float]:
    """User scalars as floats; names computed by hessnb (``hessnb.schema``) are refused."""
    out = {}
    for key, value in scalars.items():
        spec = VARIABLES.get(key)
        if (spec is not None and spec.computed) or key in DIMENSIONS:
            hint = " (pass a minibatch loss as e.g. train_loss=...)" if key == "loss" else ""
            raise ValueError(f"{key!r} is computed by the tracker; use another name{hint}")
        if not key.isidentifier():
            raise ValueError(f"scalar name {key!r} must be a valid identifier")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"scalar {key!r} must be a single number")
            value = value.item()
        try:
            out[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"scalar {key!r} must be a number, got {type(value).__name__}") from exc
    return out


def flat_update(op: HessianOperator, update: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """An optimizer update (flat, or one tensor per selected parameter) as flat float64,
    in the operator's coordinates (``P^{1/2} delta`` for a preconditioned operator)."""
    scale = getattr(op, "scale_update", None)
    if callable(scale):
        return scale(update).to(dtype=torch.float64)
    if isinstance(update, torch.Tensor) and update.ndim == 1:
        flat = update
    else:
        flat = op.flatten(list(update))
    if flat.numel() != op.n_params:
        raise ValueError(
            f"update has {flat.numel()} numbers but the Hessian is over {op.n_params} "
            "parameters; pass one tensor per selected parameter or a flat vector"
        )
    return flat.to(device=op.device, dtype=torch.float64)


def gradient_statistics(
    evaluation: dict[str, Any],
    vectors: torch.Tensor,
    hg_cosine: float,
    update: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Loss, accuracy and projection statistics of the gradient (and of ``update``).

    Parameters
    ----------
    evaluation : dict
        :meth:`HessianOperator.evaluate` with ``gradient=True``.
    vectors : torch.Tensor, shape (n_params, k)
        Orthonormal top Ritz vectors.
    hg_cosine : float
        Cosine between the gradient ``g`` and ``Hg``.
    update : torch.Tensor, shape (n_params,), optional
        The optimizer's update direction.
    """
    gradient = evaluation["gradient"]
    fraction, overlaps, norm = projection_statistics(vectors, gradient)
    stats: dict[str, Any] = {
        "loss": evaluation["loss"],
        "accuracy": evaluation.get("accuracy", math.nan),
        "grad_norm": norm,
        "grad_fraction": fraction,
        "grad_overlap": overlaps,
        "grad_hg_cosine": hg_cosine if norm > 0 else math.nan,
    }
    if update is not None:
        u_fraction, u_overlaps, u_norm = projection_statistics(vectors, update)
        stats.update(
            update_norm=u_norm,
            update_fraction=u_fraction,
            update_overlap=u_overlaps,
            update_grad_cosine=cosine(update, gradient),
        )
    return stats


class Recorded(NamedTuple):
    """A record and the top Ritz vectors it found (the next dense record starts there)."""

    dataset: xr.Dataset
    vectors: torch.Tensor


def _package(
    op: HessianOperator,
    record: xr.Dataset,
    step: int,
    values: dict[str, Any],
    attrs: dict[str, Any] | None,
) -> xr.Dataset:
    """Add per-step ``values`` to a one-spectrum ``record``, then the ``step`` dimension."""
    for key, value in values.items():
        dims = VARIABLES[key].dims if key in VARIABLES else ("k",) if np.ndim(value) else ()
        record[key] = (dims, np.asarray(value), variable_attrs(key))
    record = record.expand_dims(step=[int(step)])
    for key, spec in VARIABLES.items():
        if not spec.per_step and key in record:
            record[key] = record[key].isel(step=0, drop=True)
    record.attrs = {**record.attrs, **provenance(as_operator(op)), **(attrs or {})}
    return record


def _floats(values: dict[str, Any]) -> dict[str, Any]:
    return {key: np.asarray(value, dtype=np.float64) for key, value in values.items()}


def record_step(
    op: HessianOperator,
    step: int,
    settings: SLQSettings,
    *,
    blocks: Blocks | None = None,
    evaluation: dict[str, Any] | None = None,
    placement: str = "device",
    on_step: Callable[[int], None] | None = None,
    update: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scalars: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Recorded:
    """The spectrum and statistics of ``op`` at its current parameters, as a dataset.

    The gradient's Lanczos run (its spectral measure ``grad_nodes``/``grad_weights``)
    shares the probes' block pass; ``grad_hg_cosine`` comes from its first step.

    Parameters
    ----------
    op : HessianOperator
        The curvature at the current parameters (a Hessian, GGN or Fisher operator).
    step : int
        The training step; the result has a ``step`` dimension of length 1.
    settings : SLQSettings
    blocks : Blocks, optional
        Record the spectrum of each diagonal block instead (:func:`hessnb.slq.
        estimate_blocks`): every spectrum variable and gradient statistic gains a
        ``block`` dimension, computed from the block's part of the gradient (and of
        ``update``); ``loss`` and ``accuracy`` do not.
    evaluation : dict, optional
        ``op.evaluate(gradient=True)`` at these parameters when already computed (e.g. by
        another curvature's record at the same step): saves its pass over the data.
    placement : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis lives.
    on_step : callable, optional
        Called after each Lanczos step.
    update : tensor or list of tensors, optional
        The optimizer's update; adds the ``update_*`` statistics.
    scalars : dict, optional
        Extra per-step numbers (checked by :func:`check_scalars`).
    attrs : dict, optional
        Dataset attributes added to the operator's provenance.

    Returns
    -------
    Recorded
        ``dataset`` with dims ``step`` (length 1), (``block``,) ``probe``, ``node``,
        ``k``, and the top Ritz ``vectors`` ``(n_params, top_k)`` (of the first block).
    """
    extra = check_scalars(scalars or {})
    direction = None if update is None else flat_update(op, update)
    with op.reuse_graphs():  # the model is fixed for the whole record
        if evaluation is None:
            evaluation = op.evaluate(gradient=True)  # one pass (it fills the graph cache)
        gradient = evaluation["gradient"]
        nonzero = gradient if bool(gradient.any()) else None
        options = {"placement": placement, "on_step": on_step, "keep_vectors": True}
        if blocks is None:
            ests = [estimate(op, settings, gradient=nonzero, **options)]
        else:
            ests = estimate_blocks(op, blocks, settings, gradient=nonzero, **options)
    indices = [slice(None)] if blocks is None else list(blocks.indices)
    spectra = []
    for est, index in zip(ests, indices, strict=True):
        part = {**evaluation, "gradient": _within(gradient, index)}
        moved = None if direction is None else _within(direction, index)
        spectra.append(_spectrum_record(est, part, moved, settings.lanczos_steps))
    if blocks is None:
        record = spectra[0]
    else:
        record = xr.concat(spectra, dim="block", combine_attrs="override")
        record = record.assign_coords(block=("block", list(blocks.labels)))
        record.attrs["blocks"] = "custom"
    for name in ("loss", "accuracy"):  # one value per step, whatever the blocks
        record[name] = ((), np.float64(evaluation.get(name, math.nan)), variable_attrs(name))
    hvps = sum(
        int(est.lengths.sum())
        + (0 if est.grad_nodes is None else int(np.isfinite(est.grad_nodes).sum()))
        for est in ests
    )
    values = {**_floats(extra), "has_density": np.int8(1), "hvps": hvps}
    return Recorded(_package(op, record, step, values, attrs), ests[0].top_vectors)


def _within(vector: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    """``vector`` with the coordinates outside ``index`` set to zero."""
    if isinstance(index, slice):
        return vector
    out = torch.zeros_like(vector)
    out[index.to(vector.device)] = vector[index.to(vector.device)]
    return out


def _spectrum_record(
    est: SpectrumEstimate,
    evaluation: dict[str, Any],
    direction: torch.Tensor | None,
    steps: int,
) -> xr.Dataset:
    """One spectrum's dataset with its gradient statistics (and measure, NaN if none)."""
    record = to_dataset(est)
    if est.grad_nodes is None:  # a zero gradient has no spectral measure
        nodes, weights, hg = np.full(steps, np.nan), np.full(steps, np.nan), math.nan
    else:
        nodes, weights = est.grad_nodes, est.grad_weights
        hg = est.grad_alpha / math.hypot(est.grad_alpha, est.grad_beta)
    statistics = gradient_statistics(evaluation, est.top_vectors, hg, direction)
    statistics.update(grad_nodes=nodes, grad_weights=weights)
    for key, value in _floats(statistics).items():
        if key not in ("loss", "accuracy"):
            record[key] = (VARIABLES[key].dims, value, variable_attrs(key))
    return record


def record_top(
    op: HessianOperator,
    step: int,
    settings: SLQSettings,
    *,
    start: torch.Tensor | None = None,
    tol: float = TOP_TOL,
    update: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scalars: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Recorded:
    """A dense record: the top-k Ritz pairs and gradient statistics, without a density.

    The top ``settings.top_k`` eigenpairs come from
    :func:`hessnb.linalg.topk.top_eigenpairs` warm-started at ``start`` (the previous
    record's vectors), which costs a few HVP blocks instead of a Lanczos run, and never
    more than ``settings.lanczos_steps`` HVPs (one probe's Lanczos run): pairs that have
    not converged by then are stored with their residuals (``top_residuals``). The density
    variables (``nodes``, ``weights``, ...) are NaN and ``has_density`` is 0.

    Parameters
    ----------
    op, step, settings, update, scalars, attrs
        As for :func:`record_step`.
    start : torch.Tensor, shape (n_params, top_k), optional
        Warm start (None: a cold start from seeded random vectors).
    tol : float
        Stop when every Ritz residual is at most ``tol * |theta_1|``.

    Returns
    -------
    Recorded
    """
    extra = check_scalars(scalars or {})
    direction = None if update is None else flat_update(op, update)
    operator = as_operator(op)
    with op.reuse_graphs():
        evaluation = op.evaluate(gradient=True)
        with operator.reuse():
            top = top_eigenpairs(
                operator.matmat,
                operator.dim,
                settings.top_k,
                start=start,
                tol=tol,
                max_matvecs=max(settings.top_k, settings.lanczos_steps),
                generator=torch.Generator().manual_seed(settings.seed),
                device=operator.device,
            )
            gradient = evaluation["gradient"]
            hg = cosine(gradient, op.matvec(gradient)) if gradient.any() else math.nan
    statistics = gradient_statistics(evaluation, top.vectors, hg, direction)
    probes, steps = settings.probes, settings.lanczos_steps
    record = xr.Dataset(
        {
            "nodes": (("probe", "node"), np.full((probes, steps), np.nan)),
            "weights": (("probe", "node"), np.full((probes, steps), np.nan)),
            "top_eigenvalues": (("k",), top.values, variable_attrs("top_eigenvalues")),
            "top_residuals": (("k",), top.residuals, variable_attrs("top_residuals")),
            "n_params": ((), np.int64(operator.dim), variable_attrs("n_params")),
        },
        coords={
            "probe": np.arange(probes),
            "node": np.arange(steps),
            "k": np.arange(1, top.values.size + 1),
        },
    )
    record.attrs.update(settings.as_attrs(), n_params=operator.dim)
    values = {
        **_floats(statistics),
        **_floats(extra),
        "has_density": np.int8(0),
        "hvps": top.matvecs + int(bool(gradient.any())),
    }
    return Recorded(_package(op, record, step, values, attrs), top.vectors)


#: Per-step variables that do not depend on the curvature (one value for all of them).
CURVATURE_FREE = ("loss", "accuracy", "has_density")


def join_curvatures(records: dict[str, xr.Dataset]) -> xr.Dataset:
    """Records of one step for several curvatures as one dataset with a ``curvature`` dim.

    Spectrum variables and gradient statistics gain ``curvature`` (placed after ``step``);
    ``loss``, ``accuracy``, ``has_density`` and user scalars keep one value (the first
    record's). Attributes are the first record's.
    """
    names = list(records)
    first = records[names[0]]
    shared = [
        v
        for v in first.data_vars
        if v in CURVATURE_FREE or v not in VARIABLES or not VARIABLES[v].computed
    ]
    parts = [records[c].drop_vars(shared) for c in names]
    joined = xr.concat(parts, dim="curvature", combine_attrs="override")
    joined = joined.assign_coords(curvature=("curvature", names))
    for name in shared:
        joined[name] = first[name]
    return joined.transpose("step", "curvature", ...)
