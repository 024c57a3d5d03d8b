"""Diagonal blocks of an operator: disjoint index sets, and Lanczos on all of them at once.

The block-diagonal part ``sum_b P_b A P_b`` of a symmetric operator ``A`` (``P_b`` the
coordinate projection onto block ``b``) maps a vector supported on block ``b`` to
``P_b A v``, again supported on block ``b``. So a Lanczos run started on block ``b`` stays
there and computes the spectrum of the diagonal block ``A_bb``, and the runs of every block
can share one block product: :func:`block_diagonal` multiplies all columns with ``A`` at
once (for a Hessian, one forward and first backward per batch for every block) and keeps
each column's own block. A column's block is read from its support, so the product works
on any subset of columns (Lanczos drops columns that break down).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Blocks", "block_diagonal", "index_blocks"]

Matmat = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Blocks:
    """Disjoint coordinate blocks of an ``n``-dimensional space.

    Attributes
    ----------
    labels : tuple of str
        One name per block (the ``block`` coordinate of a dataset).
    indices : tuple of torch.Tensor
        Sorted int64 coordinates of each block, non-empty and pairwise disjoint.
    dim : int
        Dimension ``n`` of the whole space.
    """

    labels: tuple[str, ...]
    indices: tuple[torch.Tensor, ...]
    dim: int

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("blocks is empty; name at least one block")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"block names must be unique, got {list(self.labels)}")
        owner = np.full(self.dim, -1)
        for label, index in zip(self.labels, self.indices, strict=True):
            if index.numel() == 0:
                raise ValueError(f"block {label!r} holds no coordinates")
            values = index.numpy()
            if values.min() < 0 or values.max() >= self.dim:
                raise ValueError(
                    f"block {label!r} has coordinates outside 0..{self.dim - 1}; the operator "
                    f"has dimension {self.dim}"
                )
            taken = owner[values] >= 0
            if taken.any():
                other = self.labels[int(owner[values[taken][0]])]
                raise ValueError(
                    f"blocks {other!r} and {label!r} share coordinates; diagonal blocks must "
                    "be disjoint"
                )
            owner[values] = self.labels.index(label)

    @property
    def sizes(self) -> list[int]:
        """Dimension of each block."""
        return [int(i.numel()) for i in self.indices]

    def owner(self, device: torch.device | None = None) -> torch.Tensor:
        """Block number of every coordinate, ``(n,)`` int64; -1 for coordinates in none."""
        owner = torch.full((self.dim,), -1, dtype=torch.int64)
        for b, index in enumerate(self.indices):
            owner[index] = b
        return owner.to(device or torch.device("cpu"))

    def scatter(self, block: int, vectors: torch.Tensor) -> torch.Tensor:
        """``(n_b, k)`` vectors of block ``block`` as ``(n, k)`` vectors, zero elsewhere."""
        out = torch.zeros(self.dim, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
        out[self.indices[block].to(vectors.device)] = vectors
        return out


def index_blocks(spec: Mapping[str, slice | Sequence[int] | np.ndarray], dim: int) -> Blocks:
    """Blocks from coordinates: ``{"name": slice(0, 10), "other": [10, 12, 14], ...}``.

    Raises
    ------
    ValueError
        For an empty mapping, empty or overlapping blocks, or coordinates outside
        ``0..dim-1``.
    TypeError
        For a value that is neither a slice nor a sequence of integers.
    """
    labels, indices = [], []
    for label, where in spec.items():
        if isinstance(where, slice):
            index = np.arange(dim)[where]
        else:
            index = np.asarray(where)
            if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                raise TypeError(
                    f"block {label!r} must be a slice or a 1-D sequence of integer "
                    f"coordinates, got {type(where).__name__}"
                )
        labels.append(str(label))
        indices.append(torch.as_tensor(np.unique(index), dtype=torch.int64))
    return Blocks(tuple(labels), tuple(indices), int(dim))


def block_diagonal(matmat: Matmat, blocks: Blocks, device: torch.device | None = None) -> Matmat:
    """The block-diagonal part of an operator, for columns supported on one block each.

    Parameters
    ----------
    matmat : callable
        ``V -> A V`` on float64 ``(n, k)`` tensors.
    blocks : Blocks
    device : torch.device, optional
        Device of the vectors (default CPU).

    Returns
    -------
    callable
        ``V -> W`` with ``W[:, j] = P_b A V[:, j]`` for the block ``b`` holding column
        ``j``'s largest entry; exactly zero outside that block. Every column must be
        supported on a single block (as the start vectors of :func:`hessnb.slq.estimate`
        with ``blocks`` are, and every Lanczos vector after them).
    """
    owner = blocks.owner(device)

    def product(vectors: torch.Tensor) -> torch.Tensor:
        column_block = owner[vectors.abs().argmax(dim=0)]
        keep = owner[:, None] == column_block[None, :]
        return torch.as_tensor(matmat(vectors)).to(torch.float64) * keep

    return product
