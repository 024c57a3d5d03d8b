"""Smoke test of the benchmark (``python -m hessnb.bench``): it runs and fills its table.

Not a timed test: the figures of a tiny configuration on a shared machine mean nothing, so
only the table's shape and the accuracy helper are checked.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from hessnb import bench


def test_quick_benchmark_table_has_expected_rows(capsys: pytest.CaptureFixture[str]) -> None:
    config = bench.BenchConfig.quick()
    config.widths, config.small_widths = (2, 4, 8), (2, 2, 3)
    config.n_examples, config.batch_size, config.steps, config.batched_steps = 40, 16, 6, 3
    config.repeats, config.accuracy_seeds = 1, 1
    config.libraries = _libraries_wanted()
    rows = bench.run_benchmark(config, log=lambda _text: None)
    names = [row.name for row in rows]
    expected = [
        "HVP / gradient",
        "SLQ 6 steps / 6 HVPs",
        "8 probes batched / 8 x 1 probe",
        "hessnb W1 / spectral range",
        "hessnb lambda_max rel. error",
        "hessnb / fastest library SLQ time",
    ]
    for name in expected:
        assert name in names
    for row in rows:
        assert row.status in {"pass", "miss", "info", "skip"}
        assert row.status == "skip" or math.isfinite(row.value), row
    for library in bench.LIBRARIES:  # each library is either measured or skipped with a note
        measured = f"{library} W1 / spectral range" in names
        skipped = f"{library} (skipped)" in names
        assert measured != skipped
    by_name = {row.name: row for row in rows}
    assert by_name["hessnb lambda_max rel. error"].value < 1e-2
    table = bench.format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["row", "measured", "target", "status"]
    assert len(table.splitlines()) == len(rows) + 2


def _libraries_wanted() -> bool:
    """Run the other libraries' rows only when HESSNB_BENCH_LIBRARIES=1 (they are slow to
    import); otherwise their rows must say they were skipped."""
    return os.environ.get("HESSNB_BENCH_LIBRARIES") == "1"


def test_main_quick_prints_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}

    def fake_run(config: bench.BenchConfig, log: object) -> list[bench.Row]:
        seen["config"] = config
        return [bench.Row("HVP / gradient", 2.0, "<= 2.2", "pass")]

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    assert bench.main(["--quick", "--repeats", "3", "--no-libraries"]) == 0
    assert seen["config"].repeats == 3 and not seen["config"].libraries
    assert seen["config"].steps == bench.BenchConfig.quick().steps
    assert "HVP / gradient" in capsys.readouterr().out


def test_spectral_errors_exact_quadrature_is_zero() -> None:
    exact = np.array([-1.0, 0.0, 0.0, 2.0, 5.0])
    nodes = np.array([[-1.0, 0.0, 2.0, 5.0]])
    weights = np.array([[0.2, 0.4, 0.2, 0.2]])
    w1, top = bench.spectral_errors((nodes, weights), exact)
    assert w1 == pytest.approx(0.0, abs=1e-12) and top == 0.0
    # two probes, NaN padding past a breakdown, a shifted top node
    nodes2 = np.array([[-1.0, 0.0, 2.0, 5.5], [0.0, 5.0, np.nan, np.nan]])
    weights2 = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    w1, top = bench.spectral_errors((nodes2, weights2), exact)
    assert w1 > 0 and top == pytest.approx(0.1)
