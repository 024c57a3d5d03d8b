"""``python -m bench.gpu`` runs on the CPU in its tiny configuration."""

from __future__ import annotations

import math

import pytest
import torch

from bench import common, gpu


def test_tiny_configuration_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--tiny"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny | 0.05 M | fp32 |" in printed
    assert "HVP / train (>= 40 %)" in printed and "placement=cpu" in printed
    assert "1,281,167 (full train set)" in printed and "hours, 8 x CPU process" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| tiny | 0.05"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    train, hvp = (float(c.replace(",", "")) for c in cells[3:5])
    assert train > 0 and hvp > 0
    assert cells[5].endswith(("pass", "miss"))
    assert all(float(c) > 0 for c in cells[-2:])  # Lanczos seconds per step, both placements
    # the HVP backends compared (compile is left out on the CPU: minutes of compilation)
    assert "HVP backends (fp32, no graph cache, 16 images per pass):" in printed
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in printed.splitlines()
        if line.startswith("| tiny | ") and line.count("|") == 8
    }
    assert list(rows) == ["double-backward", "forward-over-reverse"]
    for cells in rows.values():
        assert all(float(c.replace(",", "")) > 0 for c in cells[2:6])
        assert float(cells[6]) < 1e-5  # float32 products agree with double backward's
    assert "hvp='auto' uses double-backward on cpu" in printed


def test_main_applies_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_measure(config: gpu.GpuConfig) -> list[gpu.ModelRow]:
        seen["config"] = config
        return []

    def fake_backends(config: gpu.GpuConfig) -> dict:
        seen["backends"] = config.backends
        return {}

    monkeypatch.setattr(gpu, "measure", fake_measure)
    monkeypatch.setattr(gpu, "measure_backends", fake_backends)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.setdefault("threads", n))
    args = ["--tiny", "--models", "a", "b", "--precision", "bf16", "--batch-size", "3"]
    assert gpu.main(args) == 0
    config = seen["config"]
    assert config.models == ("a", "b") and config.precisions == ("bf16",)
    assert config.batch_size == 3 and config.image_size == gpu.GpuConfig.tiny().image_size
    assert config.device == "cpu" and seen["threads"] == 1  # tiny: one thread
    assert seen.pop("backends") == ("double-backward", "forward-over-reverse")
    assert gpu.main(["--tiny", "--backends", "compile"]) == 0
    assert seen.pop("backends") == ("compile",)
    assert gpu.main(["--tiny", "--backends"]) == 0  # none: no comparison
    assert "backends" not in seen and seen["config"].backends == ()
    assert gpu.GpuConfig().backends == ("double-backward", "forward-over-reverse", "compile")


def test_model_row_ratio_and_verdict() -> None:
    row = gpu.ModelRow("m", 1, "fp32", 100.0, 40.0, 0, 0, 0, 0)
    assert math.isclose(row.ratio, 0.4)
    table = gpu.format_table(
        [row, gpu.ModelRow("n", 2, "bf16", 100.0, 39.0, 0, 0, 0, 0)], torch.device("cpu")
    )
    lines = table.splitlines()
    assert "40 % pass" in lines[2] and "39 % miss" in lines[3]
    nan = gpu.ModelRow("o", 1, "fp32", math.nan, math.nan, math.nan, math.nan, 0, 0)
    assert "nan % n/a | n/a | n/a" in gpu.format_table([nan], torch.device("cpu"))


def test_lanczos_seconds_per_step() -> None:
    seconds = gpu.lanczos_seconds(1000, 6, "cpu", torch.device("cpu"))
    assert 0 < seconds < 1
    assert gpu.lanczos_seconds(1000, 2, "device", torch.device("cpu")) > 0  # too few to fit


def test_backend_table_marks_out_of_memory_and_names_the_auto_choice() -> None:
    timing = common.BackendTiming("double-backward", 8, 0.5, 2.0, 3.0, 0.0)
    table = gpu.backend_table({"m": [timing], "big": None}, 64, torch.device("cuda"))
    lines = table.splitlines()
    assert lines[0].startswith("| model | hvp | img/s, block of 1 | img/s per vector, block of 8")
    assert lines[2] == "| m | double-backward | 128 | 256 | 0.50 | 3.0 | 0.0e+00 |"
    assert lines[3] == "| big | out of memory | n/a | n/a | n/a | n/a | n/a |"
    assert "hvp='auto' uses double-backward on cuda" in lines[4]
