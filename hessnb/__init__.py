"""hessnb: Hessian eigenvalue densities of neural networks through training.

Stochastic Lanczos quadrature (float64, full re-orthogonalisation) over a whole dataset,
results as xarray datasets indexed by training step, and Jupyter views. The views
(``hessnb.viz``, ``hessnb.explore``) and the reference models and data
(``hessnb.reference``) are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from hessnb import accessor as accessor  # registers the ds.hess accessor
from hessnb.errors import HessnbError, NonDeterministicError, NonFiniteError, RunFileError
from hessnb.hessian import (
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    PreconditionedOperator,
    adam_preconditioner,
)
from hessnb.linalg import (
    LanczosResult,
    MatrixOperator,
    lanczos,
    lanczos_block,
    tridiagonal_to_quadrature,
    wasserstein_bound,
    wasserstein_distance,
)
from hessnb.runfile import combine_runs, open_run
from hessnb.settings import SLQSettings
from hessnb.slq import estimate, spectrum
from hessnb.tracking import Tracker, make_schedule
from hessnb.version import __version__

_LAZY = {
    "viz": ("hessnb.viz", None),
    "explore": ("hessnb.viz", "explore"),
    "Explorer": ("hessnb.viz", "Explorer"),
    "reference": ("hessnb.reference", None),
}


def __getattr__(name: str) -> Any:
    """Views and reference code on first use (they import altair, ipywidgets, sklearn)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hessnb' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


__all__ = [
    "EmpiricalFisherOperator",
    "Explorer",
    "GGNOperator",
    "HessianOperator",
    "HessnbError",
    "LanczosResult",
    "MatrixOperator",
    "NonDeterministicError",
    "NonFiniteError",
    "PreconditionedOperator",
    "RunFileError",
    "SLQSettings",
    "Tracker",
    "__version__",
    "adam_preconditioner",
    "combine_runs",
    "estimate",
    "explore",
    "lanczos",
    "lanczos_block",
    "make_schedule",
    "open_run",
    "reference",
    "spectrum",
    "tridiagonal_to_quadrature",
    "viz",
    "wasserstein_bound",
    "wasserstein_distance",
]
