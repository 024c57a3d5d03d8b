"""``bench.common``: configuration, tables, timing, digits builders and the W1 helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench import common
from hessnb import HessianOperator, SLQSettings, spectrum


# ----------------------------------------------------------------------------- W1 helper
def test_spectral_errors_point_mass_against_two_eigenvalues() -> None:
    # W1(delta_1, (delta_0 + delta_2) / 2) = 1 over a range of 2; top error |1 - 2| / 2
    w1, top = common.spectral_errors((np.array([[1.0]]), np.array([[1.0]])), np.array([0.0, 2.0]))
    assert w1 == pytest.approx(0.5) and top == pytest.approx(0.5)


def test_spectral_errors_unequal_masses_on_the_same_atoms() -> None:
    # masses (1/4, 3/4) against (1/2, 1/2) at 0 and 2: W1 = |1/4 - 1/2| x 2 = 0.5
    quadrature = (np.array([0.0, 2.0]), np.array([0.25, 0.75]))
    w1, top = common.spectral_errors(quadrature, np.array([0.0, 2.0]))
    assert w1 == pytest.approx(0.25) and top == 0.0
    # the same against a reference given as a quadrature
    reference = (np.array([0.0, 2.0]), np.array([0.5, 0.5]))
    assert common.spectral_errors(quadrature, reference) == pytest.approx((0.25, 0.0))


def test_spectral_errors_averages_probes_and_drops_padding() -> None:
    nodes = np.array([[0.0, np.nan], [2.0, np.nan]])
    weights = np.array([[1.0, 0.0], [1.0, 0.0]])
    w1, top = common.spectral_errors((nodes, weights), np.array([0.0, 2.0]))
    assert w1 == pytest.approx(0.0, abs=1e-12) and top == 0.0


def test_spectral_errors_exact_quadrature_is_zero() -> None:
    exact = np.array([-1.0, 0.0, 0.0, 2.0, 5.0])
    nodes = np.array([[-1.0, 0.0, 2.0, 5.0]])
    weights = np.array([[0.2, 0.4, 0.2, 0.2]])
    w1, top = common.spectral_errors((nodes, weights), exact)
    assert w1 == pytest.approx(0.0, abs=1e-12) and top == 0.0
    # two probes, NaN padding past a breakdown, a shifted top node
    nodes2 = np.array([[-1.0, 0.0, 2.0, 5.5], [0.0, 5.0, np.nan, np.nan]])
    weights2 = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    w1, top = common.spectral_errors((nodes2, weights2), exact)
    assert w1 > 0 and top == pytest.approx(0.1)


def test_spectral_errors_refuses_a_reference_without_range() -> None:
    with pytest.raises(ValueError, match="non-zero range"):
        common.spectral_errors((np.array([1.0]), np.array([1.0])), np.array([3.0, 3.0]))


# ----------------------------------------------------------------------------- configuration
def test_override_routes_slq_fields_and_skips_none() -> None:
    config = common.BenchConfig()
    changed = common.override(config, lanczos_steps=7, probes=None, threads=2)
    assert changed.slq == SLQSettings(lanczos_steps=7, top_k=1)
    assert changed.threads == 2
    assert config.slq.lanczos_steps == 90 and config.threads is None  # a copy
    with pytest.raises(ValueError, match="top_k"):
        common.override(config, top_k=91)  # validated by SLQSettings
    with pytest.raises(TypeError):
        common.override(config, no_such_field=1)


def test_apply_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    common.BenchConfig().apply_threads()
    common.BenchConfig(threads=3).apply_threads()
    assert seen == [3]


def test_make_parser_and_machine_name() -> None:
    parser = common.make_parser("bench.x", "First paragraph.\n\nSecond.")
    assert parser.prog == "python -m bench.x" and parser.description == "First paragraph."
    assert parser.parse_args(["--threads", "2"]).threads == 2
    assert "threads" in common.machine_name(torch.device("cpu"))


# ----------------------------------------------------------------------------- tables
def test_check_and_format_table() -> None:
    assert common.check("a", 1.0, 2.0).status == "pass"
    assert common.check("a", 3.0, 2.0).status == "miss"
    row = common.check("b", 0.3, 0.4, at_least=True)
    assert (row.status, row.target) == ("miss", ">= 0.4")
    rows = [common.check("short", 1.5, 2.2, "a note"), common.Row("a longer name", math.nan)]
    lines = common.format_table(rows).splitlines()
    assert lines[0].split() == ["row", "measured", "target", "status", "note"]
    assert set(lines[1]) == {"-"} and len(lines) == 4
    assert lines[2].split() == ["short", "1.5", "<=", "2.2", "pass", "a", "note"]
    assert lines[3].split()[3:5] == ["—", "info"]


def test_markdown_table() -> None:
    table = common.markdown_table(("a", "b"), [("x", "1"), ("y", "2")], "lr")
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| x | 1 |", "| y | 2 |"]
    with pytest.raises(ValueError, match="align"):
        common.markdown_table(("a", "b"), [], "l")


# ----------------------------------------------------------------------------- timing
def test_interleaved_times_round_robin_after_warmup() -> None:
    calls: list[str] = []
    times = common.interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2
    )
    assert calls == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert common.timed(lambda: 42)[0] == 42


def test_counting_operator_times_every_product_and_reuses_graphs() -> None:
    batches = common.digits_batches(40, 16)
    op = HessianOperator(common.digits_cnn((2, 2, 3)), F.cross_entropy, batches)
    settings = SLQSettings(lanczos_steps=5, probes=2, top_k=1)
    plain = spectrum(op, settings=settings, progress=False)
    counting = common.CountingOperator(op)
    passes = op.data_passes()
    counted = spectrum(counting, settings=settings, progress=False)
    assert len(counting.calls) == 5 and all(s > 0 for s in counting.calls)
    # reuse_graphs passes through: one fresh pass, then cached graphs
    assert op.data_passes() - passes == 1
    np.testing.assert_allclose(counted.nodes.values, plain.nodes.values)
    assert counted.attrs["model"] == "Sequential"  # provenance passes through


def test_compare_backends_times_each_and_checks_against_double_backward() -> None:
    batches = common.digits_batches(40, 16)
    model = common.digits_cnn((2, 2, 3))
    timings = common.compare_backends(
        model, batches, ["forward-over-reverse", "double-backward"], block=3, repeats=1
    )
    assert [t.name for t in timings] == ["forward-over-reverse", "double-backward"]
    forward, double = timings
    assert double.agreement == 0.0 and 0 < forward.agreement < 1e-6
    for t in timings:
        assert t.block == 3 and min(t.one, t.wide, t.first) > 0
        assert t.lockstep == pytest.approx(t.wide / (3 * t.one))


# ----------------------------------------------------------------------------- model and data
def test_digits_builders_and_fit() -> None:
    batches = common.digits_batches(40, 16)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 1, 8, 8), (16, 1, 8, 8), (8, 1, 8, 8)]
    assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x, _ in batches)
    assert sum(p.numel() for p in common.digits_cnn((4, 8, 9)).parameters()) == 5053
    model = common.digits_cnn((2, 2, 3))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    common.fit(model, batches, steps=20)
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) < before
    assert len(common.split_batches(x, y, 25)) == 2
