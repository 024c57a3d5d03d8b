"""Keep each batch's forward and first-backward graph between Hessian-vector products.

An HVP by double backward costs a forward pass, a first backward with ``create_graph``
and a second backward. Only the last depends on the vector: while the parameters do not
change (one Lanczos run), the first two can be done once and their graphs reused, which
makes each further HVP a single backward pass over saved tensors. The cache holds the
activations of the whole dataset, so it is used only within a memory budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from hessnb.linalg.memory import available_bytes

__all__ = ["BatchGraph", "GraphCache", "default_budget"]


@dataclass
class BatchGraph:
    """One batch's results: size, loss, correct count and (graph-carrying) gradients.

    ``products`` is the batch's ``H V`` as ``(n_params, k)`` float64 when a functional HVP
    backend computed it with the gradient; None when the products come from ``grads``'
    graphs (double backward).
    """

    size: int
    loss: float
    correct: float | None
    grads: tuple[torch.Tensor, ...] = ()
    live: list[int] = field(default_factory=list)
    kept: bool = False  # its graph is cached: retain it after each backward
    products: torch.Tensor | None = None


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory where the graphs live, at most 4 GiB."""
    where = "device" if device.type == "cuda" else "cpu"
    return min(4 * 2**30, available_bytes(where, device) // 4)


class GraphCache:
    """Per-batch graphs kept for reuse while the model's tensors are unchanged.

    Parameters
    ----------
    budget : int
        Largest number of bytes of saved tensors to keep; beyond it the cache gives up for
        the rest of the operator's life (every pass then recomputes, as without a cache).
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.entries: list[BatchGraph] = []
        self.saved_bytes = 0
        self._seen: set[int] = set()
        self.gave_up = False
        self._key: tuple | None = None

    def valid(self, key: tuple) -> bool:
        """Whether complete entries exist for the parameter state ``key``."""
        return bool(self.entries) and self._key == key

    def start(self, key: tuple) -> bool:
        """Begin filling for the state ``key``; return whether this pass should keep graphs."""
        self.entries, self.saved_bytes, self._seen = [], 0, set()
        self._key = key
        return not self.gave_up

    def keep(self, entry: BatchGraph) -> bool:
        """Keep one batch's graph; return False (and drop everything) if over budget."""
        if self.gave_up:
            return False
        if self.saved_bytes > self.budget:
            self.drop(give_up=True)
            return False
        entry.kept = True
        self.entries.append(entry)
        return True

    def drop(self, give_up: bool = False) -> None:
        """Release the graphs."""
        self.entries, self._key = [], None
        self.gave_up = self.gave_up or give_up

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """Count the bytes autograd saves for backward while building graphs."""

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self._seen:  # count shared storage once
                self._seen.add(storage.data_ptr())
                self.saved_bytes += storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
