"""Track the Hessian spectrum inside Lightning's ``Trainer.fit``: :class:`HessianCallback`.

Needs the ``lightning`` extra: ``pip install "hessnb[lightning]"``.

Example
-------
>>> from hessnb.integrations import ShardedBatches
>>> from hessnb.integrations.lightning import HessianCallback
>>> callback = HessianCallback(
...     "run.nc", F.cross_entropy, ShardedBatches(train_set, 128), every="log"
... )  # doctest: +SKIP
>>> lightning.Trainer(max_steps=1000, callbacks=[callback]).fit(module)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import xarray as xr

from hessnb.hessian.operator import LossFn
from hessnb.integrations.common import (
    BatchesSpec,
    LazyTracker,
    ModuleSpec,
    optimizer_scalars,
    summary_metrics,
)
from hessnb.tracking.schedule import Schedule
from hessnb.tracking.tracker import Tracker

__all__ = ["HessianCallback"]

#: ``scalars(trainer, pl_module)``: extra per-step numbers to store with each record.
ScalarsFn = Callable[[pl.Trainer, pl.LightningModule], Mapping[str, float]]


class HessianCallback(pl.Callback):
    """Record Hessian spectra on a :class:`~hessnb.Tracker` schedule during ``Trainer.fit``.

    Before the optimizer step that takes ``trainer.global_step`` from ``s`` to ``s + 1``
    (at the first micro-batch, so once per step under gradient accumulation), the
    callback calls :meth:`Tracker.maybe_record(s, lr=..., momentum=...)
    <hessnb.Tracker.maybe_record>`:
    step numbers in the run file are ``trainer.global_step``, and step ``s`` holds the
    parameters after ``s`` optimizer steps, as in a hand-written loop. Validation, the
    sanity check and testing record nothing. The model keeps its train mode: each record
    sets evaluation semantics (dropout off, batch norm per ``bn_mode``) and restores it.

    Parameters
    ----------
    path : str or path
        The netCDF run file. An existing file with the same settings is resumed.
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch.
    batches : iterable of (inputs, targets), or a callable returning one
        The fixed Hessian data (no shuffling, no augmentation). A callable is called when
        training starts, on every rank: use :class:`hessnb.integrations.ShardedBatches`
        under DDP (see Notes).
    every : int, "log", "log:N", list of int or Schedule
        When to record (see :class:`~hessnb.Tracker`).
    module : None, str or callable
        The module the Hessian is taken of: the LightningModule (default; its ``forward``
        must map a batch's inputs to the outputs ``loss_fn`` takes), the dotted name of
        a submodule such as ``"net"``, or a callable ``module(pl_module)``.
    scalars : callable, optional
        ``scalars(trainer, pl_module) -> {name: number}``: more numbers per record.
        ``lr`` and ``momentum`` of the first optimizer's first parameter group (at this
        step, after any scheduler) are always stored, as the sharpness chart's stability
        threshold needs them (``momentum`` only for optimizers that have one, e.g. SGD).
    log : bool
        Also send each record's top eigenvalue, trace, ``grad_fraction``, ``outlier_gap``,
        ``negative_mass`` and ``n_outliers`` to the trainer's loggers as
        ``hessian/<name>`` at that step (rank 0).
    record_last : bool
        Also make a full record at the last step when training ends (unless recorded).
    **tracker_options
        Any other :class:`~hessnb.Tracker` keyword (``lanczos_steps``, ``probes``,
        ``top_k``, ``top_every``, ``bn_mode``, ``dtype``, ``settings``, ``progress``,
        ``train_batch_size``, ...). ``transfer`` defaults to True, so the batches follow the
        model to the device Lightning chose.

    Attributes
    ----------
    tracker : Tracker or None
        The Tracker, built when training starts (``None`` before).

    Notes
    -----
    **Distributed training (DDP).** Every rank runs the callback and calls the Tracker at
    the same steps (``global_step`` agrees across ranks). The Tracker's
    ``distributed`` default sees Lightning's process group, so each rank's ``batches``
    are its shard of the Hessian data: the Hessian-vector products are all-reduced, every
    rank computes the same spectrum, and only rank 0 reads and writes the file. Pass
    :class:`~hessnb.integrations.ShardedBatches` (each rank builds its contiguous shard
    when training starts, once the process group is up). A plain list is taken as this
    rank's shard: the same full list on every rank still gives the right Hessian (a mean
    over duplicated data), at ``world_size`` times the work, and stores ``n_examples`` that
    many times too large. Strategies that shard the parameters (FSDP, DeepSpeed ZeRO-3) are
    not supported: the Tracker needs every parameter on every rank. With
    ``sync_batchnorm=True`` and ``bn_mode="train"``, batch norm synchronises its statistics
    across ranks inside the Hessian's passes too, so every rank needs the same number of
    batches (``ShardedBatches`` of a dataset the world size divides; or ``bn_mode="eval"``).

    **Resuming.** With ``Trainer.fit(..., ckpt_path=...)`` the Tracker reopens the run
    file: steps already in it are skipped (kept, never recomputed or duplicated), so a
    checkpoint older than the file's last record loses nothing. The checkpoint stores the
    run file's path and the steps recorded when it was saved; a warning says so if the
    reopened file lacks any of them.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        loss_fn: LossFn,
        batches: BatchesSpec,
        *,
        every: int | str | Sequence[int] | Schedule = 1,
        module: ModuleSpec = None,
        scalars: ScalarsFn | None = None,
        log: bool = True,
        record_last: bool = False,
        **tracker_options: Any,
    ) -> None:
        super().__init__()
        self.core = LazyTracker(path, loss_fn, batches, every, module, tracker_options)
        self.scalars = scalars
        self.log = log
        self.record_last = record_last

    @property
    def tracker(self) -> Tracker | None:
        """The Tracker (``None`` before training starts)."""
        return self.core.tracker

    @property
    def state_key(self) -> str:
        """One checkpoint entry per run file, so several callbacks can share a Trainer."""
        return self._generate_state_key(path=str(self.core.path))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build (or reopen) the Tracker: the model is on its device, a checkpoint restored."""
        self.core.start(pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Record at ``trainer.global_step`` if due, before this step's optimizer update."""
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        if self.core.due(step):
            self.publish(trainer, step, self.core.maybe_record(step, self.step_scalars(trainer)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``record_last``, record the final parameters at the final step."""
        if self.record_last:
            step = trainer.global_step
            self.publish(trainer, step, self.core.record_last(step, self.step_scalars(trainer)))

    # ------------------------------------------------------------------ helpers
    def step_scalars(self, trainer: pl.Trainer) -> dict[str, float]:
        """``lr``, ``momentum`` and the user's ``scalars`` for the record at this step."""
        values = optimizer_scalars(trainer.optimizers)
        if self.scalars is not None:
            values.update(self.scalars(trainer, trainer.lightning_module))
        return values

    def publish(self, trainer: pl.Trainer, step: int, record: xr.Dataset | None) -> None:
        """Send a record's summary to the trainer's loggers (rank 0, with ``log``)."""
        if record is None or not self.log or not trainer.is_global_zero or not trainer.loggers:
            return
        metrics = summary_metrics(record)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The run file's path and the steps recorded so far."""
        return self.core.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's recorded steps to check the reopened file against."""
        self.core.load_state(state_dict)
