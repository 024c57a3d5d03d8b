"""hessnb: Hessian eigenvalue densities of neural networks through training.

Stochastic Lanczos quadrature (float64, full re-orthogonalisation) over a whole dataset,
results as xarray datasets indexed by training step, and Jupyter views.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hessnb import accessor as _accessor  # noqa: F401  (registers ds.hess)
from hessnb.errors import HessnbError, NonDeterministicError, NonFiniteError, RunFileError
from hessnb.lanczos import LanczosResult, lanczos, lanczos_block
from hessnb.operators import HessianOperator
from hessnb.quadrature import tridiagonal_to_quadrature, wasserstein_bound
from hessnb.runfile import combine_runs, open_run
from hessnb.schedule import make_schedule
from hessnb.spectrum import MatrixOperator, estimate, spectrum
from hessnb.tracking import Tracker
from hessnb.training import train


def __getattr__(name: str):  # lazy: the views pull in altair and ipywidgets
    if name in ("explore", "Explorer", "viz"):
        import importlib

        viz = importlib.import_module("hessnb.viz")
        return viz if name == "viz" else getattr(viz, name)
    raise AttributeError(f"module 'hessnb' has no attribute {name!r}")


__all__ = [
    # errors
    "HessnbError",
    # operators
    "HessianOperator",
    # linear algebra
    "LanczosResult",
    "MatrixOperator",
    "NonDeterministicError",
    "NonFiniteError",
    "RunFileError",
    "__version__",
    # tracking
    "Tracker",
    # estimation
    "combine_runs",
    "estimate",
    "explore",
    "Explorer",
    "lanczos",
    "lanczos_block",
    "make_schedule",
    "open_run",
    "spectrum",
    "train",
    "tridiagonal_to_quadrature",
    "wasserstein_bound",
]
