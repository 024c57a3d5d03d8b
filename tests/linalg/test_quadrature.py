"""Gaussian quadrature from tridiagonals and smoothed densities, against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

from hessnb.linalg.lanczos import lanczos
from hessnb.linalg.quadrature import (
    default_grid,
    default_sigma,
    gaussian_density,
    log_gaussian_density,
    moments,
    tridiagonal_to_quadrature,
    wasserstein_bound,
)


def _random_tridiagonal(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=m), rng.uniform(0.1, 2.0, size=m - 1)


@pytest.fixture
def quadrature_of_random_probe(matrix_with_spectrum):
    """Six Lanczos steps on a 40 x 40 matrix with spectrum in [-1, 1] from a known start."""
    a = matrix_with_spectrum(np.linspace(-1.0, 1.0, 40) ** 3, seed=3)
    start = torch.randn(40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    result = lanczos(lambda v: a @ v, 40, 6, start=start)
    nodes, weights, _ = tridiagonal_to_quadrature(*(x.numpy() for x in result.tridiagonal(0)))
    return a.numpy(), (start / start.norm()).numpy(), nodes, weights


@pytest.mark.parametrize(("m", "seed"), [(1, 0), (2, 1), (7, 2), (40, 3)])
def test_nodes_are_eigenvalues_and_weights_first_components(m, seed):
    alpha, beta = _random_tridiagonal(m, seed)
    nodes, weights, vectors = tridiagonal_to_quadrature(alpha, beta)
    dense = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    np.testing.assert_allclose(nodes, np.linalg.eigvalsh(dense), atol=1e-12)
    assert np.all(np.diff(nodes) >= 0)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-14)
    np.testing.assert_allclose(dense @ vectors, vectors * nodes, atol=1e-12)
    np.testing.assert_allclose(weights, vectors[0] ** 2, atol=1e-14)


def test_gauss_quadrature_is_exact_up_to_degree_2m_minus_1(quadrature_of_random_probe):
    a, v, nodes, weights = quadrature_of_random_probe
    m = nodes.size
    direct = [v @ np.linalg.matrix_power(a, j) @ v for j in range(2 * m + 1)]
    estimated = moments(nodes, weights, list(range(2 * m + 1)))
    np.testing.assert_allclose(estimated[: 2 * m], direct[: 2 * m], rtol=1e-10, atol=1e-13)
    # Degree 2m is beyond Gauss quadrature: the test can tell exact from approximate.
    assert abs(estimated[2 * m] - direct[2 * m]) > 1e-6


def test_moments_shape_and_single_order(quadrature_of_random_probe):
    _, _, nodes, weights = quadrature_of_random_probe
    stacked = np.stack([nodes, nodes + 1])
    block = moments(stacked, np.stack([weights, weights]), [0, 1, 2])
    assert block.shape == (2, 3)
    np.testing.assert_allclose(block[:, 0], 1.0)
    assert moments(nodes, weights, 1) == pytest.approx(float(weights @ nodes))


@pytest.mark.parametrize("spread", [0.1, 3.0, 500.0])
def test_density_integrates_to_one_on_the_default_grid(spread):
    rng = np.random.default_rng(0)
    nodes = rng.uniform(-spread / 5, spread, size=(3, 30))
    weights = rng.dirichlet(np.ones(30), size=3)
    sigma = default_sigma(nodes)
    grid = default_grid(nodes, sigma)
    density = gaussian_density(nodes, weights, grid, sigma)
    assert density.shape == (3, grid.size)
    np.testing.assert_allclose(trapezoid(density, grid, axis=-1), 1.0, rtol=1e-6)


def test_density_matches_direct_formula_and_ignores_nan_padding():
    nodes = np.array([0.0, 1.0, 2.5, np.nan])
    weights = np.array([0.2, 0.5, 0.3, 0.0])
    grid = np.linspace(-1, 4, 7)
    sigma = 0.4
    direct = sum(
        w * np.exp(-0.5 * ((grid - t) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        for t, w in zip(nodes[:3], weights[:3], strict=True)
    )
    np.testing.assert_allclose(gaussian_density(nodes, weights, grid, sigma), direct, rtol=1e-14)
    np.testing.assert_allclose(gaussian_density(nodes, weights, grid, sigma, chunk=1), direct)
    np.testing.assert_allclose(moments(nodes, weights, [1]), [0.5 + 0.75])


def test_log_density_agrees_where_representable_and_stays_finite_beyond():
    nodes = np.array([[0.0, 1.0, 40.0], [0.5, 2.0, np.nan]])
    weights = np.array([[0.5, 0.5 - 1e-9, 1e-9], [0.25, 0.75, 0.0]])
    grid = np.linspace(-200.0, 250.0, 4001)
    sigma = 0.5
    plain = gaussian_density(nodes, weights, grid, sigma)
    logged = log_gaussian_density(nodes, weights, grid, sigma)
    assert logged.shape == plain.shape
    representable = plain > 1e-250
    assert representable.any() and (~representable).any()
    np.testing.assert_allclose(logged[representable], np.log(plain[representable]), rtol=1e-10)
    assert np.all(np.isfinite(logged))
    assert np.all(logged[~representable] < math.log(1e-250))


def test_default_sigma_and_grid_follow_the_reference_code():
    nodes = np.array([[-2.0, 0.0, 10.0], [1.0, np.nan, 3.0]])
    assert default_sigma(nodes) == pytest.approx(math.sqrt(1e-5 * 12.0))
    assert default_sigma(np.array([0.1, 0.2])) == pytest.approx(math.sqrt(1e-5))
    grid = default_grid(nodes, 0.1, points=11)
    assert grid.size == 11
    assert grid[0] == pytest.approx(-2.0 - 0.6) and grid[-1] == pytest.approx(10.0 + 0.6)
    narrow = default_grid(nodes, 1e-4, points=5)
    assert narrow[0] == pytest.approx(-2.01) and narrow[-1] == pytest.approx(10.01)


@pytest.mark.parametrize(
    ("steps", "probes", "dim", "confidence"),
    [(90, 1, 10_000, 0.95), (90, 1, 50, 0.95), (10, 3, 1000, 0.99), (200, 1, 10**7, 0.9)],
)
def test_wasserstein_bound_closed_form(steps, probes, dim, confidence):
    eta = 1 - confidence
    from_steps = 12 / (steps - 0.5)
    from_probes = math.sqrt(4 * math.log(2 * dim / eta) / ((dim + 2) * probes))
    t = wasserstein_bound(steps, probes, dim, confidence)
    assert t == pytest.approx(max(from_steps, from_probes), rel=1e-14)
    # Inverting the paper's step and probe counts gives back at most those counts.
    assert math.ceil(12 / t + 0.5) <= steps
    assert math.ceil(4 / (dim + 2) / t**2 * math.log(2 * dim / eta)) <= probes


def test_wasserstein_bound_shrinks_with_steps_and_probes():
    assert wasserstein_bound(90, 1, 10**6) == pytest.approx(12 / 89.5)
    assert wasserstein_bound(180, 1, 10**6) < wasserstein_bound(90, 1, 10**6)
    assert wasserstein_bound(90, 20, 100) < wasserstein_bound(90, 1, 100)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_wasserstein_bound_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence must lie in"):
        wasserstein_bound(90, 1, 100, confidence)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("function", [gaussian_density, log_gaussian_density])
def test_non_positive_sigma_is_refused(function, sigma):
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        function(np.zeros(2), np.full(2, 0.5), np.linspace(0, 1, 3), sigma)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: default_grid(np.zeros(3), -0.1), "sigma must be a positive"),
        (lambda: default_grid(np.full(3, np.nan), 0.1), "no finite nodes"),
        (lambda: default_sigma(np.array([np.nan])), "no finite nodes"),
        (lambda: tridiagonal_to_quadrature(np.zeros(3), np.zeros(3)), r"beta of shape \(m-1,\)"),
        (lambda: gaussian_density(np.zeros(3), np.zeros(2), np.zeros(2), 1.0), "differ in shape"),
    ],
)
def test_malformed_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
