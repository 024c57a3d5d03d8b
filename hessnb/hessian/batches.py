"""One batch of data as the data pass sees it: checked, moved, sized and scored."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["batch_size", "correct_count", "first_tensor", "move", "prepare"]


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor inside ``obj`` (a tensor, or nested lists, tuples and dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def move(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """``obj`` with every tensor on ``device`` (floating ones cast to ``dtype`` if given)."""
    if isinstance(obj, torch.Tensor):
        cast = dtype if (dtype is not None and obj.is_floating_point()) else None
        return obj.to(device=device, dtype=cast, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device, dtype) for v in obj)
    return obj


def prepare(
    batch: Any, index: int, device: torch.device, dtype: torch.dtype, transfer: bool
) -> tuple[Any, Any]:
    """``(inputs, targets)`` of batch ``index`` on ``device``, inputs cast to ``dtype``.

    Raises
    ------
    TypeError
        If the batch is not a pair.
    ValueError
        If the inputs are on another device and ``transfer`` is off.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch {index} is a {type(batch).__name__}; each batch must be a pair "
            "(inputs, targets)"
        )
    inputs, targets = batch
    if transfer:
        inputs, targets = move(inputs, device, None), move(targets, device, None)
    tensor = first_tensor(inputs)
    if tensor is not None and tensor.device != device:
        raise ValueError(
            f"batch {index} has inputs on {tensor.device} but the model is on "
            f"{device}; move the data to {device} or pass transfer=True"
        )
    return move(inputs, device, dtype), targets


def batch_size(inputs: Any, targets: Any) -> int:
    """Examples in a batch: the leading size of the targets (else of the inputs)."""
    for obj in (targets, inputs):
        tensor = first_tensor(obj)
        if tensor is not None and tensor.ndim > 0:
            return int(tensor.shape[0])
    raise TypeError("cannot tell the batch size: neither inputs nor targets hold a tensor")


def correct_count(outputs: Any, targets: Any) -> float | None:
    """Number of correct predictions when this looks like classification, else None."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return None
    if outputs.shape[0] != targets.shape[0]:
        return None
    return float((outputs.detach().argmax(dim=1) == targets).sum())
