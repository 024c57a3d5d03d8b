"""``torch.distributed`` support: ranks, data shards, all-reduced HVP sums, rank-0 writing.

hessnb launches no processes of its own: start them with ``torchrun`` (NCCL on GPUs, gloo on
CPU). Each rank owns a contiguous, non-overlapping shard of the dataset (:func:`shard`: no
shuffling, no padding, every example exactly once), sums its batch-size-weighted Hessian-
vector products, and :func:`all_reduce_sum` gives every rank the full-dataset sums. The
Lanczos iteration then runs identically on every rank (same seeded CPU probe vectors, same
all-reduced products), and only rank 0 writes files (:func:`write_on_main`).

Everything here degrades to the single-process case when ``torch.distributed`` is not
initialised: rank 0 of a world of size 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

__all__ = [
    "all_reduce_sum",
    "barrier",
    "from_main",
    "init_from_env",
    "is_initialized",
    "is_main",
    "local_world_size",
    "rank",
    "shard",
    "shard_bounds",
    "shutdown",
    "use_distributed",
    "world_size",
    "write_on_main",
]

T = TypeVar("T")

#: How long a collective waits for the slowest rank (a full ImageNet pass can take an hour).
TIMEOUT = timedelta(hours=2)


# ---------------------------------------------------------------------- process group
def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is running."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; they share its RAM)."""
    if not is_initialized():
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints and writes files."""
    return rank() == 0


def use_distributed(flag: bool | None) -> bool:
    """Resolve a ``distributed=`` option: ``None`` means "when a group of > 1 runs".

    Raises
    ------
    ValueError
        If ``flag`` is True but no process group is initialised.
    """
    if flag is None:
        return is_initialized() and world_size() > 1
    if flag and not is_initialized():
        raise ValueError(
            "distributed=True but torch.distributed is not initialised; launch with torchrun "
            "and call hessnb.distributed.init_from_env() (or torch.distributed."
            "init_process_group) before building the operator"
        )
    return bool(flag)


def init_from_env(device_type: str | None = None) -> bool:
    """Initialise the process group from torchrun's environment, if it asks for one.

    Uses NCCL with one GPU per process (``cuda:LOCAL_RANK``) when ``device_type`` is
    ``"cuda"`` (default: when CUDA is available), gloo otherwise.

    Returns
    -------
    bool
        Whether this call started the group (then call :func:`shutdown` at the end). False
        when already initialised or when ``WORLD_SIZE`` is absent or 1.
    """
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return True


def shutdown() -> None:
    """Destroy the process group (after a final barrier); no-op when not distributed."""
    if is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; no-op when not distributed."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------- data
def shard_bounds(n: int, world: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``index`` of ``n`` examples split over ``world`` ranks.

    Shards are contiguous, disjoint, cover ``0..n-1`` exactly once, and differ in size by
    at most one example (the first ``n % world`` shards hold the extra ones).
    """
    if world < 1 or not 0 <= index < world:
        raise ValueError(f"shard index {index} out of range for {world} ranks")
    if n < world:
        raise ValueError(
            f"cannot split {n} examples over {world} processes without an empty shard; "
            "use fewer processes or more data"
        )
    return index * n // world, (index + 1) * n // world


def shard(dataset: Dataset, index: int | None = None, world: int | None = None) -> Dataset:
    """This rank's contiguous shard of ``dataset`` (the whole dataset on one process).

    Parameters
    ----------
    dataset : Dataset
        Any map-style dataset with ``len``; its order is kept (no shuffling, no padding).
    index, world : int, optional
        Rank and number of ranks (default: from ``torch.distributed``).
    """
    world = world_size() if world is None else world
    index = rank() if index is None else index
    if world == 1:
        return dataset
    start, stop = shard_bounds(len(dataset), world, index)
    return Subset(dataset, range(start, stop))


# ---------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks; every rank gets the same result.

    Tensors on the CPU are moved to the current CUDA device and back when the group uses
    NCCL (which only reduces GPU tensors).
    """
    if not is_initialized():
        return tensor
    moved = dist.get_backend() == "nccl" and tensor.device.type != "cuda"
    work = tensor.to(torch.device("cuda", torch.cuda.current_device())) if moved else tensor
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device) if moved else work


def from_main(fn: Callable[[], T], enabled: bool = True) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result (or raise its error).

    Use it for decisions that must agree across ranks, such as reading the run file to
    know which steps are already recorded. With ``enabled=False`` (or one process) it just
    calls ``fn``.
    """
    if not (enabled and is_initialized() and world_size() > 1):
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = (True, fn())
        except Exception as exc:  # every rank must learn about the failure, not hang
            box[0] = (False, exc)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def write_on_main(
    write: Callable[[Any, Path], None], obj: Any, path: str | os.PathLike, enabled: bool = True
) -> None:
    """``write(obj, path)`` on rank 0 only; the other ranks wait for it and share its errors."""
    from_main(lambda: write(obj, Path(path)), enabled)
