"""``hessnb spectrum``: torchvision models on an ImageNet-layout folder, resuming a list of
checkpoints, the SLQ options, torchrun (the memory statement: test_cli_memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from hessnb import cli, open_run
from hessnb.cli.spectrum import checkpoint_steps
from hessnb.reference import models
from hessnb.reference.synthetic import image_folder


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
    return cli.main(["spectrum", "--no-progress", "--top-k", "1", "--lanczos-steps", "2", *options])


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
        "2",
        "--placement",
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


def test_checkpoint_steps_from_names_else_positions(tmp_path: Path) -> None:
    for name in ("ckpt_200.pt", "ckpt_1000.pt", "ckpt_30.pt"):
        (tmp_path / name).touch()
    steps = checkpoint_steps(str(tmp_path / "ckpt_*.pt"))
    assert [(s, p.name) for s, p in steps] == [
        (30, "ckpt_30.pt"),
        (200, "ckpt_200.pt"),
        (1000, "ckpt_1000.pt"),
    ]
    (tmp_path / "last.pt").touch()  # a name without a number: positions
    steps = checkpoint_steps(str(tmp_path / "*.pt"))
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        checkpoint_steps(str(tmp_path / "none_*.pt"))


def test_slq_options_of_spectrum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    weights = _save(models.build("mlp", bn=True), tmp_path / "mlp.pt")
    out = tmp_path / "run.nc"
    rc = _spectrum(
        *("--model", "mlp", "--bn", "--weights", str(weights), "--batch-size", "900"),
        *("--probes", "2", "--seed", "5", "--placement", "cpu", "--threads", "1"),
        *("--out", str(out)),
    )
    assert rc == 0, capsys.readouterr().err
    run = open_run(out)
    assert (run.attrs["lanczos_steps"], run.attrs["probes"], run.attrs["top_k"]) == (2, 2, 1)
    assert run.attrs["seed"] == 5 and run.attrs["bn_mode"] == "train"  # the default with --bn


def test_steps_is_not_an_option_of_spectrum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for removed in (("--steps", "2"), ("--basis", "cpu")):
        with pytest.raises(SystemExit):
            cli.main(["spectrum", "--model", "mlp", "--weights", "w.pt", *removed])
        assert f"unrecognized arguments: {removed[0]}" in capsys.readouterr().err


def test_one_of_weights_or_checkpoints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spectrum", "--model", "mlp"]) == 2
    assert "pass exactly one of --weights" in capsys.readouterr().err


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
        "--lanczos-steps",
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
