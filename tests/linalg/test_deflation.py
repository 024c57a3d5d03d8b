"""Deflated SLQ against exact spectra: planted outliers, invariant subspaces, multiplicities."""

from __future__ import annotations

import numpy as np
import pytest

import hessnb
from bench.deflation import Diagonal
from bench.deflation import planted_spectrum as planted
from hessnb.linalg.deflation import SIMPLE_LIMIT, deflate_weights
from hessnb.linalg.quadrature import wasserstein_distance
from hessnb.slq import estimate


def w1_pair(eigs: np.ndarray, steps: int, seed: int) -> tuple[float, float, int]:
    """Relative W1 of plain and deflated SLQ from the same Lanczos run, and the count."""
    settings = hessnb.SLQSettings(lanczos_steps=steps, top_k=1, seed=seed, deflate=False)
    plain = estimate(Diagonal(eigs), settings)
    deflated = estimate(Diagonal(eigs), settings.replace(deflate=True))
    np.testing.assert_array_equal(plain.nodes, deflated.nodes)  # same run, reweighted
    spread = eigs.max() - eigs.min()
    return (
        wasserstein_distance((plain.nodes, plain.weights), eigs) / spread,
        wasserstein_distance((deflated.nodes, deflated.weights), eigs) / spread,
        int(deflated.n_deflated[0]),
    )


@pytest.mark.parametrize("outliers", [1, 9])
def test_deflation_at_least_halves_w1_with_outliers(outliers):
    runs = np.array([w1_pair(planted(2000, outliers), 60, seed) for seed in range(8)])
    plain, deflated, counts = runs.T
    assert (counts >= outliers).all()
    assert deflated.mean() <= 0.5 * plain.mean()


def test_deflated_weights_put_one_over_n_on_converged_outliers():
    eigs = planted(2000, 9)
    est = estimate(Diagonal(eigs), hessnb.SLQSettings(lanczos_steps=60, top_k=9))
    weights, nodes = est.weights[0], est.nodes[0]
    top = np.argsort(nodes)[::-1][:9]
    np.testing.assert_allclose(nodes[top], eigs[-9:][::-1], rtol=1e-10)
    np.testing.assert_allclose(weights[top], 1 / 2000, rtol=1e-12)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)


def test_a_full_krylov_space_gives_the_exact_spectrum():
    eigs = np.linspace(-1.0, 3.0, 40) ** 3
    est = estimate(Diagonal(eigs), hessnb.SLQSettings(lanczos_steps=40, top_k=1))
    assert est.n_deflated[0] == 40
    assert wasserstein_distance((est.nodes, est.weights), eigs) < 1e-10


def test_a_multiple_top_eigenvalue_keeps_its_probe_weight():
    # eigenvalue 10 with multiplicity 200: n * tau is about 200 >> SIMPLE_LIMIT
    eigs = np.r_[np.linspace(0.0, 1.0, 1800), np.full(200, 10.0)]
    plain, deflated, count = w1_pair(eigs, 40, seed=0)
    assert count == 0 and deflated == plain


def test_nothing_converged_is_plain_slq():
    eigs = np.linspace(0.0, 1.0, 3000)  # no isolated values: 5 steps converge nothing
    plain, deflated, count = w1_pair(eigs, 5, seed=0)
    assert count == 0 and deflated == plain


def test_an_invariant_subspace_smaller_than_n_is_not_deflated():
    # v lies in a 3-dimensional eigenspace: Lanczos stops after 3 exact steps
    nodes = np.array([[1.0, 2.0, 3.0]])
    weights = np.array([[0.2, 0.3, 0.5]])
    out, counts = deflate_weights(nodes, weights, np.zeros((1, 3)), dim=10)
    assert counts[0] == 0 and np.array_equal(out, weights)


def test_the_simple_eigenvalue_test_uses_n_tau():
    nodes = np.array([[0.0, 0.5, 5.0]])
    residuals = np.array([[1.0, 1.0, 0.0]])
    heavy = np.array([[0.5, 0.5 - SIMPLE_LIMIT / 100 - 0.01, SIMPLE_LIMIT / 100 + 0.01]])
    assert deflate_weights(nodes, heavy, residuals, dim=100)[1][0] == 0
    light = np.array([[0.5, 0.49, 0.01]])
    out, counts = deflate_weights(nodes, light, residuals, dim=100)
    assert counts[0] == 1
    np.testing.assert_allclose(out, [[0.5 * 0.99 / 0.99, 0.49 * 0.99 / 0.99, 0.01]])


def test_spectrum_keyword_and_dataset():
    eigs = planted(500, 3)
    on = hessnb.spectrum(Diagonal(eigs), lanczos_steps=40, progress=False)
    off = hessnb.spectrum(Diagonal(eigs), lanczos_steps=40, deflate=False, progress=False)
    assert on.attrs["deflate"] == 1 and off.attrs["deflate"] == 0
    assert int(on.n_deflated[0]) >= 3 and int(off.n_deflated[0]) == 0
    np.testing.assert_allclose(on.weights.sum("node"), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"residuals": np.zeros((1, 2))}, "same"),
        ({"tol": 0.0}, "tol"),
        ({"dim": 0}, "dim"),
    ],
)
def test_bad_input(kwargs, match):
    args = {
        "nodes": np.ones((1, 3)),
        "weights": np.full((1, 3), 1 / 3),
        "residuals": np.zeros((1, 3)),
        "dim": 10,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        deflate_weights(**args)
    with pytest.raises(TypeError, match="deflate"):
        hessnb.SLQSettings(deflate="yes")
