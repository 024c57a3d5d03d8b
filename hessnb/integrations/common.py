"""What the training-framework callbacks share: a :class:`~hessnb.Tracker` built when
training starts, the module and batches it is built on, and the resume check.

Nothing here imports a training framework; :mod:`hessnb.integrations.lightning` and
:mod:`hessnb.integrations.transformers` adapt :class:`LazyTracker` to their hooks.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hessnb import distributed as dist
from hessnb.hessian.operator import LossFn
from hessnb.tracking.schedule import Schedule, make_schedule
from hessnb.tracking.tracker import Tracker
from hessnb.validation import check_positive_int

__all__ = [
    "SUMMARY",
    "BatchesSpec",
    "LazyTracker",
    "ModuleSpec",
    "ShardedBatches",
    "optimizer_scalars",
    "resolve_module",
    "summary_metrics",
]

#: The Hessian batches: an iterable of ``(inputs, targets)``, or a callable returning one
#: (called when training starts, after the framework has set up ``torch.distributed``).
BatchesSpec = Iterable[tuple[Any, Any]] | Callable[[], Iterable[tuple[Any, Any]]]

#: Which module the Hessian is taken of: ``None`` (the framework's model), the dotted name
#: of a submodule, or a callable mapping the framework's model to a module.
ModuleSpec = str | Callable[[nn.Module], nn.Module] | None

#: Scalars of a record reported to a framework's loggers (``hessian/<name>``); a top-k
#: record (``top_every``) has no density, so its ``trace`` is NaN and is left out.
SUMMARY = ("trace", "grad_fraction", "outlier_gap", "negative_mass", "n_outliers")


class ShardedBatches:
    """This rank's shard of a dataset in fixed batches, built when training starts.

    Pass it as ``batches`` to a callback: each rank then takes the Hessian over its own
    contiguous shard (:func:`hessnb.distributed.shard`), the products are all-reduced, and
    the whole dataset is covered exactly once. On one process it is the whole dataset.
    Being a plain object (not a lambda), it pickles for spawn-based launchers.

    Parameters
    ----------
    dataset : Dataset
        A map-style dataset with ``len`` (no random augmentation: the Hessian's batches
        must be the same at every pass).
    batch_size : int
        Examples per batch (with batch norm in train mode, the training batch size).
    materialise : bool
        Hold the shard's batches in memory as a list (small datasets; lets the operator
        keep graphs between Lanczos steps) instead of a non-shuffling ``DataLoader``.
    num_workers : int
        Loader processes when not materialised.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        materialise: bool = True,
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.materialise = materialise
        self.num_workers = num_workers

    def __call__(self) -> list[tuple[Any, Any]] | DataLoader:
        """The batches of this rank's shard (rank and world from ``torch.distributed``)."""
        loader = DataLoader(
            dist.shard(self.dataset),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        if not self.materialise:
            return loader
        return [(inputs, targets) for inputs, targets in loader]

    def __repr__(self) -> str:
        return f"ShardedBatches({type(self.dataset).__name__}, batch_size={self.batch_size})"


def resolve_module(root: nn.Module, module: ModuleSpec) -> nn.Module:
    """The module to take the Hessian of: ``root``, a named submodule, or ``module(root)``.

    Raises
    ------
    TypeError
        If the result is not an ``nn.Module``.
    """
    if module is None:
        chosen = root
    elif isinstance(module, str):
        try:
            chosen = root.get_submodule(module)
        except AttributeError as exc:
            names = [n for n, _ in root.named_children()][:8]
            raise ValueError(
                f"{type(root).__name__} has no submodule {module!r}; its children are {names}"
            ) from exc
    elif callable(module):
        chosen = module(root)
    else:
        raise TypeError(
            f"module must be None, a submodule name or a callable, got {type(module).__name__}"
        )
    if not isinstance(chosen, nn.Module):
        raise TypeError(f"module gave a {type(chosen).__name__}, not a torch.nn.Module")
    return chosen


def optimizer_scalars(optimizers: Sequence[torch.optim.Optimizer] | None) -> dict[str, float]:
    """``lr`` and (heavy-ball) ``momentum`` of the first optimizer's first parameter group.

    What the sharpness chart's stability threshold ``(2 + 2 momentum) / lr`` needs; each is
    left out when the group has none (Adam has ``betas``, not ``momentum``).
    """
    if not optimizers or not optimizers[0].param_groups:
        return {}
    group = optimizers[0].param_groups[0]
    values = {}
    for name in ("lr", "momentum"):
        value = group.get(name)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
    return values


def summary_metrics(record: xr.Dataset, prefix: str = "hessian/") -> dict[str, float]:
    """The top eigenvalue and :data:`SUMMARY` scalars of one record, finite ones only."""
    metrics = {}
    if "top_eigenvalues" in record:
        metrics[f"{prefix}top_eigenvalue"] = float(record["top_eigenvalues"].values.flat[0])
    for name in SUMMARY:
        if name in record and record[name].size == 1:
            metrics[f"{prefix}{name}"] = float(record[name].values)
    return {name: value for name, value in metrics.items() if math.isfinite(value)}


class LazyTracker:
    """A :class:`~hessnb.Tracker` built when training starts, shared by the callbacks.

    The framework's callback calls :meth:`start` when training starts (the model on its
    device, ``torch.distributed`` set up, a checkpoint's weights and step restored), then
    :meth:`maybe_record` with the framework's optimizer-step count before each optimizer
    step. Every rank must make these calls: under ``torch.distributed`` the Tracker
    all-reduces its Hessian-vector products and only rank 0 reads and writes the file.

    Parameters
    ----------
    path, loss_fn, every
        As for :class:`~hessnb.Tracker`.
    batches : iterable or callable
        The Hessian's batches, or a callable returning them (see :class:`ShardedBatches`).
        Under ``torch.distributed`` they are this rank's shard.
    module : None, str or callable
        See :func:`resolve_module`.
    tracker_options
        Further keywords for :class:`~hessnb.Tracker`; ``transfer`` defaults to True
        (batches follow the model to the device the framework chose).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        loss_fn: LossFn,
        batches: BatchesSpec,
        every: int | str | Sequence[int] | Schedule,
        module: ModuleSpec,
        tracker_options: Mapping[str, Any],
    ) -> None:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        for taken in ("model", "loss_fn", "batches", "path", "every"):
            if taken in tracker_options:
                raise TypeError(f"{taken} is an argument of the callback, not a Tracker option")
        self.path = Path(path)
        self.loss_fn = loss_fn
        self.batches = batches
        self.schedule = make_schedule(every)  # a bad schedule fails now, not at fit time
        self.module = module
        self.options = {"transfer": True, **tracker_options}
        self.tracker: Tracker | None = None
        self.model: nn.Module | None = None
        self.saved_steps: list[int] | None = None  # from a checkpoint (load_state)

    # ------------------------------------------------------------------ lifecycle
    def start(self, root: nn.Module) -> Tracker:
        """Build the Tracker on ``root``'s module (reused while that module is the same).

        Opening an existing file resumes it: its steps are kept and never recorded again.
        Warns (rank 0) when a checkpoint's callback state lists steps the file lacks.
        """
        model = resolve_module(root, self.module)
        if self.tracker is None or self.model is not model:
            batches = self.batches() if callable(self.batches) else self.batches
            try:
                self.tracker = Tracker(
                    model, self.loss_fn, batches, self.path, every=self.schedule, **self.options
                )
            except NotImplementedError as exc:
                children = [n for n, _ in model.named_children()][:8]
                raise NotImplementedError(
                    f"{exc}: the Hessian is taken of loss_fn(model(inputs), targets); give "
                    f"{type(model).__name__} a forward, or pass module= with the submodule "
                    f"to use (its children: {children})"
                ) from exc
            self.model = model
        self.check_resumed()
        return self.tracker

    def check_resumed(self) -> None:
        """Warn when the checkpoint says steps were recorded that the run file lacks."""
        if self.saved_steps is None or self.tracker is None or self.options.get("overwrite"):
            return
        missing = sorted(set(self.saved_steps) - set(self.tracker.steps))
        self.saved_steps = None
        if missing and dist.is_main():
            warnings.warn(
                f"the checkpoint was saved after steps {missing[:10]} had been recorded in "
                f"{self.path}, but that file lacks them (moved, deleted or replaced?); "
                "tracking goes on in it without them",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ recording
    def due(self, step: int) -> bool:
        """Whether a record (full or top-k) is due at ``step`` and not yet made."""
        tracker = self.tracker
        return tracker is not None and (tracker.due(step) or tracker.top_due(step))

    def maybe_record(self, step: int, scalars: Mapping[str, float]) -> xr.Dataset | None:
        """Record at ``step`` if due; return the record, or None when nothing was due."""
        if self.tracker is None or not self.due(step):
            return None
        with torch.enable_grad():
            recorded = self.tracker.maybe_record(int(step), **scalars)
        return self.tracker.dataset.sel(step=int(step)) if recorded else None

    def record_last(self, step: int, scalars: Mapping[str, float]) -> xr.Dataset | None:
        """A full record at the final ``step`` unless it is already recorded."""
        if self.tracker is None or not self.tracker.due(int(step), final=True):
            return None
        with torch.enable_grad():
            return self.tracker.record(int(step), **scalars)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the run file and the steps recorded so far."""
        steps = self.tracker.steps if self.tracker is not None else (self.saved_steps or [])
        return {"path": str(self.path), "steps": list(steps)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Remember a checkpoint's recorded steps, checked against the file at :meth:`start`."""
        self.saved_steps = [int(s) for s in state.get("steps", [])]
