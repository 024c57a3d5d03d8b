"""A real tracked run with top-k records, built once for the view tests."""

from __future__ import annotations

import pytest
import xarray as xr
from viz_data import tracked_run


@pytest.fixture(scope="session")
def tracked(tmp_path_factory) -> xr.Dataset:
    """Steps 0, 2, 4, 6 of a digits MLP: full records at 0 and 6, top-k records at 2 and 4."""
    return tracked_run(tmp_path_factory.mktemp("tracked") / "run.nc")
