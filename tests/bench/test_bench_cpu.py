"""Smoke tests of the CPU benchmark (``python -m bench.cpu``): it runs and fills its table.

Not timed tests: the figures of a tiny configuration on a shared machine mean nothing, so
the table's shape, the command line and the helpers are checked.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.nn import functional as F

from bench import common, cpu, libraries
from hessnb import HessianOperator


def _libraries_wanted() -> bool:
    """Run the other libraries' rows only when HESSNB_BENCH_LIBRARIES=1 (they are slow to
    import); otherwise their rows must say they were left out."""
    return os.environ.get("HESSNB_BENCH_LIBRARIES") == "1"


def test_quick_benchmark_table_has_expected_rows() -> None:
    config = common.override(
        cpu.CpuConfig.quick(),
        widths=(2, 4, 8),
        small_widths=(2, 2, 3),
        n_examples=40,
        batch_size=16,
        lanczos_steps=6,
        batched_steps=3,
        repeats=1,
        accuracy_seeds=1,
        libraries=_libraries_wanted(),
    )
    rows = cpu.run_benchmark(config, log=lambda _text: None)
    names = [row.name for row in rows]
    expected = [
        "HVP / gradient",
        "HVP without graph cache / gradient",
        "SLQ 6 steps / 6 HVPs",
        "8 probes batched / 8 x 1 probe",
        "hvp=double-backward: rel. difference from double-backward",
        "hvp=forward-over-reverse: rel. difference from double-backward",
        "hvp='auto' / fastest backend, block of 8",
        "hessnb W1 / spectral range",
        "hessnb lambda_max rel. error",
        "hessnb SLQ 6 steps, after / before the libraries",
        "hessnb / fastest library SLQ time",
    ]
    for name in expected:
        assert name in names
    for row in rows:
        assert row.status in {"pass", "miss", "info", "skip"}
        assert row.status == "skip" or math.isfinite(row.value), row
    for library in libraries.LIBRARIES:  # each library is either measured or skipped
        measured = f"{library} W1 / spectral range" in names
        skipped = f"{library} (skipped)" in names
        assert measured != skipped
    by_name = {row.name: row for row in rows}
    assert by_name["hessnb lambda_max rel. error"].value < 1e-2
    assert "6 op.matmat calls" in by_name["SLQ 6 steps / 6 HVPs"].note
    assert "hvp=double-backward" in by_name["8 probes batched / 8 x 1 probe"].note
    forward = by_name["hvp=forward-over-reverse: rel. difference from double-backward"]
    assert forward.status == "pass" and 0 < forward.value < 1e-6  # float32 rounding only
    assert "block of 1: " in forward.note and ", of 8: " in forward.note
    table = common.format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["row", "measured", "target", "status"]
    assert len(table.splitlines()) == len(rows) + 2


def test_speed_only_stops_after_the_speed_rows() -> None:
    config = common.override(
        cpu.CpuConfig.quick(),
        widths=(2, 2, 3),
        n_examples=20,
        batch_size=10,
        lanczos_steps=3,
        batched_steps=2,
        probes=2,
        repeats=1,
        accuracy=False,
    )
    names = [row.name for row in cpu.run_benchmark(config, log=lambda _text: None)]
    assert names == [
        "HVP / gradient",
        "HVP without graph cache / gradient",
        "SLQ 3 steps / 3 HVPs",
        "2 probes batched / 2 x 1 probe",
        "hvp=double-backward: rel. difference from double-backward",
        "hvp=forward-over-reverse: rel. difference from double-backward",
        "hvp='auto' / fastest backend, block of 2",
    ]
    config.backends = ()
    names = [row.name for row in cpu.run_benchmark(config, log=lambda _text: None)]
    assert names[-1] == "2 probes batched / 2 x 1 probe"


def test_main_quick_prints_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}

    def fake_run(config: cpu.CpuConfig, log: object) -> list[common.Row]:
        seen["config"] = config
        return [common.Row("HVP / gradient", 2.0, "<= 2.2", "pass")]

    monkeypatch.setattr(cpu, "run_benchmark", fake_run)
    assert cpu.main(["--quick", "--repeats", "3", "--no-libraries"]) == 0
    assert seen["config"].repeats == 3 and not seen["config"].libraries
    assert seen["config"].accuracy
    assert seen["config"].slq == cpu.CpuConfig.quick().slq
    assert "HVP / gradient" in capsys.readouterr().out
    assert cpu.main(["--steps", "7", "--speed-only", "--threads", "1"]) == 0
    config = seen["config"]
    assert config.slq.lanczos_steps == 7 and config.slq.probes == 8
    assert not config.accuracy and config.libraries and config.threads == 1
    assert config.widths == cpu.CpuConfig().widths
    assert config.backends == ("double-backward", "forward-over-reverse", "compile")
    assert cpu.main(["--backends", "compile", "double-backward"]) == 0
    assert seen["config"].backends == ("compile", "double-backward")
    assert cpu.main(["--backends"]) == 0
    assert seen["config"].backends == ()
    assert cpu.CpuConfig.quick().backends == ("double-backward", "forward-over-reverse")


def test_backend_rows_check_agreement_and_compare_auto_with_the_fastest() -> None:
    timings = [
        common.BackendTiming("double-backward", 8, 1.0, 8.0, 2.0, 0.0),
        common.BackendTiming("forward-over-reverse", 8, 2.0, 4.0, 5.0, 2e-6),
    ]
    rows = cpu.backend_rows(timings)
    assert [row.status for row in rows] == ["pass", "miss", "info"]
    assert "block of 1: 1000 ms, of 8: 8000 ms (1000 ms per vector" in rows[0].note
    assert "8 / 8 x 1: 1.00" in rows[0].note and "8 / 8 x 1: 0.25" in rows[1].note
    assert "0.50 x double-backward block of 1" in rows[1].note
    auto = rows[2]
    assert auto.value == 2.0  # double backward's block of 8 over forward-over-reverse's
    assert "fastest: double-backward (block of 1), forward-over-reverse (block of 8)" in auto.note
    assert cpu.backend_rows([]) == []
    assert len(cpu.backend_rows(timings[1:])) == 1  # no row for auto when its backend is absent


def test_cache_state_and_profile() -> None:
    batches = common.digits_batches(20, 10)
    model = common.digits_cnn((2, 2, 3))
    assert cpu.cache_state(HessianOperator(model, F.cross_entropy, batches, graph_cache=False)) == (
        "off"
    )
    op = HessianOperator(model, F.cross_entropy, batches)
    with op.reuse_graphs():
        op.matvec(torch.ones(op.n_params))
        assert cpu.cache_state(op).endswith(" MiB")
    parts = cpu.profile_hvp(model, batches, repeats=1)
    assert list(parts) == [
        "forward",
        "first backward (create_graph)",
        "second backward",
        "gradient (forward + backward)",
    ]
    assert all(seconds > 0 for seconds in parts.values())
