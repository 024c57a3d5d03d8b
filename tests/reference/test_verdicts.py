"""Verdicts: computed from runs, with their thresholds, on hand-made runs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hessnb.reference import verdicts

STEPS = np.array([0, 1, 2, 5, 10, 20, 50, 95, 100, 105, 150, 200])


def _run(**series: np.ndarray) -> xr.Dataset:
    """A run with the given per-step series (``top`` is lambda_1)."""
    n = STEPS.size
    base = {
        "outlier_gap": np.full(n, 2.0),
        "n_outliers": np.full(n, 1.0),
        "grad_fraction": np.full(n, 0.5),
        "lambda_min": np.full(n, -0.1),
        "negative_mass": np.full(n, 0.01),
        "loss": np.linspace(2.3, 0.5, n),
        "top": np.full(n, 1.0),
    }
    base.update(series)
    top = base.pop("top")
    ds = xr.Dataset({k: ("step", v) for k, v in base.items()}, coords={"step": STEPS})
    ds["top_eigenvalues"] = (("step", "k"), np.stack([top, top / 2], axis=1))
    ds.attrs["lr_drop"] = 100
    return ds


def test_isolation_compares_the_median_gap_of_the_second_half():
    plain = _run(outlier_gap=np.where(STEPS >= 100, 10.0, 1.0))
    assert verdicts.isolation(plain, _run()).holds  # 10 vs 2: ratio 5
    assert not verdicts.isolation(_run(outlier_gap=np.full(STEPS.size, 3.9)), _run()).holds
    text = verdicts.isolation(plain, _run()).text
    assert "median 10x" in text and "ratio 5 against the threshold 2" in text


def test_gradient_concentration_needs_level_and_lead():
    high = _run(grad_fraction=np.full(STEPS.size, 0.95))
    assert verdicts.gradient_concentration(high, _run()).holds
    assert not verdicts.gradient_concentration(high, high).holds  # no lead over BN
    assert not verdicts.gradient_concentration(_run(grad_fraction=np.full(12, 0.7)), _run()).holds


def test_negative_eigenvalues_must_be_large_then_fall():
    falling = np.where(STEPS <= 2, -2.0, -0.2)
    assert verdicts.negative_eigenvalues(_run(lambda_min=falling)).holds  # 2.0 -> 0.2
    assert not verdicts.negative_eigenvalues(_run(lambda_min=np.full(12, -2.0))).holds
    assert not verdicts.negative_eigenvalues(_run(lambda_min=np.full(12, -0.1))).holds


def test_lr_drop_needs_a_change_across_the_drop_larger_than_before():
    jump = np.where(STEPS > 100, 3.0, 1.0)
    assert verdicts.lr_drop(_run(top=jump), 100).holds
    drift = np.where(STEPS > 100, 3.0, np.where(STEPS >= 100, 1.0, 0.4))
    assert not verdicts.lr_drop(_run(top=drift), 100).holds  # it changed as much before


@pytest.mark.parametrize(("eval_gap", "holds"), [(4.0, True), (3.9, False)])
def test_bn_modes_threshold(eval_gap, holds):
    assert verdicts.bn_modes(_run(), _run(outlier_gap=np.full(12, eval_gap))).holds == holds


def test_population_statistics_needs_outliers_and_slower_training():
    slow = np.linspace(2.3, 1.0, STEPS.size)
    outliers = np.full(STEPS.size, 6.0)
    assert verdicts.population_statistics(_run(), _run(outlier_gap=outliers, loss=slow)).holds
    assert not verdicts.population_statistics(_run(), _run(outlier_gap=outliers)).holds
    assert not verdicts.population_statistics(_run(), _run(loss=slow)).holds


def test_evaluate_gives_every_verdict_with_its_label():
    runs = {name: _run() for name in ("no-bn", "bn", "bn-eval", "bn-population")}
    found = verdicts.evaluate(runs)
    assert [v.experiment.split()[0] for v in found] == ["E1", "E1", "E2", "E3", "E4", "E5"]
    assert all(str(v).startswith(f"[{v.experiment}] ") for v in found)
