"""Track the Hessian spectrum inside the Hugging Face ``Trainer``: :class:`HessianTrainerCallback`.

Needs the ``transformers`` extra: ``pip install "hessnb[transformers]"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hessnb.hessian.operator import LossFn
from hessnb.integrations.common import BatchesSpec, LazyTracker, ModuleSpec, optimizer_scalars
from hessnb.tracking.schedule import Schedule
from hessnb.tracking.tracker import Tracker

__all__ = ["HessianTrainerCallback", "KeywordInputs"]

#: ``scalars(args, state) -> {name: number}``: extra per-step numbers to store.
ScalarsFn = Callable[[TrainingArguments, TrainerState], Mapping[str, float]]


class KeywordInputs(nn.Module):
    """A module whose ``forward(inputs)`` calls ``model(**inputs)`` for a mapping.

    Hugging Face models take their inputs as keywords (``input_ids=...``,
    ``attention_mask=...``) while the Hessian's batches are ``(inputs, targets)`` pairs
    passed as ``model(inputs)``: give ``module=KeywordInputs`` (or
    ``module=functools.partial(KeywordInputs, output="logits")``) and batches whose inputs
    are dicts.

    Parameters
    ----------
    model : nn.Module
        The wrapped model (its parameters are this module's, under ``model.``).
    output : str, optional
        Return this item of the model's output (e.g. ``"logits"``), so that ``loss_fn``
        can be ``F.cross_entropy`` and records hold the accuracy; default: the whole
        output (then ``loss_fn`` picks from it, and no accuracy is recorded).
    """

    def __init__(self, model: nn.Module, output: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, inputs: Any) -> Any:
        """``model(**inputs)`` for a mapping, else ``model(inputs)``; ``output`` of it."""
        result = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)
        return result if self.output is None else result[self.output]


class HessianTrainerCallback(TrainerCallback):
    """Record Hessian spectra on a :class:`~hessnb.Tracker` schedule in ``Trainer.train``.

    At ``on_step_begin``, before the optimizer step that takes ``state.global_step`` from
    ``s`` to ``s + 1`` (once per step under gradient accumulation), the callback calls
    :meth:`Tracker.maybe_record(s, lr=..., momentum=...) <hessnb.Tracker.maybe_record>`:
    step numbers in the run file are the Trainer's ``global_step``. Evaluation records
    nothing.

    Parameters
    ----------
    path, loss_fn, batches, every, record_last, **tracker_options
        As for :class:`hessnb.integrations.lightning.HessianCallback` (``transfer``
        defaults to True).
    module : None, str or callable
        The module the Hessian is taken of: the Trainer's model (default; it is called as
        ``model(inputs)``), the dotted name of a submodule, or a callable of the model,
        e.g. :class:`KeywordInputs` for models that take keyword inputs.
    scalars : callable, optional
        ``scalars(args, state) -> {name: number}``, stored with each record besides
        ``lr`` and ``momentum`` (of the optimizer's first parameter group at this step;
        ``momentum`` only for optimizers that have one, e.g. SGD).

    Attributes
    ----------
    tracker : Tracker or None
        The Tracker, built at ``on_train_begin``.

    Notes
    -----
    Distributed training (``torchrun``/``accelerate launch``) works as for the Lightning
    callback: each rank's ``batches`` are its shard
    (:class:`hessnb.integrations.ShardedBatches`), products are all-reduced and only rank
    0 writes. Resuming with ``trainer.train(resume_from_checkpoint=...)`` reopens the run
    file and skips the steps already in it. Unlike the Lightning callback, nothing is
    stored in the Trainer's checkpoints: the run file is the record of what was recorded.
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
        record_last: bool = False,
        **tracker_options: Any,
    ) -> None:
        self.core = LazyTracker(path, loss_fn, batches, every, module, tracker_options)
        self.scalars = scalars
        self.record_last = record_last

    @property
    def tracker(self) -> Tracker | None:
        """The Tracker (``None`` before training starts)."""
        return self.core.tracker

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Build (or reopen) the Tracker on the Trainer's (unwrapped) model."""
        if model is None:
            raise ValueError("the Trainer passed no model to on_train_begin")
        self.core.start(model)

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Record at ``state.global_step`` if due, before this step's optimizer update."""
        step = state.global_step
        if self.core.due(step):
            self.core.maybe_record(step, self.step_scalars(args, state, optimizer))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """With ``record_last``, record the final parameters at the final step."""
        if self.record_last:
            step = state.global_step
            self.core.record_last(step, self.step_scalars(args, state, optimizer))

    def step_scalars(
        self,
        args: TrainingArguments,
        state: TrainerState,
        optimizer: torch.optim.Optimizer | None,
    ) -> dict[str, float]:
        """``lr``, ``momentum`` and the user's ``scalars`` for the record at this step."""
        values = optimizer_scalars([optimizer] if optimizer is not None else None)
        if self.scalars is not None:
            values.update(self.scalars(args, state))
        return values
