"""A plain SGD-with-momentum loop with learning-rate drops, tracking and resumable
checkpoints (for notebooks and the CLI; users with their own loop use the Tracker).

The minibatch order is a function of ``(seed, epoch)`` only, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from hessnb.runfile import atomic_write
from hessnb.tracking import Tracker

__all__ = ["learning_rate", "load_checkpoint", "save_checkpoint", "train"]

CHECKPOINT = "train_state.pt"


def learning_rate(step: int, lr: float, drops: Sequence[int], factor: float) -> float:
    """Step-wise schedule: ``lr * factor ** (number of drops at or before step)``."""
    return lr * factor ** sum(step >= d for d in drops)


def save_checkpoint(path: str | os.PathLike, **state: Any) -> None:
    """Save tensors/state dicts atomically (see :func:`hessnb.runfile.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(..., weights_only=True)`` (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _minibatches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def _gather(data: Dataset, rows: torch.Tensor) -> tuple[Any, Any]:
    if isinstance(data, TensorDataset):
        return data[rows]
    return default_collate([data[int(i)] for i in rows])


def train(
    model: nn.Module,
    data: Dataset,
    *,
    steps: int,
    loss_fn: Callable[[Any, Any], torch.Tensor] = nn.functional.cross_entropy,
    batch_size: int = 64,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_drops: Sequence[int] = (),
    lr_factor: float = 0.1,
    tracker: Tracker | Sequence[Tracker] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    record_final: bool = True,
) -> nn.Module:
    """Train ``model`` with SGD + momentum for ``steps`` minibatch steps.

    Parameters
    ----------
    model : nn.Module
        Trained in place (train mode during steps).
    data : Dataset
        Training examples ``(x, y)``; minibatches are drawn without replacement per epoch
        in an order fixed by ``seed``. Keep it in memory (a ``TensorDataset``) for speed.
    steps : int
        Number of SGD steps.
    lr, momentum, weight_decay : float
        SGD settings; ``lr`` is multiplied by ``lr_factor`` at each step in ``lr_drops``.
    tracker : Tracker or sequence of Tracker, optional
        Records (with ``lr=...``) at its scheduled steps, before the update of that step,
        so step ``s`` is the model after ``s`` updates; steps already in its file are
        skipped (resuming). Several trackers (e.g. the same model's Hessian with batch
        norm in train and in eval mode) record the same checkpoints.
    record_final : bool
        Also record the model after the last update (step ``steps``) when the schedule
        does not include it.
    checkpoint_dir : path, optional
        Save model and optimizer state after each recorded step (and at the end); an
        existing checkpoint there is resumed from.
    seed : int
        Seeds the minibatch order.
    progress : bool
        Show a progress bar.

    Returns
    -------
    nn.Module
        The trained model (same object).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    trackers = [] if tracker is None else [tracker] if isinstance(tracker, Tracker) else tracker
    for each in trackers:
        each.check_batch_size(batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    start = 0
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            state = load_checkpoint(ckpt)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
    device = next(model.parameters()).device
    n = len(data)
    per_epoch = -(-n // batch_size)
    bar = tqdm(total=steps, initial=start, desc="training", unit="step", disable=not progress)

    def checkpoint(step: int) -> None:
        if ckpt is not None:
            save_checkpoint(
                ckpt, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step
            )

    try:
        for step in range(start, steps + 1):
            rate = learning_rate(step, lr, lr_drops, lr_factor)
            final = record_final and step == steps
            scheduled = [t for t in trackers if step in t.schedule or final]
            for each in scheduled:
                if each.due(step, final=final):
                    each.record(step, lr=rate, momentum=momentum)
            if scheduled:
                checkpoint(step)
            for each in trackers:
                if each not in scheduled and each.top_due(step):
                    each.record_top(step, lr=rate, momentum=momentum)  # between densities
            if step == steps:
                break
            epoch, index = divmod(step, per_epoch)
            rows = _minibatches(n, batch_size, seed, epoch)[index]
            x, y = _gather(data, rows)
            for group in optimizer.param_groups:
                group["lr"] = rate
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at step {step} (loss {loss.item()}); lower lr"
                )
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        checkpoint(steps)
    finally:
        bar.close()
    return model
