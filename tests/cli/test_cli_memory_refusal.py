"""``hessnb spectrum`` refuses a run that does not fit before it loads anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from hessnb import cli
from hessnb.linalg import memory

MIB = 2**20


def _free_memory(monkeypatch: pytest.MonkeyPatch, ram: int, disk: int) -> None:
    free = {"device": 0, "cpu": ram, "disk": disk}
    monkeypatch.setattr(memory, "available_bytes", lambda where, device=None: free[where])


def test_memory_refusal_names_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _free_memory(monkeypatch, ram=64 * MIB, disk=10 * 2**30)
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None).state_dict(), weights)
    # no data at that path: the refusal must come before anything is loaded
    rc = cli.main(
        [
            *("spectrum", "--model", "resnet18", "--weights", str(weights)),
            *("--data", f"imagenet:{tmp_path / 'missing'}"),
            *("--lanczos-steps", "90", "--placement", "cpu", "--out", str(tmp_path / "run.nc")),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("hessnb spectrum: error: the run does not fit in memory")
    assert "7.8 GiB per process (1 probe(s) x 90 steps x 11,689,512 parameters" in err
    assert "--placement cpu needs RAM" in err and "--placement mmap: " in err
    assert "lower --lanczos-steps / --probes" in err
    assert not (tmp_path / "run.nc").exists()
