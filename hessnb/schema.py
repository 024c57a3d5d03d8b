"""The dataset and run-file contract: every variable, dimension, setting and attribute.

One table says what hessnb stores; every writer (``slq.to_dataset``, the tracker), reader
(``runfile.open_run``, ``ds.hess``) and view checks datasets against it through
:func:`require`. Variables carry CF-style ``long_name``/``units``; dataset attributes hold
provenance only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import xarray as xr

__all__ = [
    "DIMENSIONS",
    "PROVENANCE",
    "QUADRATURE",
    "RUN_FILE",
    "SETTINGS",
    "SETTINGS_IMPLIED",
    "VARIABLES",
    "Variable",
    "require",
    "variable_attrs",
]


@dataclass(frozen=True)
class Variable:
    """One stored variable: its dimensions within one spectrum, and its CF attributes.

    Attributes
    ----------
    dims : tuple of str
        Dimensions of one record; the tracker adds ``step`` in front (except for
        ``per_step=False`` variables), :func:`hessnb.combine_runs` adds ``run``.
    long_name, units : str
        CF attributes written with the variable.
    per_step : bool
        Whether the tracker stores one value per training step.
    computed : bool
        Whether hessnb computes it (user scalars may not take its name).
    """

    dims: tuple[str, ...]
    long_name: str
    units: str = "1"
    per_step: bool = True
    computed: bool = True


#: Dimensions of hessnb datasets.
DIMENSIONS = {
    "step": "training step (number of optimizer updates before the record)",
    "probe": "random start vector of stochastic Lanczos quadrature",
    "node": "quadrature node (Lanczos step)",
    "k": "rank of a top eigenvalue (1 = largest)",
    "run": "one run of several combined by hessnb.combine_runs",
    "curvature": "curvature matrix: hessian, ggn (Gauss-Newton) or fisher (empirical Fisher)",
    "block": "diagonal block of the curvature: one layer or named group of parameters",
}

#: Every variable hessnb writes. User scalars (``tracker.record(step, lr=...)``) may use
#: any other identifier; ``lr`` and ``momentum`` are listed so that they get long names.
VARIABLES: dict[str, Variable] = {
    # quadrature and its summaries (hessnb.spectrum)
    "nodes": Variable(("probe", "node"), "quadrature node (Ritz value)"),
    "weights": Variable(("probe", "node"), "quadrature weight"),
    "lanczos_length": Variable(("probe",), "Lanczos steps taken"),
    "top_eigenvalues": Variable(("k",), "top Hessian eigenvalue (Ritz value)"),
    "top_residuals": Variable(("k",), "Ritz residual norm ||Hu - theta u||"),
    "trace": Variable((), "Hessian trace estimate"),
    "trace_stderr": Variable((), "standard error of the trace estimate over probes"),
    "w1_bound": Variable((), "a-priori Wasserstein-1 bound relative to the spectral range"),
    "w1_posterior": Variable((), "a-posteriori Wasserstein-1 bound relative to the Ritz range"),
    "n_deflated": Variable(("probe",), "converged top Ritz values given weight 1/n"),
    "lambda_min": Variable((), "smallest Ritz value"),
    "negative_mass": Variable((), "quadrature weight on Ritz values below -sigma (probe mean)"),
    "bulk_edge": Variable((), "top of the bulk: largest Ritz value that is not an outlier"),
    "n_outliers": Variable((), "top Ritz values isolated above the bulk"),
    "outlier_gap": Variable((), "top eigenvalue / bulk_edge"),
    "n_params": Variable((), "number of parameters", per_step=False),
    # record bookkeeping (hessnb.Tracker)
    "has_density": Variable((), "1 if the step holds a full density, 0 for a top-k record"),
    "hvps": Variable((), "Hessian-vector products the record used (one per column)"),
    # training statistics (hessnb.Tracker)
    "loss": Variable((), "full-dataset mean loss"),
    "accuracy": Variable((), "full-dataset accuracy"),
    "grad_norm": Variable((), "norm of the full-dataset gradient"),
    "grad_fraction": Variable((), "fraction of |g|^2 in the top-k eigenspace"),
    "grad_overlap": Variable(("k",), "(u_i . g)^2 / |g|^2"),
    "grad_hg_cosine": Variable((), "cosine between g and Hg"),
    "grad_nodes": Variable(("node",), "quadrature node of the gradient's spectral measure"),
    "grad_weights": Variable(("node",), "share of |g|^2 at the gradient's quadrature node"),
    "update_norm": Variable((), "norm of the optimizer's update"),
    "update_fraction": Variable((), "fraction of |update|^2 in the top-k eigenspace"),
    "update_overlap": Variable(("k",), "(u_i . update)^2 / |update|^2"),
    "update_grad_cosine": Variable((), "cosine between the update and g"),
    "lr": Variable((), "learning rate", computed=False),
    "momentum": Variable((), "heavy-ball momentum of the optimizer", computed=False),
}

#: Variables that make a dataset a hessnb spectrum (``ds.hess`` needs them).
QUADRATURE = ("nodes", "weights")
#: Variables every run file holds, besides the ``step`` dimension.
RUN_FILE = ("nodes", "weights", "top_eigenvalues")

#: Attributes that must agree between a run file and a tracker resuming it.
SETTINGS = (
    "n_params",
    "lanczos_steps",
    "probes",
    "top_k",
    "seed",
    "deflate",
    "bn_mode",
    "curvature",
    "blocks",
    "preconditioner",
)
#: Values implied for settings that files written before they existed lack.
SETTINGS_IMPLIED = {
    "deflate": 0,
    "curvature": "hessian",
    "blocks": "none",
    "preconditioner": "none",
}

#: Provenance attributes, in the order reports show them.
PROVENANCE = (
    "model",
    "n_params",
    "lanczos_steps",
    "probes",
    "top_k",
    "seed",
    "deflate",
    "deflation_tol",
    "bn_mode",
    "has_batchnorm",
    "n_examples",
    "hessian_batch_size",
    "dtype",
    "curvature",
    "blocks",
    "preconditioner",
    "preconditioner_optimizer",
    "preconditioner_eps",
    "preconditioner_bias_correction",
    "hvp",
    "precision",
    "data",
    "schedule",
    "top_every",
    "run",
    "hessnb_version",
)


def variable_attrs(name: str) -> dict[str, Any]:
    """CF attributes of variable ``name`` (``long_name`` = the name for unknown scalars)."""
    spec = VARIABLES.get(name)
    if spec is None:
        return {"long_name": name}
    return {"long_name": spec.long_name, "units": spec.units}


def require(
    ds: Any, variables: Iterable[str] = QUADRATURE, purpose: str = "this", dims: Iterable[str] = ()
) -> xr.Dataset:
    """Return ``ds`` if it is a dataset holding ``variables`` and ``dims``, else raise.

    Parameters
    ----------
    ds : object
        Should be an ``xarray.Dataset`` from ``hessnb.spectrum``, ``hessnb.Tracker`` or
        ``hessnb.open_run``.
    variables : iterable of str
        Variables the caller reads.
    purpose : str
        What they are needed for, quoted in the message (e.g. ``"the explorer"``).
    dims : iterable of str
        Dimensions the caller needs (e.g. ``("step",)``).

    Raises
    ------
    TypeError
        If ``ds`` is not an ``xarray.Dataset``.
    ValueError
        Naming the missing variables or dimensions and what the dataset holds instead.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"{purpose} needs an xarray.Dataset from hessnb.spectrum, hessnb.Tracker or "
            f"hessnb.open_run, got {type(ds).__name__}"
        )
    missing = [v for v in variables if v not in ds]
    missing += [f"the {d!r} dimension" for d in dims if d not in ds.dims]
    if missing:
        raise ValueError(
            f"{purpose} needs {', '.join(missing)}, which this dataset lacks (it has: "
            f"{', '.join(map(str, ds.data_vars)) or 'no variables'}); pass a dataset "
            "written by hessnb.spectrum, hessnb.Tracker or hessnb.open_run"
        )
    return ds
