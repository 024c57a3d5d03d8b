"""``bench/gpu.py`` runs on the CPU in its tiny configuration (what CI executes)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hessnb_bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_configuration_prints_the_table(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--tiny"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny | 0.05 M | fp32 |" in printed
    assert "HVP / train (>= 40 %)" in printed and "basis=cpu" in printed
    assert "1,281,167 (full train set)" in printed and "hours, 8 x CPU process" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| tiny | 0.05"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    train, hvp = (float(c.replace(",", "")) for c in cells[3:5])
    assert train > 0 and hvp > 0
    assert all(float(c) > 0 for c in cells[-2:])  # Lanczos seconds per step, both bases


def test_projection_formula(bench: ModuleType) -> None:
    # 95 passes of 1.28 M images at 1000 img/s on 8 GPUs, plus 90 Lanczos steps of 2 s
    hours = bench.projected_hours(1000.0, 1_281_167, 8, 2.0)
    assert hours == pytest.approx((95 * 1_281_167 / 8000 + 180) / 3600)
    assert bench.projected_hours(1000.0, 1000, 1, 0.0, steps=1) == pytest.approx(6 / 3600)
    assert math.isclose(bench.Row("m", 1, "fp32", 100.0, 40.0, 0, 0, 0, 0).ratio, 0.4)


def test_density_effect_table(bench: ModuleType) -> None:
    import torch

    table = bench.density_effect(torch.device("cpu"), ["fp32"], steps=3, train_steps=2)
    assert "34,466 parameters" in table
    fp64, fp32 = (line for line in table.splitlines() if line.startswith("| fp"))
    assert fp64.startswith("| fp64 | 0.0e+00 | 0.0e+00 | 0.0e+00")
    assert float(fp32.split("|")[3]) < 1e-4  # fp32 top eigenvalue within float32 noise
