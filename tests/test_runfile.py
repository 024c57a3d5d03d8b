"""Run files: a missing netCDF backend is named as such, not blamed on the file."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hessnb import runfile


def test_missing_backend_is_an_import_error_not_a_corrupt_file(tmp_path, monkeypatch):
    path = tmp_path / "run.nc"
    ds = xr.Dataset(
        {
            "nodes": (("step", "probe", "node"), np.zeros((1, 1, 2))),
            "weights": (("step", "probe", "node"), np.full((1, 1, 2), 0.5)),
            "top_eigenvalues": (("step", "k"), np.zeros((1, 1))),
        },
        coords={"step": [0]},
    )
    runfile.write_run(ds, path)
    assert runfile.open_run(path).step.values.tolist() == [0]

    def missing(*args, **kwargs):
        raise ImportError("No module named 'h5py'")

    monkeypatch.setattr(runfile.xr, "open_dataset", missing)
    with pytest.raises(ImportError, match=r"needs h5netcdf and h5py .*pip install h5netcdf h5py"):
        runfile.open_run(path)
    assert path.exists()  # the file is left alone
