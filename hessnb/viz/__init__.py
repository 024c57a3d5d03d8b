"""Views of Hessian spectra: altair charts, an ipywidgets explorer, HTML reports.

Views never compute spectra: they read run datasets (``hessnb.open_run``) and derive
densities through ``ds.hess``.
"""

from __future__ import annotations

from hessnb.viz.charts import (
    density_chart,
    density_heatmap,
    gradient_chart,
    step_slider,
    top_eigenvalues_chart,
)
from hessnb.viz.explorer import Explorer, explore
from hessnb.viz.export import save, to_html
from hessnb.viz.frames import Smoothing, smoothing
from hessnb.viz.report import report_chart, write_report

__all__ = [
    # explorer
    "Explorer",
    # smoothing shared by views
    "Smoothing",
    # charts
    "density_chart",
    "density_heatmap",
    "explore",
    "gradient_chart",
    "report_chart",
    # export
    "save",
    "smoothing",
    "step_slider",
    "to_html",
    "top_eigenvalues_chart",
    "write_report",
]
