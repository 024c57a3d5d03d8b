"""Distributed operator: gloo processes on the CPU give the one-process spectrum.

The worker runs in 2 and 3 forked (or spawned) processes (loopback only, bounded timeouts) on 101
examples, which no world size here divides, and in this process without a group.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from hessnb import HessianOperator, SLQSettings, Tracker, distributed, estimate, open_run
from hessnb.reference.data import fixed_batches
from hessnb.tracking import tracker as tracker_module

N_EXAMPLES, BATCH, STEPS, PROBES = 101, 8, 20, 2
TIMEOUT_S = 120


def _problem() -> tuple[nn.Module, TensorDataset]:
    """A float64 CNN with batch norm (eval mode) and 101 random 1x5x5 images, 4 classes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 4)
    ).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N_EXAMPLES, 1, 5, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (N_EXAMPLES,), generator=generator)
    return model, TensorDataset(x, y)


def _compute(out_dir: Path) -> dict[str, Any]:
    """Spectrum, gradient and a tracked step on this rank's shard."""
    writes = []
    original = tracker_module.write_run

    def counting_write(ds: Any, path: Any) -> None:
        writes.append(str(path))
        original(ds, path)

    tracker_module.write_run = counting_write  # count which ranks write the run file
    try:
        model, dataset = _problem()
        part = distributed.shard(dataset)
        batches = fixed_batches(part, BATCH)
        op = HessianOperator(model, F.cross_entropy, batches, bn_mode="eval")
        est = estimate(op, SLQSettings(lanczos_steps=STEPS, probes=PROBES, top_k=3, seed=3))
        evaluation = op.evaluate(gradient=True)
        loss, gradient = evaluation["loss"], evaluation["gradient"]

        def open_tracker() -> Tracker:
            return Tracker(
                model,
                F.cross_entropy,
                batches,
                out_dir / "run.nc",
                bn_mode="eval",
                every=[0],
                lanczos_steps=STEPS,
                probes=PROBES,
                top_k=3,
                seed=3,
                progress=False,
            )

        tracker = open_tracker()
        tracker.record(0)
        resumed = open_tracker()
    finally:
        tracker_module.write_run = original
    return {
        "shard": len(part),
        "n_examples": op.n_examples,
        "nodes": est.nodes,
        "weights": est.weights,
        "loss": loss,
        "gradient": gradient,
        "tracked_nodes": tracker.dataset["nodes"].values,
        "writes": len(writes),
        "resumed_steps": resumed.steps,
    }


def _worker(index: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=index,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    try:
        result = _compute(Path(out_dir))
        torch.save(result, Path(out_dir) / f"rank{index}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(world: int, out_dir: Path) -> list[dict[str, Any]]:
    # fork (where available) skips re-importing torch in every child: seconds each; the
    # workers use one CPU thread and no CUDA, which is what makes forking safe.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        _worker,
        args=(world, _free_port(), str(out_dir)),
        nprocs=world,
        join=False,
        start_method=method,
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} gloo processes did not finish in {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assert not distributed.is_initialized()
    return _compute(tmp_path_factory.mktemp("single"))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_gloo_ranks_match_one_process(
    world: int, single: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = _spawn(world, tmp_path)
    sizes = [r["shard"] for r in results]
    assert sum(sizes) == N_EXAMPLES and max(sizes) - min(sizes) <= 1
    for r in results:
        assert r["n_examples"] == N_EXAMPLES  # every example counted once, globally
        np.testing.assert_allclose(r["nodes"], single["nodes"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(r["weights"], single["weights"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(r["loss"], single["loss"], rtol=1e-12)
        torch.testing.assert_close(r["gradient"], single["gradient"], rtol=0, atol=1e-12)
        # every rank computes the same Lanczos (identical all-reduced products)
        np.testing.assert_array_equal(r["nodes"], results[0]["nodes"])
        np.testing.assert_array_equal(r["tracked_nodes"], results[0]["tracked_nodes"])
        assert r["resumed_steps"] == [0]  # rank 0 read the file, every rank knows
    assert [r["writes"] for r in results] == [1] + [0] * (world - 1)
    written = open_run(tmp_path / "run.nc")
    np.testing.assert_allclose(written["nodes"].values, single["tracked_nodes"], atol=1e-10)
    assert written.attrs["n_examples"] == N_EXAMPLES
    assert not list(tmp_path.glob(".run.nc.*"))  # no temporaries left


@pytest.mark.parametrize("n, world", [(101, 2), (101, 3), (7, 7), (1000, 8), (5, 1)])
def test_shards_cover_every_example_once(n: int, world: int) -> None:
    bounds = [distributed.shard_bounds(n, world, r) for r in range(world)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))  # contiguous, in order, no overlap, no padding
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
    dataset = TensorDataset(torch.arange(n))
    shards = [distributed.shard(dataset, r, world) for r in range(world)]
    assert [int(s[i][0]) for s in shards for i in range(len(s))] == list(range(n))


def test_shard_refuses_empty_shards_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="empty shard"):
        distributed.shard_bounds(2, 3, 0)
    with pytest.raises(ValueError, match="out of range"):
        distributed.shard_bounds(10, 2, 2)


def test_single_process_defaults() -> None:
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.use_distributed(None) is False
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.from_main(lambda: 5) == 5
    assert not distributed.init_from_env()  # no WORLD_SIZE: nothing to start
    with pytest.raises(ValueError, match="not initialised"):
        HessianOperator(
            *_problem()[:1],
            F.cross_entropy,
            [(torch.zeros(2, 1, 5, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))],
            distributed=True,
        )


def test_from_main_propagates_errors() -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        distributed.from_main(fail)


def test_environment_without_torchrun_is_single(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init_from_env()
    assert distributed.local_world_size() == 1
