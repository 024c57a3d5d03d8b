"""Runs, series and steps of a view: which spectra, which recorded steps, clear errors.

A view takes a single spectrum (dims probe x node), a tracked run (step x probe x node)
or several runs along ``run``; a run may also hold the spectra of several curvature
matrices along ``curvature`` (Hessian, Gauss–Newton, empirical Fisher) and of the
Hessian's diagonal blocks along ``block`` (one per layer). The *series* of a view are the
combinations of these three dimensions (:data:`SERIES_DIMS`): :func:`each_series` yields
each as a single run with a ``step`` dimension, labelled by the labels of the dimensions
present (``"bn · ggn · conv1"``). Charts draw one panel (or one coloured line) per series.
Blocks are many (a network's layers), so the views show one block by default
(:func:`pick_blocks`: the first, or those named by ``block=``).

Density views keep only the steps that recorded a density (finite ``nodes``);
trajectories also keep the top-k records of ``Tracker(top_every=...)``, whose ``nodes``
are NaN but whose ``top_eigenvalues`` and gradient statistics are stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from hessnb.schema import QUADRATURE, require

__all__ = [
    "RECORD_VARIABLES",
    "SEPARATOR",
    "SERIES_DIMS",
    "BlockArg",
    "check_step",
    "density_mask",
    "each_series",
    "labels",
    "open_path",
    "pick_blocks",
    "record_mask",
    "run_names",
    "select_run",
    "select_series",
    "series_dims",
    "series_title",
    "step_ends",
    "steps_of",
]

#: Variables whose finite values mark a step as recorded: ``nodes`` at full records,
#: ``top_eigenvalues`` and ``has_density`` (0) also at top-k records. Steps that
#: ``hessnb.combine_runs`` pads for a run that did not record them are NaN in all three.
RECORD_VARIABLES = ("nodes", "top_eigenvalues", "has_density")
#: Dimensions whose labels tell the spectra of one view apart, outermost first.
SERIES_DIMS = ("run", "curvature", "block")
#: Joins the labels of a series (``"bn · ggn · conv1"``) and the names of its dimensions.
SEPARATOR = " · "
#: The ``block=`` argument of a view: one block name, several, or None (the first).
BlockArg = str | Sequence[str] | None


def open_path(path: str | Path) -> xr.Dataset:
    """Load a run file into memory with ``hessnb.open_run`` (the file is closed again)."""
    from hessnb.runfile import open_run

    return open_run(path)


def labels(ds: xr.Dataset, dim: str) -> list[str]:
    """Labels along ``dim`` as strings (positions when it has no coordinate), ``[]`` if absent."""
    if dim not in ds.dims:
        return []
    if dim in ds.coords:
        return [str(v) for v in ds[dim].values]
    return [str(i) for i in range(ds.sizes[dim])]


def run_names(ds: xr.Dataset) -> list[str]:
    """Names along the ``run`` dimension, or ``[]`` for a single run."""
    return labels(ds, "run")


def series_dims(ds: xr.Dataset, keep: Sequence[str] = ()) -> list[str]:
    """The series dimensions (:data:`SERIES_DIMS`) of ``ds``, less those in ``keep``."""
    return [d for d in SERIES_DIMS if d in ds.dims and d not in keep]


def series_title(ds: xr.Dataset, keep: Sequence[str] = ()) -> str:
    """What a series label names, e.g. ``"run · curvature"`` (``""`` for a single run)."""
    return SEPARATOR.join(series_dims(ds, keep))


def pick_blocks(ds: xr.Dataset, block: BlockArg = None) -> xr.Dataset:
    """``ds`` with only the block(s) a view shows, keeping the ``block`` dimension.

    Parameters
    ----------
    ds : xarray.Dataset
        Spectra, with or without a ``block`` dimension.
    block : str, sequence of str or None
        Block name(s) in ``ds["block"]``; None: the first block (stored order).

    Returns
    -------
    xarray.Dataset
        ``ds`` itself when it has no ``block`` dimension and ``block`` is None.

    Raises
    ------
    ValueError
        ``block`` names a block ``ds`` lacks, names none, or is given for a dataset
        without blocks.
    """
    names = labels(ds, "block")
    if not names:
        if block is None:
            return ds
        raise ValueError(
            f"block={block!r} was given, but this dataset holds no block spectra (no 'block' "
            "dimension); blocks come from hessnb.spectrum(op, blocks='layers')"
        )
    wanted = [names[0]] if block is None else [block] if isinstance(block, str) else list(block)
    unknown = [b for b in wanted if str(b) not in names]
    if unknown or not wanted:
        raise ValueError(
            f"no block named {(unknown or wanted)!r}; the dataset holds blocks {names}"
        )
    return ds.isel(block=[names.index(str(b)) for b in wanted])


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
    """Which steps hold a density (finite ``nodes`` in any series), shape (s,), bool.

    Top-k records (``has_density`` 0) and steps padded by ``hessnb.combine_runs`` are
    False. ``ds`` needs a ``step`` dimension.
    """
    return _finite_at_steps(ds, ("nodes",))


def record_mask(ds: xr.Dataset) -> np.ndarray:
    """Which steps hold a record of any kind (full or top-k, in any series), shape (s,), bool.

    A step counts when any of :data:`RECORD_VARIABLES` is finite there. ``ds`` needs a
    ``step`` dimension.
    """
    return _finite_at_steps(ds, RECORD_VARIABLES)


def _position(ds: xr.Dataset, dim: str, label: str | None) -> int:
    """Position of ``label`` along ``dim`` (None: the only one), else a clear error."""
    names = labels(ds, dim)
    if label is None:
        if len(names) > 1:
            raise ValueError(f"the dataset holds {dim}s {names}; pass {dim}=<one of them>")
        return 0
    if str(label) not in names:
        raise ValueError(f"no {dim} named {label!r}; the dataset holds {dim}s {names}")
    return names.index(str(label))


def _pick(
    ds: xr.Dataset, choice: Mapping[str, str | None]
) -> tuple[xr.Dataset, list[tuple[str, str]]]:
    """``ds`` at one label of each dimension in ``choice`` that it has (dims dropped).

    Returns the selection as a run (with a ``step`` dimension) and the ``(dim, label)``
    pairs picked.
    """
    picked = []
    for dim, label in choice.items():
        if dim in ds.dims:
            position = _position(ds, dim, label)
            picked.append((dim, labels(ds, dim)[position]))
            ds = ds.isel({dim: position}, drop=True)
    return _as_run(ds), picked


def _recorded(ds: xr.Dataset, name: str, densities_only: bool) -> xr.Dataset:
    """``ds`` at its recorded steps (its densities with ``densities_only``), else raise."""
    records = record_mask(ds)
    keep = density_mask(ds) if densities_only else records
    if not keep.any():
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


def _describe(picked: list[tuple[str, str]]) -> str:
    """``"run 'bn', curvature 'ggn'"`` for the labels picked, ``"the run"`` for none."""
    return ", ".join(f"{dim} {label!r}" for dim, label in picked) or "the run"


def select_series(
    ds: xr.Dataset, choice: Mapping[str, str | None], *, densities_only: bool = True
) -> xr.Dataset:
    """``ds`` at one label of each series dimension in ``choice``, at its recorded steps.

    Parameters
    ----------
    ds : xarray.Dataset
        Spectra (dims step?, probe, node, and any of :data:`SERIES_DIMS`).
    choice : mapping of str to str or None
        Dimension -> label, e.g. ``{"run": "bn", "block": "conv1"}``; None picks the only
        label (an error when there are several). Dimensions ``ds`` lacks are ignored;
        series dimensions not named are kept.
    densities_only : bool
        Keep only the steps holding a density (:func:`density_mask`), as density views
        need; False also keeps the top-k records (:func:`record_mask`), as trajectories
        of ``top_eigenvalues`` and the gradient statistics use. Steps count when any
        series kept recorded them.

    Returns
    -------
    xarray.Dataset
        Without the dimensions chosen, with a ``step`` dimension (a single spectrum
        becomes step 0).

    Raises
    ------
    ValueError
        Unknown label, several labels and none chosen, or a selection without any
        recorded step (or, with ``densities_only``, without any density).
    """
    require(ds, QUADRATURE, "a spectrum view")
    one, picked = _pick(ds, choice)
    return _recorded(one, _describe(picked), densities_only)


def select_run(
    ds: xr.Dataset, run: str | None = None, *, densities_only: bool = True
) -> xr.Dataset:
    """One run of ``ds``, at its recorded steps: :func:`select_series` of ``{"run": run}``.

    Parameters
    ----------
    ds : xarray.Dataset
        A run (dims step, probe, node, ...) or several along ``run``.
    run : str, optional
        Which run; required when ``ds`` holds several.
    densities_only : bool
        As for :func:`select_series`.

    Returns
    -------
    xarray.Dataset
        Without a ``run`` dimension; curvatures and blocks are kept.
    """
    return select_series(ds, {"run": run}, densities_only=densities_only)


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


def each_series(
    ds: xr.Dataset, *, densities_only: bool = True, keep: Sequence[str] = ()
) -> list[tuple[str | None, xr.Dataset]]:
    """``(label, series)`` for every combination of run, curvature and block in ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        A spectrum, a run, or several runs along ``run``; each with or without
        ``curvature`` and ``block`` dimensions.
    densities_only : bool
        As for :func:`select_series`.
    keep : sequence of str
        Series dimensions to keep in each series instead of iterating over them (e.g.
        ``("block",)`` for a view of every block at once).

    Returns
    -------
    list of (str or None, xarray.Dataset)
        Run-major order (``run``, then ``curvature``, then ``block``). The label joins
        the labels of the series dimensions present (``"bn · ggn · conv1"``; None when
        there are none); each series is :func:`select_series` of its labels. Combinations
        without any record (steps ``hessnb.combine_runs`` padded for a run that lacks
        that curvature or block) are left out.

    Raises
    ------
    ValueError
        As for :func:`select_series`, when no combination holds a record, or one holds
        top-k records but no density under ``densities_only``.
    """
    require(ds, QUADRATURE, "a spectrum view")
    dims = series_dims(ds, keep)
    combos = itertools.product(*(labels(ds, d) for d in dims))
    picks = [_pick(ds, dict(zip(dims, combo, strict=True))) for combo in combos]
    # combinations padded by combine_runs recorded nothing; if all did, the first raises
    kept = [(one, picked) for one, picked in picks if record_mask(one).any()] or picks[:1]
    return [
        (
            SEPARATOR.join(label for _, label in picked) or None,
            _recorded(one, _describe(picked), densities_only),
        )
        for one, picked in kept
    ]
