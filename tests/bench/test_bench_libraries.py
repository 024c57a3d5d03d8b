"""``bench.libraries``: third-party SLQ adapters, used only when installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from torch.nn import functional as F

from bench import common, libraries
from hessnb import HessianOperator


def test_set_up_reports_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libraries, "installed", lambda name: False)
    found, missing = libraries.set_up(common.digits_cnn((1, 1, 2)), [], 3)
    assert found == [] and missing == list(libraries.LIBRARIES)


def test_installed_follows_importability() -> None:
    for name, module in libraries.LIBRARIES.items():
        assert libraries.installed(name) == (importlib.util.find_spec(module) is not None)


@pytest.mark.skipif(not libraries.installed("curvlinops"), reason="curvlinops not installed")
def test_curvlinops_quadrature_is_close_to_the_exact_spectrum() -> None:
    batches = common.digits_batches(20, 10)
    model = common.digits_cnn((1, 1, 2))
    lib = libraries.curvlinops_slq(model, batches, 12)
    nodes, weights = lib.run(0)
    assert nodes.shape == weights.shape == (1, 12)
    assert weights.sum() == pytest.approx(1.0, rel=1e-4)
    exact = np.linalg.eigvalsh(HessianOperator(model, F.cross_entropy, batches).dense().numpy())
    assert common.spectral_errors((nodes, weights), exact)[1] < 1e-2
