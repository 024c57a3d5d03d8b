"""Views of Hessian spectra: altair charts, an ipywidgets explorer, HTML reports.

Views never compute spectra: they read run datasets (``hessnb.open_run``) and derive
densities through ``ds.hess``, each step with the paper's kernel for its own spectral
range (:class:`Smoothing`). Runs may hold the spectra of several curvature matrices
(``curvature``) and of the Hessian's diagonal blocks (``block``): every view draws each
curvature and one block (``block=``), :func:`layer_sharpness_chart` every block. In a
notebook without internet access, call :func:`use_offline_renderer` once so that charts
draw with no CDN. Importing this package imports neither altair nor any Jupyter module:
each name below loads its module on first use, and only the explorer (:func:`explore`,
:class:`Explorer`) imports ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hessnb.viz.charts import (
        density_chart,
        density_heatmap,
        gradient_chart,
        gradient_measure_chart,
        layer_sharpness_chart,
        movement_chart,
        sharpness_chart,
        statistics_chart,
        step_slider,
        top_eigenvalues_chart,
    )
    from hessnb.viz.explorer import Explorer, explore
    from hessnb.viz.export import save, to_html
    from hessnb.viz.offline import use_offline_renderer
    from hessnb.viz.report import load_runs, report_chart, write_report
    from hessnb.viz.smoothing import Smoothing

#: Public name -> the submodule of ``hessnb.viz`` that defines it.
_HOMES = {
    "Explorer": "explorer",
    "Smoothing": "smoothing",
    "density_chart": "charts",
    "density_heatmap": "charts",
    "explore": "explorer",
    "gradient_chart": "charts",
    "gradient_measure_chart": "charts",
    "layer_sharpness_chart": "charts",
    "load_runs": "report",
    "movement_chart": "charts",
    "report_chart": "report",
    "save": "export",
    "sharpness_chart": "charts",
    "statistics_chart": "charts",
    "step_slider": "charts",
    "to_html": "export",
    "top_eigenvalues_chart": "charts",
    "use_offline_renderer": "offline",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    """Import the submodule defining ``name`` on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'hessnb.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hessnb.viz.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "Explorer",
    "Smoothing",
    "density_chart",
    "density_heatmap",
    "explore",
    "gradient_chart",
    "gradient_measure_chart",
    "layer_sharpness_chart",
    "load_runs",
    "movement_chart",
    "report_chart",
    "save",
    "sharpness_chart",
    "statistics_chart",
    "step_slider",
    "to_html",
    "top_eigenvalues_chart",
    "use_offline_renderer",
    "write_report",
]
