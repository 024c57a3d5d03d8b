"""Track the Hessian spectrum through training into a crash-safe run file.

The :class:`Tracker` is a schedule, a run file it resumes, and one
:class:`~hessnb.HessianOperator` that serves every record: call
:meth:`Tracker.maybe_record` inside any training loop. Each record
(:func:`~hessnb.tracking.record.record_step`) runs SLQ at the current parameters with the
same seeded probes every time, so steps are comparable, and is on disk before it returns.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from hessnb import distributed as dist
from hessnb.hessian.curvature import check_curvatures
from hessnb.hessian.operator import OPERATORS, LossFn
from hessnb.hessian.params import BlockSpec, ParamSpec
from hessnb.hessian.preconditioned import PreconditionedOperator
from hessnb.runfile import (
    append_record,
    check_compatible,
    open_run,
    stale_temporaries,
    write_run,
)
from hessnb.settings import SLQSettings
from hessnb.slq import describe_blocks
from hessnb.tracking.record import TOP_TOL, Recorded, join_curvatures, record_step, record_top
from hessnb.tracking.schedule import Schedule, make_schedule
from hessnb.validation import check_positive_int

__all__ = ["Tracker"]


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
        Schedule of full records (density, top-k, statistics): every N steps, log-spaced
        (dense early), or exactly these steps.
    top_every : int, optional
        Also record the top-k Ritz pairs and the gradient statistics every ``top_every``
        steps between full records (sharpness tracking): each such record starts from
        the previous record's Ritz vectors (:func:`hessnb.linalg.topk.top_eigenpairs`)
        and costs a few HVP blocks. These steps have ``has_density`` 0 and NaN density
        variables in the same run file.
    top_tol : float
        Relative Ritz residual at which a top-k record stops (see ``top_every``).
    lanczos_steps, probes, top_k, seed, deflate
        SLQ settings (see :func:`hessnb.spectrum`); the probes are the same at every step.
    settings : SLQSettings, optional
        The five settings at once (then leave the keywords at their defaults).
    curvature : {"hessian", "ggn", "fisher"} or sequence of them
        The curvature matrix recorded: the Hessian (default), the generalised Gauss-Newton
        matrix (:class:`~hessnb.GGNOperator`) or the empirical Fisher
        (:class:`~hessnb.EmpiricalFisherOperator`). A sequence records each of them at
        every record, along a ``curvature`` dimension of the run file (they share the
        loss and gradient pass; each runs its own Lanczos).
    blocks : "layers", "parameters" or mapping, optional
        Record the spectra of the diagonal blocks of the curvature instead of the whole
        (one per layer, per parameter, or per named group, see
        :meth:`hessnb.hessian.params.ParameterSpace.blocks`), along a ``block``
        dimension, all blocks in one lockstep Lanczos. Not with ``top_every``.
    precondition : torch.optim.Optimizer, optional
        An Adam-type optimizer (Adam, AdamW, NAdam, Adamax): record the curvature it sees,
        ``P^{-1/2} H P^{-1/2}`` with ``P`` its denominator at the time of each record
        (:class:`~hessnb.PreconditionedOperator`); gradient statistics are then those of
        ``P^{-1/2} g`` and ``update`` is taken to the same coordinates. A record before
        the optimizer's first step raises :class:`~hessnb.hessian.PreconditionerError`.
    bn_mode : {"train", "eval"}
        Batch-norm semantics of the Hessian (see :class:`~hessnb.HessianOperator`).
    train_batch_size : int, optional
        The training batch size. In BN train mode the Hessian's batch norm uses the
        statistics of each of ``batches``; a warning says so when their size differs from
        this (the paper's setting takes the training batch size). :func:`hessnb.reference.
        train` passes its own.
    params, dtype, transfer
        Passed to the operator.
    placement : {"device", "cpu", "mmap", "auto"}
        Where the Krylov basis lives.
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

    Notes
    -----
    The operator is built here (two passes over the data: validation and the determinism
    check) and kept: each record then costs the Lanczos passes (one fresh pass when the
    graph cache holds the data's graphs) and no extra operator construction.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        path: str | os.PathLike = "run.nc",
        *,
        every: int | str | Sequence[int] | Schedule = 1,
        top_every: int | None = None,
        top_tol: float = TOP_TOL,
        lanczos_steps: int = 90,
        probes: int = 1,
        top_k: int = 10,
        seed: int = 0,
        deflate: bool = True,
        settings: SLQSettings | None = None,
        curvature: str | Sequence[str] = "hessian",
        blocks: BlockSpec | None = None,
        precondition: torch.optim.Optimizer | None = None,
        bn_mode: str = "train",
        params: ParamSpec = None,
        dtype: torch.dtype | None = None,
        transfer: bool = False,
        placement: str = "device",
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
        progress: bool = True,
        distributed: bool | None = None,
        train_batch_size: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(
                f"folder {self.path.parent} does not exist; create it first or pass another path"
            )
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; pass a file path such as run.nc")
        self.schedule = make_schedule(every)
        self.top_every = None if top_every is None else check_positive_int("top_every", top_every)
        if not (isinstance(top_tol, (int, float)) and 0 < top_tol < 1):
            raise ValueError(f"top_tol must be a number in (0, 1), got {top_tol!r}")
        self.top_tol = float(top_tol)
        # warm starts of the next top-k record, per curvature
        self._vectors: dict[str, torch.Tensor] = {}
        chosen = SLQSettings.resolve(
            settings,
            lanczos_steps=lanczos_steps,
            probes=probes,
            top_k=top_k,
            seed=seed,
            deflate=deflate,
        )
        self._distributed = dist.use_distributed(distributed)
        self.curvatures = check_curvatures(curvature)
        self._stacked = not isinstance(curvature, str)
        if blocks is not None and self.top_every is not None:
            raise ValueError(
                "top_every records the top-k pairs of the whole curvature and blocks records "
                "per-block spectra; pass one of them (or track the blocks in a second Tracker)"
            )
        self.operators = {
            name: OPERATORS[name](
                model,
                loss_fn,
                batches,
                params=params,
                bn_mode=bn_mode,
                dtype=dtype,
                transfer=transfer,
                distributed=self._distributed,
            )
            for name in self.curvatures
        }
        self.operator = self.operators[self.curvatures[0]]
        if precondition is not None and not isinstance(precondition, torch.optim.Optimizer):
            raise TypeError(
                "precondition must be the torch.optim optimizer whose curvature is recorded "
                f"(e.g. torch.optim.Adam), got {type(precondition).__name__}"
            )
        self.precondition = precondition
        self.blocks = None if blocks is None else self.operator.space.blocks(blocks)
        self._blocks_label = "none" if blocks is None else describe_blocks(blocks)
        self.settings = chosen.for_dimension(self.operator.n_params)
        if train_batch_size is not None:
            self.check_batch_size(train_batch_size)
        self.placement = placement
        self.progress = progress and (not self._distributed or dist.is_main())
        self.name = name
        self.extra_attrs = dict(attrs or {})
        self._replace = overwrite
        self._data: xr.Dataset | None = dist.from_main(self._open_existing, self._distributed)

    @property
    def file_settings(self) -> dict[str, Any]:
        """The attributes a resumed file must share (``hessnb.schema.SETTINGS``)."""
        return {
            **self.settings.as_attrs(),
            "n_params": self.operator.n_params,
            "bn_mode": self.operator.bn_mode,
            "curvature": " ".join(self.curvatures),
            "blocks": self._blocks_label,
            "preconditioner": (
                "none" if self.precondition is None else type(self.precondition).__name__.lower()
            ),
        }

    def _open_existing(self) -> xr.Dataset | None:
        """Remove temporaries of killed writers; open the run to resume (rank 0 only)."""
        for stale in stale_temporaries(self.path):
            stale.unlink()
        if not self.path.exists() or self._replace:
            return None
        existing = open_run(self.path)
        check_compatible(existing.attrs, self.file_settings, self.path)
        return existing

    def check_batch_size(self, train_batch_size: int) -> bool:
        """Warn when BN train-mode Hessian batches differ from ``train_batch_size``.

        Returns
        -------
        bool
            Whether the Hessian's batch statistics match training (True without batch norm
            or in eval mode, where the batch size does not change the Hessian).
        """
        op = self.operator
        if op.bn_mode != "train" or not op.has_batchnorm:
            return True
        sizes = op.batch_sizes
        full = sizes[:-1] if len(sizes) > 1 else sizes  # the last batch may be smaller
        if all(size == train_batch_size for size in full) and sizes[-1] <= train_batch_size:
            return True
        warnings.warn(
            f"batch norm in train mode normalises the Hessian's batches with their own "
            f"statistics, and these batches hold {sorted(set(sizes))} examples while training "
            f"uses {train_batch_size}; pass batches of {train_batch_size} (the paper's setting) "
            "or bn_mode='eval'",
            UserWarning,
            stacklevel=2,
        )
        return False

    # ------------------------------------------------------------------ queries
    @property
    def steps(self) -> list[int]:
        """Steps recorded so far (in this file)."""
        return [] if self._data is None else [int(s) for s in self._data["step"].values]

    @property
    def dataset(self) -> xr.Dataset | None:
        """The run so far (``None`` before the first record)."""
        return self._data

    def due(self, step: int, final: bool = False) -> bool:
        """Whether a full record at ``step`` is scheduled (or ``final``) and not yet made."""
        return (final or step in self.schedule) and int(step) not in self.steps

    def top_due(self, step: int) -> bool:
        """Whether a top-k record (``top_every``) is due at ``step`` and none is made."""
        return (
            self.top_every is not None
            and int(step) % self.top_every == 0
            and int(step) not in self.steps
        )

    # ------------------------------------------------------------------ recording
    def maybe_record(self, step: int, **scalars: Any) -> bool:
        """Record if ``step`` is due: a full record on the schedule, else a top-k record
        when ``top_every`` divides it. Return whether it recorded."""
        if self.due(step):
            self.record(step, **scalars)
            return True
        if self.top_due(step):
            self.record_top(step, **scalars)
            return True
        return False

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
        bar = tqdm(
            total=self.settings.lanczos_steps * len(self.curvatures),
            desc=f"step {step}: Lanczos",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        records: dict[str, Recorded] = {}
        operators = self._current_operators()
        first = operators[self.curvatures[0]]
        try:
            with first.reuse_graphs():  # the loss and gradient pass serves every curvature
                evaluation = first.evaluate(gradient=True)
                for name, op in operators.items():
                    records[name] = record_step(
                        op,
                        step,
                        self.settings,
                        blocks=self.blocks,
                        evaluation=evaluation,
                        placement=self.placement,
                        on_step=lambda _j: bar.update(1),
                        update=update,
                        scalars=scalars,
                        attrs=self._attrs(),
                    )
        finally:
            bar.close()
        return self._store(self._joined(records))

    def record_top(
        self,
        step: int,
        *,
        update: torch.Tensor | Sequence[torch.Tensor] | None = None,
        **scalars: float,
    ) -> xr.Dataset:
        """Record the top-k Ritz pairs and gradient statistics at ``step`` (no density).

        Warm-started from the previous record's Ritz vectors (cold after a resume). The
        arguments are those of :meth:`record`.

        Returns
        -------
        xarray.Dataset
            The step's record, already on disk (``has_density`` 0, NaN density).
        """
        step = self._check_step(step)
        records = {
            name: record_top(
                op,
                step,
                self.settings,
                start=self._vectors.get(name),
                tol=self.top_tol,
                update=update,
                scalars=scalars,
                attrs=self._attrs(),
            )
            for name, op in self._current_operators().items()
        }
        return self._store(self._joined(records))

    def _current_operators(self) -> dict[str, Any]:
        """The operators of this record: each curvature's, seen through ``precondition``."""
        if self.precondition is None:
            return dict(self.operators)
        return {
            name: PreconditionedOperator.from_adam(op, self.precondition)
            for name, op in self.operators.items()
        }

    def _joined(self, records: dict[str, Recorded]) -> Recorded:
        """One record for the file: the curvature's, or all joined along ``curvature``."""
        self._vectors = {name: r.vectors for name, r in records.items()}
        first = records[self.curvatures[0]]
        if not self._stacked:
            return first
        return Recorded(join_curvatures({n: r.dataset for n, r in records.items()}), first.vectors)

    def _attrs(self) -> dict[str, Any]:
        return {
            **self.extra_attrs,
            **self.file_settings,
            "schedule": self.schedule.describe(),
            **({"top_every": self.top_every} if self.top_every is not None else {}),
            **({"run": self.name} if self.name is not None else {}),
        }

    def _store(self, recorded: Recorded) -> xr.Dataset:
        """Append a record to the run and write it (rank 0); keep its vectors."""
        previous = None if self._replace else self._data
        grown = append_record(previous, recorded.dataset)
        # on disk before record returns; only rank 0 writes
        dist.write_on_main(write_run, grown, self.path, self._distributed)
        self._data, self._replace = grown, False
        return recorded.dataset.isel(step=0)

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
