"""Track the Hessian spectrum through training into a crash-safe run file.

Call :meth:`Tracker.maybe_record` inside any training loop. Each record runs SLQ on the
full-dataset Hessian at the current parameters (the same seeded probe vectors every time,
so steps are comparable), adds loss, accuracy, gradient and gradient-projection
statistics, and writes the grown dataset to disk before returning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from hessnb import distributed as _distributed
from hessnb.gradients import cosine, projection_statistics
from hessnb.operators import BN_MODES, HessianOperator, LossFn, _select_parameters
from hessnb.runfile import (
    check_compatible,
    open_run,
    stale_temporaries,
    write_run,
)
from hessnb.schedule import Schedule, make_schedule
from hessnb.spectrum import _check_settings, estimate, provenance, to_dataset

__all__ = ["RESERVED", "Tracker"]

#: Per-step variables the tracker computes itself; user scalars may not use these names.
RESERVED = frozenset(
    {
        "nodes",
        "weights",
        "lanczos_length",
        "top_eigenvalues",
        "top_residuals",
        "trace",
        "trace_stderr",
        "w1_bound",
        "n_params",
        "loss",
        "accuracy",
        "grad_norm",
        "grad_fraction",
        "grad_overlap",
        "grad_hg_cosine",
        "update_norm",
        "update_fraction",
        "update_overlap",
        "update_grad_cosine",
        "step",
        "probe",
        "node",
        "k",
        "run",
    }
)

_LONG_NAMES = {
    "loss": "full-dataset mean loss",
    "accuracy": "full-dataset accuracy",
    "grad_norm": "norm of the full-dataset gradient",
    "grad_fraction": "fraction of |g|^2 in the top-k eigenspace",
    "grad_overlap": "(u_i . g)^2 / |g|^2",
    "grad_hg_cosine": "cosine between g and Hg",
    "update_norm": "norm of the optimizer's update",
    "update_fraction": "fraction of |update|^2 in the top-k eigenspace",
    "update_overlap": "(u_i . update)^2 / |update|^2",
    "update_grad_cosine": "cosine between the update and g",
    "lr": "learning rate",
}


class Tracker:
    """Record Hessian spectra and gradient statistics at chosen training steps.

    Parameters
    ----------
    model, loss_fn, batches
        As for :class:`~hessnb.HessianOperator`: ``batches`` is the fixed, non-augmented
        dataset the Hessian is taken over (the whole training set, or a fixed subset).
    path : str or path
        The netCDF run file. An existing file with the same settings is resumed: steps
        already in it are skipped, never duplicated.
    every : int, "log", "log:N" or list of int
        Schedule: every N steps, log-spaced (dense early), or exactly these steps.
    lanczos_steps, probes, top_k, seed
        SLQ settings (see :func:`hessnb.spectrum`); the probes are the same at every step.
    bn_mode : {"eval", "train"}
        Batch-norm semantics of the Hessian (see :class:`~hessnb.HessianOperator`).
    params, dtype, transfer, basis
        Passed to the operator / Lanczos.
    name : str, optional
        A label for the run (stored in the file's ``run`` attribute).
    attrs : dict, optional
        Extra provenance attributes for the file (e.g. ``{"precision": "bf16"}``).
    overwrite : bool
        Replace an existing file at the first record instead of resuming it.
    progress : bool
        Progress bars for each spectrum (rank 0 only).
    distributed : bool, optional
        Under ``torch.distributed`` (torchrun): ``batches`` is this rank's shard (see
        :func:`hessnb.distributed.shard`), HVPs are all-reduced, every rank computes the
        same spectrum and keeps the run in memory, and only rank 0 reads and writes the
        file. Default: when a process group of more than one rank is initialised.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        path: str | os.PathLike = "run.nc",
        *,
        every: int | str | Sequence[int] | Schedule = 1,
        lanczos_steps: int = 90,
        probes: int = 1,
        top_k: int = 10,
        bn_mode: str = "eval",
        seed: int = 0,
        params: Iterable[nn.Parameter | str] | nn.Module | None = None,
        dtype: torch.dtype | None = None,
        transfer: bool = False,
        basis: str = "device",
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
        progress: bool = True,
        distributed: bool | None = None,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(
                f"folder {self.path.parent} does not exist; create it first or pass another path"
            )
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; pass a file path such as run.nc")
        self.schedule = make_schedule(every)
        self._selected = _select_parameters(model, params)
        n_params = sum(p.numel() for _, p in self._selected)
        _check_settings(lanczos_steps, probes, top_k, n_params)
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.lanczos_steps, self.probes, self.top_k, self.seed = (
            lanczos_steps,
            probes,
            top_k,
            seed,
        )
        self.bn_mode, self.dtype, self.transfer, self.basis = bn_mode, dtype, transfer, basis
        self._distributed = _distributed.use_distributed(distributed)
        self.progress = progress and (not self._distributed or _distributed.is_main())
        self.name = name
        self.extra_attrs = dict(attrs or {})
        self.settings = {
            "n_params": n_params,
            "lanczos_steps": lanczos_steps,
            "probes": probes,
            "top_k": top_k,
            "seed": seed,
            "bn_mode": bn_mode,
        }
        self._replace = overwrite
        self._data: xr.Dataset | None = _distributed.from_main(
            self._open_existing, self._distributed
        )

    def _open_existing(self) -> xr.Dataset | None:
        """Remove temporaries of killed writers; open the run to resume (rank 0 only)."""
        for stale in stale_temporaries(self.path):
            stale.unlink()
        if not self.path.exists() or self._replace:
            return None
        existing = open_run(self.path)
        check_compatible(existing.attrs, self.settings, self.path)
        return existing

    # ------------------------------------------------------------------ queries
    @property
    def steps(self) -> list[int]:
        """Steps recorded so far (in this file)."""
        return [] if self._data is None else [int(s) for s in self._data["step"].values]

    @property
    def dataset(self) -> xr.Dataset | None:
        """The run so far (``None`` before the first record)."""
        return self._data

    def due(self, step: int) -> bool:
        """Whether ``step`` is scheduled and not yet recorded."""
        return step in self.schedule and int(step) not in self.steps

    # ------------------------------------------------------------------ recording
    def maybe_record(self, step: int, **scalars: Any) -> bool:
        """Record if ``step`` is due (see :meth:`record`); return whether it recorded."""
        if not self.due(step):
            return False
        self.record(step, **scalars)
        return True

    def record(
        self,
        step: int,
        *,
        update: torch.Tensor | Sequence[torch.Tensor] | None = None,
        **scalars: float,
    ) -> xr.Dataset:
        """Compute and store the spectrum and statistics at ``step``, now.

        Parameters
        ----------
        step : int
            Training step (>= 0, not already recorded).
        update : tensor or list of tensors, optional
            The optimizer's actual update direction (flat, or one tensor per selected
            parameter), e.g. ``new_params - old_params`` with momentum; its projection
            statistics are stored as ``update_*``.
        **scalars : float
            Extra per-step numbers, e.g. ``lr=0.1, train_loss=...``.

        Returns
        -------
        xarray.Dataset
            The step's record (dims probe, node, k), already on disk.
        """
        step = self._check_step(step)
        extra = self._check_scalars(scalars)
        op = HessianOperator(
            self.model,
            self.loss_fn,
            self.batches,
            params=[n for n, _ in self._selected],
            bn_mode=self.bn_mode,
            dtype=self.dtype,
            transfer=self.transfer,
            distributed=self._distributed,
        )
        with op.reuse_graphs():  # the model is fixed for the whole record
            est = estimate(
                op,
                self.lanczos_steps,
                self.probes,
                self.seed,
                self.top_k,
                basis=self.basis,
                progress=self.progress,
                keep_vectors=True,
            )
            statistics = self._statistics(op, est.top_vectors, update)
        record = to_dataset(est)
        for key, value in {**statistics, **extra}.items():
            dims = ("k",) if np.ndim(value) else ()
            record[key] = (
                dims,
                np.asarray(value, dtype=np.float64),
                {"long_name": _LONG_NAMES.get(key, key)},
            )
        record = record.expand_dims(step=[step])
        for key in ("n_params",):
            record[key] = record[key].isel(step=0, drop=True)
        record.attrs = {
            **self.extra_attrs,
            **self.settings,
            **provenance(op),
            "schedule": self.schedule.describe(),
        }
        if self.name is not None:
            record.attrs["run"] = self.name
        self._append(record)
        return record.isel(step=0)

    def _statistics(
        self, op: HessianOperator, vectors: torch.Tensor, update: Any
    ) -> dict[str, Any]:
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
            direction = self._flat_update(op, update)
            u_fraction, u_overlaps, u_norm = projection_statistics(vectors, direction)
            stats.update(
                update_norm=u_norm,
                update_fraction=u_fraction,
                update_overlap=u_overlaps,
                update_grad_cosine=cosine(direction, gradient),
            )
        return stats

    @staticmethod
    def _flat_update(op: HessianOperator, update: Any) -> torch.Tensor:
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

    # ------------------------------------------------------------------ validation
    def _check_step(self, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if int(step) in self.steps:
            raise ValueError(
                f"step {step} is already recorded in {self.path}; each step is recorded once "
                "(use maybe_record to skip recorded steps when resuming)"
            )
        return int(step)

    @staticmethod
    def _check_scalars(scalars: dict[str, Any]) -> dict[str, float]:
        out = {}
        for key, value in scalars.items():
            if key in RESERVED:
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
                raise TypeError(
                    f"scalar {key!r} must be a number, got {type(value).__name__}"
                ) from exc
        return out

    # ------------------------------------------------------------------ storage
    def _append(self, record: xr.Dataset) -> None:
        if self._data is None or self._replace:
            grown = record
        else:
            previous = self._data.copy()
            previous.attrs = {}
            grown = xr.concat(
                [previous, record],
                dim="step",
                join="outer",
                data_vars="minimal",
                coords="minimal",
                compat="override",
                combine_attrs="override",
            ).sortby("step")
            grown.attrs = record.attrs
        # on disk before record returns; only rank 0 writes
        _distributed.write_on_main(write_run, grown, self.path, self._distributed)
        self._data, self._replace = grown, False
