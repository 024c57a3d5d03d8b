"""Placement of the Krylov basis and refusal (:func:`hessnb.linalg.memory.plan_memory`),
with the free memory patched."""

from __future__ import annotations

import pytest
import torch

from hessnb.linalg import memory

MIB = 2**20


def _free_memory(monkeypatch: pytest.MonkeyPatch, ram: int, disk: int, gpu: int = 0) -> None:
    free = {"device": gpu, "cpu": ram, "disk": disk}
    monkeypatch.setattr(memory, "available_bytes", lambda where, device=None: free[where])


def test_auto_placement_falls_back_to_mmap_then_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    _free_memory(monkeypatch, ram=2**30, disk=10 * 2**30)
    plan = memory.plan_memory(1_000_000, 90, 1, 10, "auto", cpu, processes=2)
    assert plan.placement == "mmap"
    assert plan.basis_bytes == 8 * 90 * 1_000_000
    assert plan.needs["disk"] == 2 * 8 * 90 * 1_000_000  # one file per process
    assert "memory-mapped file" in plan.describe()
    assert memory.plan_memory(1000, 90, 1, 10, "auto", cpu).placement == "device"
    _free_memory(monkeypatch, ram=64 * MIB, disk=MIB)
    with pytest.raises(MemoryError, match=r"no placement has room.*TMPDIR"):
        memory.plan_memory(1_000_000, 90, 1, 10, "auto", cpu)


def test_gpu_placement_accounts_for_processes_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda", 0)  # only sizes are computed: no GPU needed
    _free_memory(monkeypatch, ram=64 * 2**30, disk=2**40, gpu=4 * 2**30)
    basis = 8 * 90 * 11_689_512  # ResNet-18, 90 steps: 7.8 GiB, more than the GPU has
    plan = memory.plan_memory(11_689_512, 90, 1, 10, "auto", gpu, processes=4)
    assert plan.placement == "cpu" and plan.needs["cpu"] == 4 * basis  # 4 ranks' bases
    assert "pinned RAM per process, 4 processes" in plan.describe()
    plan = memory.plan_memory(11_689_512, 90, 1, 10, "auto", gpu, processes=8)
    assert plan.placement == "mmap"  # 8 x 7.8 GiB of RAM is too much
    with pytest.raises(MemoryError, match="--placement device needs GPU"):
        memory.plan_memory(11_689_512, 90, 1, 10, "device", gpu)
