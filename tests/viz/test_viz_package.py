"""``hessnb.viz`` loads altair on first use of a chart, and ipywidgets only for the explorer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hessnb
import hessnb.viz

WATCHED = ("altair", "ipywidgets", "anywidget", "hessnb.viz", "hessnb.viz.explorer")
#: Imports hessnb, then hessnb.viz, then builds a static chart of a two-node spectrum and
#: touches ``hessnb.viz.explore``; prints which WATCHED modules were loaded after each stage.
STAGES = f"""
import json, sys

def loaded():
    return {{name: sys.modules.get(name) is not None for name in {WATCHED!r}}}

stages = {{}}
import hessnb
stages["hessnb"] = loaded()
import hessnb.viz
stages["viz"] = loaded()
import xarray as xr
spectrum = xr.Dataset(
    {{"nodes": (("probe", "node"), [[0.0, 2.0]]), "weights": (("probe", "node"), [[0.4, 0.6]])}}
)
assert hessnb.viz.density_chart(spectrum, points=20).to_dict()["layer"]
stages["chart"] = loaded()
try:
    hessnb.viz.explore
    stages["explore"] = "ok"
except ImportError as err:
    stages["explore"] = repr(err)
print(json.dumps(stages))
"""
#: ``None`` in ``sys.modules`` makes an import fail; altair then stubs its JupyterChart
#: (with anywidget installed, ``import altair`` itself imports anywidget and ipywidgets).
BLOCK_JUPYTER = "import sys\nsys.modules['ipywidgets'] = sys.modules['anywidget'] = None\n"


def stages(prelude: str = "") -> dict:
    """Run :data:`STAGES` in a fresh interpreter after ``prelude``."""
    done = subprocess.run(
        [sys.executable, "-c", prelude + STAGES],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_views_load_on_use_and_only_the_explorer_needs_jupyter() -> None:
    seen = stages(BLOCK_JUPYTER)
    assert not any(seen["hessnb"].values()), seen["hessnb"]  # import hessnb: no views
    viz = seen["viz"]  # import hessnb.viz: neither altair nor the explorer
    assert viz["hessnb.viz"] and not (viz["altair"] or viz["hessnb.viz.explorer"]), viz
    chart = seen["chart"]  # a static chart: altair, no ipywidgets
    assert chart["altair"], chart
    assert not (chart["ipywidgets"] or chart["anywidget"] or chart["hessnb.viz.explorer"]), chart
    assert "ipywidgets" in seen["explore"]  # only the explorer imports it


def test_every_public_name_resolves() -> None:
    from hessnb.viz import charts, explorer, report

    assert hessnb.viz.Explorer is explorer.Explorer
    assert hessnb.explore is hessnb.viz.explore is explorer.explore
    assert hessnb.viz.density_chart is charts.density_chart
    assert hessnb.viz.write_report is report.write_report
    for name in (
        "sharpness_chart",
        "gradient_measure_chart",
        "movement_chart",
        "layer_sharpness_chart",
    ):
        assert getattr(hessnb.viz, name) is getattr(charts, name)
    assert hessnb.viz.__all__ == sorted(hessnb.viz.__all__)
    for name in hessnb.viz.__all__:
        assert getattr(hessnb.viz, name).__module__.startswith("hessnb.viz."), name
        assert name in dir(hessnb.viz)
    with pytest.raises(AttributeError, match=r"has no attribute 'chart'"):
        hessnb.viz.chart  # noqa: B018
