"""Runs and steps of a view: which run, which recorded steps, and clear errors.

A view takes a single spectrum (dims probe x node), a tracked run (step x probe x node)
or several runs along ``run``; these helpers reduce any of them to one run with a
``step`` dimension. Density views keep only the steps that recorded a density (finite
``nodes``); trajectories also keep the top-k records of ``Tracker(top_every=...)``,
whose ``nodes`` are NaN but whose ``top_eigenvalues`` and gradient statistics are stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from hessnb.schema import QUADRATURE, require

__all__ = [
    "RECORD_VARIABLES",
    "check_step",
    "density_mask",
    "each_run",
    "open_path",
    "record_mask",
    "run_names",
    "select_run",
    "step_ends",
    "steps_of",
]

#: Variables whose finite values mark a step as recorded: ``nodes`` at full records,
#: ``top_eigenvalues`` and ``has_density`` (0) also at top-k records. Steps that
#: ``hessnb.combine_runs`` pads for a run that did not record them are NaN in all three.
RECORD_VARIABLES = ("nodes", "top_eigenvalues", "has_density")


def open_path(path: str | Path) -> xr.Dataset:
    """Load a run file into memory with ``hessnb.open_run`` (the file is closed again)."""
    from hessnb.runfile import open_run

    return open_run(path)


def run_names(ds: xr.Dataset) -> list[str]:
    """Names along the ``run`` dimension, or ``[]`` for a single run."""
    if "run" not in ds.dims:
        return []
    return (
        [str(r) for r in ds["run"].values]
        if "run" in ds.coords
        else [str(i) for i in range(ds.sizes["run"])]
    )


def _as_run(ds: xr.Dataset) -> xr.Dataset:
    """A single spectrum (no ``step`` dim) becomes a run of one step, step 0."""
    if "step" not in ds.dims:
        return ds.expand_dims(step=[0])
    return ds


def _finite_at_steps(ds: xr.Dataset, names: tuple[str, ...]) -> np.ndarray:
    """Whether any of ``names`` (those in ``ds``) holds a finite value at each step."""
    found = np.zeros(ds.sizes["step"], dtype=bool)
    for name in names:
        if name not in ds or "step" not in ds[name].dims:
            continue
        finite = np.isfinite(ds[name].transpose("step", ...).values)
        if finite.size:  # (0, -1) is no shape numpy can infer
            found |= finite.reshape(found.size, -1).any(axis=1)
    return found


def density_mask(ds: xr.Dataset) -> np.ndarray:
    """Which steps hold a density (finite ``nodes`` in any run), shape (s,), bool.

    Top-k records (``has_density`` 0) and steps padded by ``hessnb.combine_runs`` are
    False. ``ds`` needs a ``step`` dimension.
    """
    return _finite_at_steps(ds, ("nodes",))


def record_mask(ds: xr.Dataset) -> np.ndarray:
    """Which steps hold a record of any kind (full or top-k, in any run), shape (s,), bool.

    A step counts when any of :data:`RECORD_VARIABLES` is finite there. ``ds`` needs a
    ``step`` dimension.
    """
    return _finite_at_steps(ds, RECORD_VARIABLES)


def select_run(
    ds: xr.Dataset, run: str | None = None, *, densities_only: bool = True
) -> xr.Dataset:
    """One run of ``ds``, keeping the steps at which it recorded a density (or anything).

    Parameters
    ----------
    ds : xarray.Dataset
        A run (dims step, probe, node, ...) or several along ``run``.
    run : str, optional
        Which run; required when ``ds`` holds several.
    densities_only : bool
        Keep only the steps holding a density (:func:`density_mask`), as density views
        need; False also keeps the top-k records (:func:`record_mask`), as trajectories
        of ``top_eigenvalues`` and the gradient statistics use.

    Returns
    -------
    xarray.Dataset
        Without a ``run`` dimension, with a ``step`` dimension (a single spectrum becomes
        step 0).

    Raises
    ------
    ValueError
        Unknown run, or a run without any recorded step (or, with ``densities_only``,
        without any density).
    """
    require(ds, QUADRATURE, "a spectrum view")
    names = run_names(ds)
    label = run
    if names:
        if run is None:
            if len(names) > 1:
                raise ValueError(f"the dataset holds runs {names}; pass run=<one of them>")
            run = names[0]
        if str(run) not in names:
            raise ValueError(f"no run named {run!r}; the dataset holds runs {names}")
        position = names.index(str(run))
        ds = ds.isel(run=position, drop=True)
        label = str(run)
    ds = _as_run(ds)
    records = record_mask(ds)
    keep = density_mask(ds) if densities_only else records
    if not keep.any():
        name = f"run {label!r}" if label is not None else "the run"
        if records.any():
            raise ValueError(
                f"{name} holds {int(records.sum())} top-k records but no density yet; a "
                "density view needs a full record (see Tracker's every=)"
            )
        raise ValueError(
            f"{name} holds no recorded steps yet (it is empty); track at least one step "
            "before viewing it"
        )
    return ds.isel(step=np.flatnonzero(keep))


def steps_of(ds: xr.Dataset) -> np.ndarray:
    """Recorded steps of a single run, shape (s,), int64, increasing."""
    return np.asarray(ds["step"].values, dtype=np.int64)


def check_step(ds: xr.Dataset, step: int | None) -> int:
    """``step`` if the run recorded it (the last step when None), else a clear error.

    Parameters
    ----------
    ds : xarray.Dataset
        A single run (from :func:`select_run`).
    step : int, optional
        A training step.

    Returns
    -------
    int
        The step.

    Raises
    ------
    TypeError
        ``step`` is not an int.
    ValueError
        The run did not record ``step`` (the message names the nearest recorded step).
    """
    steps = steps_of(ds)
    if step is None:
        return int(steps[-1])
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int (a training step), got {type(step).__name__}")
    if int(step) not in set(steps.tolist()):
        nearest = int(steps[np.argmin(np.abs(steps - int(step)))])
        shown = ", ".join(map(str, steps[:12])) + (", ..." if steps.size > 12 else "")
        raise ValueError(
            f"step {int(step)} was not recorded; recorded steps are {shown} (nearest: {nearest})"
        )
    return int(step)


def step_ends(steps: np.ndarray) -> np.ndarray:
    """For each step, the next recorded step (a slider value in ``[step, end)`` shows it).

    Parameters
    ----------
    steps : array, shape (s,)
        Recorded steps, increasing.

    Returns
    -------
    array, shape (s,)
        The following step; the last step gets ``step + max(1, last gap)``.
    """
    steps = np.asarray(steps, dtype=np.int64)
    gap = int(np.diff(steps).max()) if steps.size > 1 else 1
    return np.append(steps[1:], steps[-1] + max(gap, 1))


def each_run(ds: xr.Dataset, *, densities_only: bool = True) -> list[tuple[str | None, xr.Dataset]]:
    """``(name, run)`` for every run of ``ds`` (name None for a dataset without runs).

    Parameters
    ----------
    ds : xarray.Dataset
        A spectrum, a run, or several runs along ``run``.
    densities_only : bool
        As for :func:`select_run`.

    Returns
    -------
    list of (str or None, xarray.Dataset)
        Each run as :func:`select_run` returns it, in the order of ``run``.
    """
    names = run_names(ds) or [None]
    return [(name, select_run(ds, name, densities_only=densities_only)) for name in names]
