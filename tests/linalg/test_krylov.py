"""Placement, storage and Gram-Schmidt of the float64 Krylov basis."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hessnb.linalg import krylov as krylov_module
from hessnb.linalg.krylov import KrylovBasis
from hessnb.linalg.memory import choose_placement, human_bytes, krylov_bytes

PLACEMENTS = ["device", "cpu", "mmap"]


def _orthonormal_rows(probes: int, count: int, dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(probes, dim, count, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(raw)
    return q.transpose(1, 2)  # (probes, count, dim), orthonormal rows


@pytest.fixture(params=PLACEMENTS)
def filled_basis(request, tmp_path):
    """A (3 probes, 6 steps, 20 dims) basis whose first 4 steps hold orthonormal vectors."""
    krylov = KrylovBasis.allocate(3, 6, 20, placement=request.param, directory=str(tmp_path))
    vectors = _orthonormal_rows(3, 4, 20)
    for step in range(4):
        krylov.store(torch.arange(3), step, vectors[:, step])
    yield krylov, vectors
    krylov.close()


def test_stored_vectors_read_back(filled_basis):
    krylov, vectors = filled_basis
    for p in range(3):
        assert torch.equal(krylov.vectors(p, 4), vectors[p])
    assert torch.all(krylov.storage[:, 4:] == 0)
    assert krylov.nbytes == krylov_bytes(3, 6, 20) == 8 * 3 * 6 * 20


def test_storing_for_a_subset_of_probes_touches_only_those(filled_basis):
    krylov, _ = filled_basis
    new = torch.randn(2, 20, dtype=torch.float64)
    krylov.store(torch.tensor([0, 2]), 4, new)
    assert torch.equal(krylov.storage[0, 4], new[0])
    assert torch.equal(krylov.storage[2, 4], new[1])
    assert torch.all(krylov.storage[1, 4] == 0)


def test_orthogonalise_removes_the_span(filled_basis):
    krylov, vectors = filled_basis
    w = torch.randn(3, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = krylov.orthogonalise(torch.arange(3), 4, w)
    for p in range(3):
        q = vectors[p]
        expected = w[p] - q.T @ (q @ w[p])
        np.testing.assert_allclose(out[p], expected, atol=1e-14)
        assert torch.max(torch.abs(q @ out[p])) < 1e-14
    subset = krylov.orthogonalise(torch.tensor([2, 0]), 4, w[[2, 0]])
    np.testing.assert_allclose(subset, out[[2, 0]], atol=1e-14)


def test_mmap_basis_lives_in_the_directory_and_is_removed_on_close(tmp_path):
    krylov = KrylovBasis.allocate(1, 2, 5, placement="mmap", directory=str(tmp_path))
    assert krylov.placement == "mmap" and os.path.dirname(krylov.path) == str(tmp_path)
    assert os.path.exists(krylov.path)
    krylov.close()
    krylov.close()  # closing twice is harmless
    assert list(tmp_path.iterdir()) == []


def test_unknown_placement_is_refused():
    with pytest.raises(ValueError, match=r"placement must be one of \('device', 'cpu', 'mmap'"):
        KrylovBasis.allocate(1, 2, 3, placement="gpu")


def test_basis_too_large_for_memory_is_refused_with_alternatives(monkeypatch):
    monkeypatch.setattr(krylov_module, "available_bytes", lambda where, device=None: 1000)
    with pytest.raises(MemoryError, match=r"needs 7\.0 KiB .*placement='cpu', 'mmap'"):
        KrylovBasis.allocate(2, 8, 56, placement="cpu")


@pytest.mark.parametrize(
    ("free_device", "free_cpu", "free_disk", "device", "expected"),
    [
        (0, 10_000, 0, "cpu", "device"),
        (0, 100, 10_000, "cpu", "mmap"),  # on a CPU run "cpu" is the device
        (100, 10_000, 0, "cuda", "cpu"),
        (100, 100, 10_000, "cuda", "mmap"),
        (100, 100, 100, "cuda", None),
    ],
)
def test_auto_placement_picks_the_first_that_fits_with_headroom(
    free_device, free_cpu, free_disk, device, expected
):
    free = {"device": free_device, "cpu": free_cpu, "disk": free_disk}
    assert choose_placement(1000, torch.device(device), free=free) == expected


def test_auto_placement_needs_headroom():
    free = {"device": 0, "cpu": 1200, "disk": 0}
    assert choose_placement(1000, torch.device("cpu"), free=free) is None
    free["cpu"] = 1250
    assert choose_placement(1000, torch.device("cpu"), free=free) == "device"


def test_human_bytes():
    assert human_bytes(512) == "512.0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**40) == "3.0 TiB"
