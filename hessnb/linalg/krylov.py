"""Storage of the float64 Krylov basis: on the device, in (pinned) CPU memory, or on disk.

A Lanczos run with full re-orthogonalisation keeps every Lanczos vector: ``probes x steps
x n_params`` float64 numbers (8 GB for ResNet-18 at 90 steps). This module holds them where
:mod:`hessnb.linalg.memory` says and does the Gram-Schmidt products against them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from hessnb.linalg.memory import (
    PLACEMENTS,
    available_bytes,
    choose_placement,
    human_bytes,
    krylov_bytes,
)

__all__ = ["KrylovBasis"]


@dataclass
class KrylovBasis:
    """Orthonormal Lanczos vectors of shape ``(probes, steps, dim)``, float64.

    Use :meth:`allocate`; ``placement`` is where the numbers live and ``device`` where the
    vectors passed in and out live (they are moved as needed).
    """

    storage: torch.Tensor
    placement: str
    device: torch.device
    path: str | None = None

    @classmethod
    def allocate(
        cls,
        probes: int,
        steps: int,
        dim: int,
        *,
        placement: str = "device",
        device: torch.device | str = "cpu",
        directory: str | None = None,
    ) -> KrylovBasis:
        """Allocate the basis, refusing with a clear message when it cannot fit.

        Parameters
        ----------
        probes, steps, dim : int
            Shape of the basis.
        placement : {"device", "cpu", "mmap", "auto"}
            ``"device"``: same device as the vectors; ``"cpu"``: host memory (pinned
            when the vectors are on CUDA); ``"mmap"``: a memory-mapped temporary file in
            ``directory`` (default ``$TMPDIR``); ``"auto"``: the first that fits.
        """
        device = torch.device(device)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        nbytes = krylov_bytes(probes, steps, dim)
        if placement == "auto":
            placement = choose_placement(nbytes, device) or "mmap"
        shape = (probes, steps, dim)
        if placement == "mmap":
            fd, path = tempfile.mkstemp(prefix="hessnb-basis-", suffix=".f64", dir=directory)
            os.close(fd)
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)
            return cls(torch.from_numpy(array), "mmap", device, path)
        where = device if placement == "device" else torch.device("cpu")
        free = available_bytes("device" if placement == "device" else "cpu", where)
        if nbytes > free:
            raise MemoryError(
                f"the Krylov basis needs {human_bytes(nbytes)} ({probes} probes x {steps} steps x "
                f"{dim} parameters x 8 bytes) but only {human_bytes(free)} is free on "
                f"{placement!r}; pass placement='cpu', 'mmap' or 'auto', or use fewer "
                "steps or probes"
            )
        pin = placement == "cpu" and device.type == "cuda"
        storage = torch.zeros(shape, dtype=torch.float64, device=where, pin_memory=pin)
        return cls(storage, placement, device)

    @property
    def nbytes(self) -> int:
        """Size of the basis in bytes."""
        return self.storage.numel() * 8

    def store(self, probes: torch.Tensor, step: int, vectors: torch.Tensor) -> None:
        """Write ``vectors`` ``(len(probes), dim)`` as Lanczos vector ``step`` of ``probes``."""
        # copy_ is synchronous across devices: a non_blocking device-to-host copy could
        # still be in flight when the CPU reads the values.
        if len(probes) == self.storage.shape[0]:
            self.storage[:, step].copy_(vectors)
        else:
            for row, p in enumerate(probes.tolist()):
                self.storage[p, step].copy_(vectors[row])

    def orthogonalise(self, probes: torch.Tensor, count: int, w: torch.Tensor) -> torch.Tensor:
        """One Gram-Schmidt pass: ``w - Q Q^T w`` against the first ``count`` vectors.

        ``w`` has shape ``(len(probes), dim)``; the result is on ``w``'s device. Two matrix-
        vector products per probe, done as one batched product when all probes are active.
        """
        x = w.to(self.storage.device)
        if len(probes) == self.storage.shape[0]:
            q = self.storage[:, :count]  # (p, count, dim), a view
            coeffs = torch.bmm(q, x.unsqueeze(2))
            x = x - torch.bmm(q.transpose(1, 2), coeffs).squeeze(2)
        else:
            rows = []
            for row, p in enumerate(probes.tolist()):
                q = self.storage[p, :count]
                rows.append(x[row] - q.T @ (q @ x[row]))
            x = torch.stack(rows)
        return x.to(w.device)

    def vectors(self, probe: int, count: int) -> torch.Tensor:
        """The first ``count`` Lanczos vectors of one probe, ``(count, dim)`` (a view)."""
        return self.storage[probe, :count]

    def close(self) -> None:
        """Release the storage (and delete the memory-mapped file)."""
        self.storage = torch.empty(0, dtype=torch.float64)
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
            self.path = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
