from pathlib import Path

import numpy as np

from hessnb import combine_runs
from hessnb.reference.demo import DemoSettings, summarise

SHIPPED = Path(__file__).parents[2] / "notebooks" / "data"


def test_summary_reports_last_step_and_peak_of_each_run():
    combined = combine_runs({"no-bn": SHIPPED / "no-bn.nc", "bn": SHIPPED / "bn.nc"})
    lines = summarise(combined).splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("no-bn", "bn"), strict=True):
        run = combined.sel(run=name)
        top = run["top_eigenvalues"].isel(k=0).values
        assert line.strip().startswith(f"{name}: step {int(run.step[-1])}:")
        assert f"largest top eigenvalue {np.nanmax(top):.4g} at step " in line
        assert f"grad_fraction {float(run.grad_fraction[-1]):.3f}" in line


def test_quick_settings_are_smaller():
    quick, full = DemoSettings.quick(), DemoSettings()
    assert quick.steps < full.steps and quick.examples < full.examples
    assert quick.slq.lanczos_steps < full.slq.lanczos_steps
