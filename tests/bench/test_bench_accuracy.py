"""``bench.accuracy``: the verdict against other libraries, and the precision study."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench import accuracy, common
from hessnb import HessianOperator, SLQSettings


def _result(seconds: float, w1: list[float], top: list[float]) -> accuracy.Result:
    return accuracy.Result(seconds, np.column_stack([w1, top]))


def test_result_statistics() -> None:
    result = _result(1.0, [1e-3, 3e-3], [1e-6, 1e-6])
    assert result.w1 == pytest.approx(2e-3) and result.top == pytest.approx(1e-6)
    assert result.stderr(0) == pytest.approx(1e-3)
    assert result.describe(0) == "mean 0.002 ± 0.001 (se)"
    assert _result(1.0, [1e-3], [0.0]).stderr(0) == 0.0


def test_as_accurate_as_allows_two_standard_errors_and_the_float32_floor() -> None:
    other = _result(1.0, [1e-3, 1e-3], [1e-3, 1e-3])
    assert _result(1.0, [1e-3, 1e-3], [1e-3, 1e-3]).as_accurate_as(other)
    assert not _result(1.0, [2e-3, 2e-3], [1e-3, 1e-3]).as_accurate_as(other)
    exact = _result(1.0, [1e-3, 1e-3], [0.0, 0.0])
    assert _result(1.0, [1e-3, 1e-3], [9e-6, 9e-6]).as_accurate_as(exact)  # below the floor
    assert not _result(1.0, [1e-3, 1e-3], [2e-5, 2e-5]).as_accurate_as(exact)


def test_comparison_rows_verdict() -> None:
    ours = _result(1.0, [1e-3, 1e-3], [1e-6, 1e-6])
    rows = accuracy.comparison_rows({"hessnb": ours})
    assert [(r.name, r.status) for r in rows] == [("hessnb / fastest library SLQ time", "skip")]
    fast_equal = {"hessnb": ours, "a": _result(2.0, [1e-3] * 2, [1e-6] * 2)}
    *ratios, verdict = accuracy.comparison_rows({**fast_equal, "b": _result(4.0, [1] * 2, [1] * 2)})
    assert [r.value for r in ratios] == [0.5, 0.25]
    assert verdict.value == 0.5 and verdict.status == "pass" and "fastest: a" in verdict.note
    better = {"hessnb": ours, "a": _result(2.0, [1e-5] * 2, [1e-6] * 2)}
    verdict = accuracy.comparison_rows(better)[-1]
    assert verdict.status == "miss" and verdict.note.endswith("no")
    slower = {"hessnb": ours, "a": _result(1.0, [1e-3] * 2, [1e-6] * 2)}
    assert accuracy.comparison_rows(slower)[-1].status == "miss"


def test_accuracy_rows_without_libraries() -> None:
    batches = common.digits_batches(20, 10)
    small = common.digits_cnn((1, 1, 2), seed=1)
    settings = SLQSettings(lanczos_steps=20, probes=1, top_k=1)
    rows, results = accuracy.accuracy_rows(small, batches, settings, seeds=2, timed_on=None)
    by_name = {r.name: r for r in rows}
    assert by_name["hessnb lambda_max rel. error"].value < 1e-2
    assert 0 < by_name["hessnb W1 / spectral range"].value < 1
    assert math.isnan(results["hessnb"].seconds) and results["hessnb"].errors.shape == (2, 2)
    skipped = [r for r in rows if r.status == "skip"]
    assert len(skipped) == 2 and all("--no-libraries" in r.note for r in skipped)


def test_hessnb_quadrature_matches_the_exact_spectrum_at_full_dimension() -> None:
    batches = common.digits_batches(20, 10)
    op = HessianOperator(common.digits_cnn((1, 1, 2)), F.cross_entropy, batches)
    dim = op.n_params
    nodes, weights = accuracy.hessnb_quadrature(op, SLQSettings(lanczos_steps=dim, top_k=1))
    assert nodes.shape == weights.shape == (1, dim)
    exact = np.linalg.eigvalsh(op.dense().numpy())
    w1, top = common.spectral_errors((nodes, weights), exact)
    assert top < 1e-4 and w1 < 0.05


def test_density_effect_table() -> None:
    table = accuracy.density_effect(torch.device("cpu"), ["fp32"], steps=3, train_steps=2)
    assert "34,466 parameters" in table
    fp64, fp32 = (line for line in table.splitlines() if line.startswith("| fp"))
    assert fp64.startswith("| fp64 | 0.0e+00 | 0.0e+00 | 0.0e+00")
    assert float(fp32.split("|")[3]) < 1e-4  # fp32 top eigenvalue within float32 noise
