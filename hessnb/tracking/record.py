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
from hessnb.linalg.operator import as_operator
from hessnb.linalg.topk import top_eigenpairs
from hessnb.schema import DIMENSIONS, VARIABLES, variable_attrs
from hessnb.settings import SLQSettings
from hessnb.slq import estimate, provenance, to_dataset
from hessnb.tracking.gradients import cosine, projection_statistics

__all__ = [
    "TOP_TOL",
    "Recorded",
    "check_scalars",
    "flat_update",
    "gradient_statistics",
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
    """An optimizer update (flat, or one tensor per selected parameter) as flat float64."""
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
        The Hessian at the current parameters.
    step : int
        The training step; the result has a ``step`` dimension of length 1.
    settings : SLQSettings
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
        ``dataset`` with dims ``step`` (length 1), ``probe``, ``node``, ``k``, and the top
        Ritz ``vectors`` ``(n_params, top_k)``.
    """
    extra = check_scalars(scalars or {})
    direction = None if update is None else flat_update(op, update)
    with op.reuse_graphs():  # the model is fixed for the whole record
        evaluation = op.evaluate(gradient=True)  # one pass (it fills the graph cache)
        gradient = evaluation["gradient"]
        nonzero = bool(gradient.any())
        est = estimate(
            op,
            settings,
            placement=placement,
            on_step=on_step,
            keep_vectors=True,
            gradient=gradient if nonzero else None,
        )
    hg = est.grad_alpha / math.hypot(est.grad_alpha, est.grad_beta) if nonzero else math.nan
    statistics = gradient_statistics(evaluation, est.top_vectors, hg, direction)
    hvps = int(est.lengths.sum()) + (int(np.isfinite(est.grad_nodes).sum()) if nonzero else 0)
    values = {**_floats(statistics), **_floats(extra), "has_density": np.int8(1), "hvps": hvps}
    if not nonzero:  # a zero gradient has no spectral measure
        values.update(
            grad_nodes=np.full(settings.lanczos_steps, np.nan),
            grad_weights=np.full(settings.lanczos_steps, np.nan),
        )
    return Recorded(_package(op, to_dataset(est), step, values, attrs), est.top_vectors)


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
