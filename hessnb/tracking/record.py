"""Record one training step: the spectrum and the gradient statistics, as one dataset.

:func:`record_step` is pure with respect to files: it computes and returns the record;
the :class:`~hessnb.tracking.tracker.Tracker` decides when to call it and appends the
result to the run file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from hessnb.hessian.operator import HessianOperator
from hessnb.linalg.operator import as_operator
from hessnb.schema import DIMENSIONS, VARIABLES, variable_attrs
from hessnb.settings import SLQSettings
from hessnb.slq import estimate, provenance, to_dataset
from hessnb.tracking.gradients import cosine, projection_statistics

__all__ = ["check_scalars", "flat_update", "gradient_statistics", "record_step"]


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
    op: HessianOperator, vectors: torch.Tensor, update: torch.Tensor | None = None
) -> dict[str, Any]:
    """Loss, accuracy and projection statistics of the gradient (and of ``update``).

    Parameters
    ----------
    op : HessianOperator
    vectors : torch.Tensor, shape (n_params, k)
        Orthonormal top Ritz vectors.
    update : torch.Tensor, shape (n_params,), optional
        The optimizer's update direction.
    """
    evaluation = op.evaluate(gradient=True)  # one pass (free with cached graphs)
    gradient = evaluation["gradient"]
    fraction, overlaps, norm = projection_statistics(vectors, gradient)
    stats: dict[str, Any] = {
        "loss": evaluation["loss"],
        "accuracy": evaluation.get("accuracy", math.nan),
        "grad_norm": norm,
        "grad_fraction": fraction,
        "grad_overlap": overlaps,
        "grad_hg_cosine": cosine(gradient, op.matvec(gradient)) if norm > 0 else math.nan,
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
) -> xr.Dataset:
    """The spectrum and statistics of ``op`` at its current parameters, as a dataset.

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
    xarray.Dataset
        Dims ``step`` (length 1), ``probe``, ``node``, ``k``.
    """
    extra = check_scalars(scalars or {})
    direction = None if update is None else flat_update(op, update)
    with op.reuse_graphs():  # the model is fixed for the whole record
        est = estimate(op, settings, placement=placement, on_step=on_step, keep_vectors=True)
        statistics = gradient_statistics(op, est.top_vectors, direction)
    record = to_dataset(est)
    for key, value in {**statistics, **extra}.items():
        dims = ("k",) if np.ndim(value) else ()
        record[key] = (dims, np.asarray(value, dtype=np.float64), variable_attrs(key))
    record = record.expand_dims(step=[int(step)])
    for key, spec in VARIABLES.items():
        if not spec.per_step and key in record:
            record[key] = record[key].isel(step=0, drop=True)
    record.attrs = {**record.attrs, **provenance(as_operator(op)), **(attrs or {})}
    return record
