"""``hessnb spectrum`` at scale: torchvision models on an ImageNet-layout folder, resuming a
list of checkpoints, the memory statement and refusal, precision options, torchrun."""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from hessnb import cli, commands, models, open_run
from hessnb.synthetic import image_folder

MIB = 2**20


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 2 random 36 px JPEGs in ImageNet layout."""
    return image_folder(
        tmp_path_factory.mktemp("imagenet") / "train", classes=2, per_class=2, size=36
    )


def _save(model: torch.nn.Module, path: Path, wrap: bool = False) -> Path:
    state = model.state_dict()
    torch.save({"model": state} if wrap else state, path)
    return path


def _torchvision(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None)


def _spectrum(*options: str) -> int:
    return cli.main(["spectrum", "--no-progress", "--top-k", "1", "--steps", "2", *options])


def test_resnet18_on_imagenet_folder(
    imagenet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _save(_torchvision("resnet18", 0), tmp_path / "resnet18.pt")
    out = tmp_path / "run.nc"
    rc = _spectrum(
        "--model",
        "resnet18",
        "--weights",
        str(weights),
        "--data",
        f"imagenet:{imagenet_dir}",
        "--image-size",
        "32",
        "--batch-size",
        "3",
        "--basis",
        "auto",
        "--out",
        str(out),
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "11,689,512 parameters" in printed
    assert "memory: Krylov basis 178.4 MiB in RAM" in printed  # 2 steps x 11.7M x 8 B
    assert "img/s" in printed
    run = open_run(out)
    assert run["step"].values.tolist() == [0]
    assert run.attrs["n_examples"] == 4 and run.attrs["model"] == "ResNet"
    assert run.attrs["precision"] == "fp32" and run.attrs["data"].startswith("imagenet:")
    assert np.isfinite(run["nodes"].values).all()


def test_checkpoints_resume_without_recomputing(
    imagenet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for step, seed in ((10, 0), (20, 1)):
        _save(_torchvision("squeezenet1_1", seed), tmp_path / f"ckpt_{step}.pt", wrap=True)
    out = tmp_path / "run.nc"
    args = (
        "--model",
        "squeezenet1_1",
        "--checkpoints",
        str(tmp_path / "ckpt_*.pt"),
        "--data",
        f"imagenet:{imagenet_dir}",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--subset-per-class",
        "1",
        "--out",
        str(out),
    )
    assert _spectrum(*args) == 0
    first = open_run(out)
    assert first["step"].values.tolist() == [10, 20]
    assert first.attrs["n_examples"] == 2  # one image per class
    capsys.readouterr()
    _save(_torchvision("squeezenet1_1", 2), tmp_path / "ckpt_30.pt")  # training went on
    assert _spectrum(*args) == 0
    printed = capsys.readouterr().out
    assert "step 10 (ckpt_10.pt) already in" in printed and "skipped" in printed
    assert "1 of 3 checkpoint(s) to compute" in printed
    second = open_run(out)
    assert second["step"].values.tolist() == [10, 20, 30]
    np.testing.assert_array_equal(
        second["nodes"].sel(step=[10, 20]).values, first["nodes"].values
    )  # finished ones were not redone


def _tiny_memory(monkeypatch: pytest.MonkeyPatch, ram: int, disk: int) -> None:
    monkeypatch.setattr(commands, "available_bytes", lambda where, device=None: ram)
    monkeypatch.setattr(commands, "_free_disk", lambda folder: disk)


def test_memory_refusal_names_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiny_memory(monkeypatch, ram=64 * MIB, disk=10 * 2**30)
    weights = _save(_torchvision("resnet18", 0), tmp_path / "w.pt")
    # no data at that path: the refusal must come before anything is loaded
    rc = cli.main(
        [
            "spectrum",
            "--model",
            "resnet18",
            "--weights",
            str(weights),
            "--data",
            f"imagenet:{tmp_path / 'missing'}",
            "--steps",
            "90",
            "--basis",
            "cpu",
            "--out",
            str(tmp_path / "run.nc"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit in memory" in err
    assert "7.8 GiB per process (1 probe(s) x 90 steps x 11,689,512 parameters" in err
    assert "--basis cpu needs RAM" in err and "--basis mmap: " in err
    assert not (tmp_path / "run.nc").exists()


def test_auto_placement_falls_back_to_mmap_then_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    _tiny_memory(monkeypatch, ram=2**30, disk=10 * 2**30)
    plan = commands.plan_memory(1_000_000, 90, 1, 10, "auto", cpu, processes=2)
    assert plan.placement == "mmap"
    assert plan.needs["disk"] == 2 * 8 * 90 * 1_000_000  # one file per process
    assert "memory-mapped file" in plan.describe()
    assert commands.plan_memory(1000, 90, 1, 10, "auto", cpu).placement == "device"
    _tiny_memory(monkeypatch, ram=64 * MIB, disk=MIB)
    with pytest.raises(MemoryError, match=r"no placement has room.*TMPDIR"):
        commands.plan_memory(1_000_000, 90, 1, 10, "auto", cpu)


def test_gpu_placement_accounts_for_processes_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda", 0)  # only sizes are computed: no GPU needed
    free = {"device": 4 * 2**30, "cpu": 64 * 2**30}
    monkeypatch.setattr(commands, "available_bytes", lambda where, device=None: free[where])
    monkeypatch.setattr(commands, "_free_disk", lambda folder: 2**40)
    basis = 8 * 90 * 11_689_512  # ResNet-18, 90 steps: 7.8 GiB, more than the GPU has
    plan = commands.plan_memory(11_689_512, 90, 1, 10, "auto", gpu, processes=4)
    assert plan.placement == "cpu" and plan.needs["cpu"] == 4 * basis  # 4 ranks' bases
    assert "pinned RAM per process, 4 processes" in plan.describe()
    plan = commands.plan_memory(11_689_512, 90, 1, 10, "auto", gpu, processes=8)
    assert plan.placement == "mmap"  # 8 x 7.8 GiB of RAM is too much
    with pytest.raises(MemoryError, match="--basis device needs GPU"):
        commands.plan_memory(11_689_512, 90, 1, 10, "device", gpu)


def test_precision_options(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="tf32 needs a CUDA GPU"):
        commands.configure_backends(cpu, "tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        commands.configure_backends(cpu, "fp16")
    torch.manual_seed(0)
    model = models.build("cnn")
    keys = list(model.state_dict())
    x = torch.randn(5, 1, 8, 8)
    reference = model(x)
    prepared = commands.prepare_model(model, cpu, "bf16")
    out = prepared(x)
    assert type(prepared).__name__ == "Sequential" and list(prepared.state_dict()) == keys
    assert out.dtype == torch.float32  # cast back after autocast
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)  # bf16 is close
    assert not torch.equal(out, reference)
    copied = copy.deepcopy(prepared)  # the operator copies models for dtype=...
    with torch.no_grad():
        copied[0].weight.zero_()
    assert not torch.equal(copied(x), out)  # the copy's forward uses the copy's weights


def test_python_m_hessnb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["hessnb", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hessnb", run_name="__main__")
    assert exit_info.value.code == 0


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    """``torchrun -m hessnb spectrum`` over 2 gloo processes writes the one-process run."""
    torch.manual_seed(0)
    _save(models.build("mlp"), tmp_path / "mlp_1.pt")
    args = [
        "spectrum",
        "--model",
        "mlp",
        "--checkpoints",
        str(tmp_path / "mlp_*.pt"),
        "--steps",
        "6",
        "--top-k",
        "2",
        "--batch-size",
        "500",
        "--no-progress",
    ]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "hessnb",
            *args,
            "--out",
            str(tmp_path / "two.nc"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "x 2 processes" in done.stdout and "1,797 images in 2 shards" in done.stdout
    assert done.stdout.count("written to") == 1  # rank 0 alone prints (and writes)
    assert cli.main([*args, "--out", str(tmp_path / "one.nc")]) == 0
    one, two = open_run(tmp_path / "one.nc"), open_run(tmp_path / "two.nc")
    assert two.attrs["n_examples"] == one.attrs["n_examples"] == 1797
    # float32 HVPs summed in another order: agreement to float32 rounding
    np.testing.assert_allclose(two["nodes"].values, one["nodes"].values, rtol=1e-5, atol=1e-6)
