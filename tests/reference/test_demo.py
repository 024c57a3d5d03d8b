"""The demo's summary and verdict: computed from the runs, with the stated threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hessnb import combine_runs
from hessnb.reference.demo import GAP_RATIO_THRESHOLD, DemoSettings, summarise, verdict

SHIPPED = Path(__file__).parents[2] / "notebooks" / "data"


def _runs(gap_plain: float, gap_bn: float) -> xr.Dataset:
    def run(gap: float, outliers: int, fraction: float) -> xr.Dataset:
        steps = [0, 10]
        values = {
            "outlier_gap": [1.0, gap],
            "n_outliers": [0.0, outliers],
            "top_eigenvalues": [[1.0], [gap]],
            "negative_mass": [0.2, 0.01],
            "grad_fraction": [0.1, fraction],
            "loss": [2.3, 0.5],
            "accuracy": [0.1, 0.9],
        }
        return xr.Dataset(
            {k: (("step", "k") if np.ndim(v) == 2 else ("step",), v) for k, v in values.items()},
            coords={"step": steps},
        )

    return combine_runs({"no-bn": run(gap_plain, 9, 0.97), "bn": run(gap_bn, 2, 0.5)})


def test_summary_reports_every_statistic_at_the_last_step():
    combined = combine_runs({"no-bn": SHIPPED / "no-bn.nc", "bn": SHIPPED / "bn.nc"})
    lines = summarise(combined).splitlines()
    for line, name in zip(lines[:2], ("no-bn", "bn"), strict=True):
        last = combined.sel(run=name).dropna("step", subset=["outlier_gap"]).isel(step=-1)
        assert line.strip().startswith(f"{name}: step {int(last.step)}:")
        assert f"outlier_gap {float(last.outlier_gap):.3g}" in line
        assert f"n_outliers {int(last.n_outliers)}" in line
        assert f"negative_mass {float(last.negative_mass):.3f}" in line
        assert f"grad_fraction {float(last.grad_fraction):.3f}" in line
    assert lines[-1] == verdict(combined)


@pytest.mark.parametrize(
    ("gaps", "holds"),
    [((30.0, 3.0), True), ((6.0, 3.0), True), ((5.9, 3.0), False), ((2.0, 4.0), False)],
)
def test_verdict_uses_the_stated_threshold(gaps, holds):
    text = verdict(_runs(*gaps))
    ratio = gaps[0] / gaps[1]
    assert (ratio >= GAP_RATIO_THRESHOLD) == holds
    assert f"{ratio:.2g}x more isolated without BN (threshold 2x)" in text
    assert ("holds at this scale" in text) == holds
    assert ("does NOT reproduce" in text) == (not holds)
    assert "97 % in the top eigenspace without BN and 50 % with it" in text


def test_quick_settings_are_smaller():
    quick, full = DemoSettings.quick(), DemoSettings()
    assert quick.steps < full.steps and quick.examples <= full.examples
    assert quick.slq.lanczos_steps < full.slq.lanczos_steps
    assert full.batch_size == 128 and full.steps == 300 and full.lr == 0.05
