"""Run files: netCDF datasets indexed by training step, written crash-safely.

Every write goes to a temporary file in the same folder, is flushed to disk, and then
atomically renamed over the run file, so a crash (even ``kill -9``) at any moment leaves
either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from hessnb.errors import RunFileError
from hessnb.schema import RUN_FILE, SETTINGS, SETTINGS_IMPLIED, require

__all__ = [
    "append_record",
    "atomic_write",
    "check_compatible",
    "combine_runs",
    "open_run",
    "stale_temporaries",
    "write_run",
]

ENGINE = "h5netcdf"
TMP_SUFFIX = ".tmp"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files left next to ``path`` by writers that died (not by live ones)."""
    path = Path(path)
    stale = []
    for tmp in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2 : -len(TMP_SUFFIX)]
        if not pid.isdigit() or not _alive(int(pid)):
            stale.append(tmp)
    return sorted(stale)


def _clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """netCDF-safe attributes: bools to ints, drop None."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        out[key] = int(value) if isinstance(value, (bool, np.bool_)) else value
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` and atomically rename ``tmp`` over ``path``.

    The temporary file lies in the same folder; it is flushed to disk (fsync) before the
    rename and the folder is fsync'd after it, so a crash at any moment leaves either the
    previous file or the new one. The temporary file is removed if ``write`` fails.

    Raises
    ------
    ValueError
        If the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist; create it or choose another path")
    tmp = _tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_run(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` to ``path`` as netCDF, atomically (see :func:`atomic_write`)."""
    ds = ds.copy()
    ds.attrs = _clean_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = _clean_attrs(var.attrs)
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine=ENGINE))


def append_record(run: xr.Dataset | None, record: xr.Dataset) -> xr.Dataset:
    """``run`` with ``record`` (dims step, ...) added along ``step``; attributes of ``record``.

    Variables missing on either side are filled with NaN (e.g. ``update_*`` recorded at
    some steps only).
    """
    if run is None:
        return record
    previous = run.copy()
    previous.attrs = {}
    grown = xr.concat(
        [previous, record],
        dim="step",
        join="outer",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        combine_attrs="override",
    ).sortby("step")
    grown.attrs = record.attrs
    return grown


def open_run(path: str | os.PathLike) -> xr.Dataset:
    """Open a run file (fully loaded into memory; the file is closed again).

    Parameters
    ----------
    path : str or path
        A file written by :class:`hessnb.Tracker` (or :func:`write_run`).

    Returns
    -------
    xarray.Dataset
        Indexed by ``step``; ``ds.hess.density()`` gives densities by step.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    RunFileError
        If the file is corrupt, truncated, or not a hessnb run.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run file at {path}")
    try:
        with xr.open_dataset(path, engine=ENGINE) as handle:
            ds = handle.load()
    except ImportError as exc:  # the file may be fine: a library is missing
        raise ImportError(
            f"reading {path} needs h5netcdf and h5py ({exc}); pip install h5netcdf h5py"
        ) from exc
    except Exception as exc:  # h5py/netCDF raise many types for damaged files
        raise RunFileError(
            f"{path} is not a readable netCDF run file ({type(exc).__name__}: {exc}); it may "
            "be truncated or corrupt. Move it away (hessnb never overwrites it silently) and "
            "start a new run, or pass another path"
        ) from exc
    try:
        require(ds, RUN_FILE, "a run file", dims=("step",))
    except ValueError as exc:
        raise RunFileError(f"{path} is a netCDF file but not a hessnb run: {exc}") from None
    return ds


def check_compatible(existing: Mapping[str, Any], new: Mapping[str, Any], path: Any) -> None:
    """Refuse to mix runs whose settings differ (``SETTINGS``)."""
    differ = [
        f"{key}: file has {existing.get(key, SETTINGS_IMPLIED.get(key))!r}, tracker has "
        f"{new.get(key)!r}"
        for key in SETTINGS
        if key in new and str(existing.get(key, SETTINGS_IMPLIED.get(key))) != str(new.get(key))
    ]
    if differ:
        raise RunFileError(
            f"{path} was written with different settings ({'; '.join(differ)}). Resume with "
            "the same settings, or write to another path (or pass overwrite=True to replace "
            "it)"
        )


def combine_runs(runs: Mapping[str, xr.Dataset | str | os.PathLike]) -> xr.Dataset:
    """Combine several runs (e.g. with and without batch norm) along a ``run`` dimension.

    Parameters
    ----------
    runs : mapping of name to dataset or path
        Steps may differ between runs (missing steps are NaN); attributes that differ
        (model, n_params, bn_mode, ...) become coordinates along ``run``.

    Returns
    -------
    xarray.Dataset
        Dims ``(run, step, ...)``.
    """
    if not runs:
        raise ValueError("combine_runs needs at least one run")
    datasets = {
        name: (open_run(item) if not isinstance(item, xr.Dataset) else item)
        for name, item in runs.items()
    }
    keys = set().union(*(ds.attrs for ds in datasets.values()))
    shared, varying = {}, []
    for key in sorted(keys):
        values = [ds.attrs.get(key) for ds in datasets.values()]
        if all(str(v) == str(values[0]) for v in values):
            shared[key] = values[0]
        else:
            varying.append(key)
    parts = [ds.copy() for ds in datasets.values()]
    for part in parts:
        part.attrs = {}
    index = pd.Index(list(datasets), name="run")
    combined = xr.concat(parts, dim=index, join="outer", data_vars="all", combine_attrs="drop")
    for key in varying:
        values = [str(ds.attrs.get(key, "")) for ds in datasets.values()]
        combined = combined.assign_coords({key: ("run", values)})
    combined.attrs = shared
    return combined
