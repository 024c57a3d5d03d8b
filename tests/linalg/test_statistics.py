"""Spectrum statistics on planted spectra: outliers counted, bulk edge and negative mass."""

from __future__ import annotations

import numpy as np
import pytest

import hessnb
from hessnb.linalg.statistics import GAP_RATIO, spectrum_statistics


def _planted(bulk: np.ndarray, outliers: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam = np.concatenate([bulk, outliers])
    q, _ = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    return (q * lam) @ q.T


def _bulk(kind: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return np.linspace(-0.2, 1.0, size)
    g = rng.standard_normal((size, size))
    return np.linalg.eigvalsh((g + g.T) / np.sqrt(8 * size))  # semicircle on [-1, 1]


@pytest.mark.parametrize("kind", ["uniform", "semicircle"])
@pytest.mark.parametrize("count", [0, 1, 9])
def test_bulk_plus_c_outliers_gives_c_with_one_probe(kind, count):
    n = 600
    outliers = np.linspace(5.0, 40.0, count) if count else np.array([])
    bulk = _bulk(kind, n - count, seed=count)
    ds = hessnb.spectrum(
        _planted(bulk, outliers, seed=count), lanczos_steps=90, probes=1, progress=False
    )
    assert int(ds.n_outliers) == count
    assert float(ds.bulk_edge) == pytest.approx(bulk.max(), abs=0.02)
    top = outliers.max() if count else bulk.max()
    assert float(ds.outlier_gap) == pytest.approx(top / bulk.max(), rel=0.03)
    assert float(ds.lambda_min) == pytest.approx(bulk.min(), abs=0.02)
    many = hessnb.spectrum(
        _planted(bulk, outliers, seed=count), lanczos_steps=40, probes=8, progress=False
    )
    sigma = np.sqrt(1e-5 * (top - bulk.min()))
    exact_negative = np.mean(np.concatenate([bulk, outliers]) < -sigma)
    assert float(many.negative_mass) == pytest.approx(exact_negative, abs=0.04)  # ~4 s.e.


def test_a_tight_cluster_of_outliers_counts_as_outliers():
    bulk = np.linspace(0.0, 1.0, 300)
    ds = hessnb.spectrum(
        _planted(bulk, np.array([10.0, 10.001, 10.002]), seed=3), lanczos_steps=80, progress=False
    )
    assert int(ds.n_outliers) == 3


def test_rule_on_hand_made_nodes():
    width = 1.0
    nodes = np.concatenate([[5.0, 1.0 + 1.01 * GAP_RATIO * width], np.linspace(1.0, 0.0, 20)])
    weights = np.full(nodes.size, 1.0 / nodes.size)
    stats = spectrum_statistics(nodes[None], weights[None])
    assert stats["n_outliers"] == 2  # the second value clears the gap by 1 %
    nodes[1] = 1.0 + 0.99 * GAP_RATIO * width
    assert spectrum_statistics(nodes[None], weights[None])["n_outliers"] == 1
    assert stats["negative_mass"] == 0.0 and stats["lambda_min"] == 0.0


def test_negative_mass_is_averaged_over_probes_and_nan_nodes_are_ignored():
    nodes = np.array([[-1.0, 1.0, np.nan], [-1.0, -0.5, 2.0]])
    weights = np.array([[0.25, 0.75, 0.0], [0.5, 0.25, 0.25]])
    stats = spectrum_statistics(nodes, weights)
    assert stats["negative_mass"] == pytest.approx((0.25 + 0.75) / 2)
    assert stats["lambda_min"] == -1.0
    assert np.isnan(stats["outlier_gap"]) or stats["bulk_edge"] > 0


def test_a_bulk_node_within_rounding_of_zero_is_not_negative():
    bulk = np.concatenate([np.zeros(250), np.linspace(0.01, 2.0, 50)])
    for sign in (1.0, -1.0):
        nodes = np.array([[30.0, 2.0, 1.0, 0.5, sign * 1e-9]])
        weights = np.array([[0.001, 0.05, 0.05, 0.1, 0.799]])
        assert spectrum_statistics(nodes, weights)["negative_mass"] == 0.0
    ds = hessnb.spectrum(_planted(bulk, np.array([-3.0]), seed=5), lanczos_steps=60, progress=False)
    assert float(ds.negative_mass) == pytest.approx(1 / 301, abs=0.01)
    assert float(ds.lambda_min) == pytest.approx(-3.0, rel=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        spectrum_statistics(np.zeros((1, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="no finite Ritz value"):
        spectrum_statistics(np.full((1, 3), np.nan), np.zeros((1, 3)))
