"""A-posteriori Wasserstein-1 bound of SLQ, against exact float64 spectra.

Small operators are dense ``Q diag(lambda) Q^T`` matrices with ``eigvalsh`` as reference;
large ones (n = 5000) are ``diag(lambda)``: a Gaussian probe's run on ``Q diag Q^T`` has
the law of the run on ``diag`` with the probe ``Q^T v``, which is again Gaussian.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.linalg import eigh_tridiagonal

from hessnb.linalg import bounds
from hessnb.linalg.bounds import (
    PosteriorBound,
    cdf_levels,
    posterior_bound,
    quadrature_cdf_bounds,
)
from hessnb.linalg.lanczos import LanczosResult, lanczos_block
from hessnb.linalg.quadrature import (
    tridiagonal_to_quadrature,
    wasserstein_bound,
    wasserstein_distance,
)

OUTLIERS = np.array([3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 17.0, 22.0])


def _spectrum(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Planted eigenvalues, ascending."""
    bulk = rng.uniform(0.0, 1.0, n) ** 2  # mass piled up near 0, like a trained network's
    if kind == "bulk":
        values = bulk
    elif kind == "bulk+1":
        values = np.concatenate([bulk[:-1], [10.0]])
    elif kind == "bulk+9":
        values = np.concatenate([bulk[:-9], OUTLIERS])
    elif kind == "network":  # narrow bulk around 0 with negative values, 10 outliers
        values = np.concatenate([0.02 * rng.standard_normal(n - 10), rng.uniform(1, 20, 10)])
    elif kind == "uniform":
        values = np.linspace(-1.0, 1.0, n)
    elif kind == "semicircle":
        values = 2.0 * rng.beta(1.5, 1.5, n) - 1.0
    elif kind == "multiplicities":
        levels = [-1.0, 0.0, 0.5, 2.0, 5.0, 6.0]
        values = rng.choice(levels, n, p=[0.1, 0.5, 0.2, 0.1, 0.05, 0.05])
    else:
        raise AssertionError(kind)
    return np.sort(values)


def _operator(eigenvalues: np.ndarray, seed: int, dense: bool):
    """``(matmat, exact eigenvalues)``; dense operators are referenced by ``eigvalsh``."""
    if not dense:
        diagonal = torch.as_tensor(eigenvalues)
        return (lambda v: diagonal[:, None] * v), eigenvalues
    n = eigenvalues.size
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    matrix = (q * torch.as_tensor(eigenvalues)) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    return (lambda v: matrix @ v), np.linalg.eigvalsh(matrix.numpy())


def _slq(matmat, n: int, steps: int, probes: int, seed: int) -> LanczosResult:
    start = torch.randn(
        n, probes, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64
    )
    return lanczos_block(matmat, n, steps, start=start, keep_basis=False)


def _quadrature(result: LanczosResult) -> tuple[np.ndarray, np.ndarray]:
    probes, steps = result.alpha.shape
    nodes, weights = np.full((probes, steps), np.nan), np.zeros((probes, steps))
    for p in range(probes):
        theta, tau, _ = tridiagonal_to_quadrature(*(x.numpy() for x in result.tridiagonal(p)))
        nodes[p, : theta.size], weights[p, : tau.size] = theta, tau
    return nodes, weights


def _measure(
    kind: str, n: int, steps: int, probes: int, seed: int
) -> tuple[float, float, PosteriorBound, LanczosResult]:
    """``(measured W1, exact range, bound, run)`` of one SLQ run on a planted spectrum."""
    rng = np.random.default_rng(seed)
    matmat, exact = _operator(_spectrum(kind, n, rng), seed, dense=n <= 1000)
    result = _slq(matmat, n, steps, probes, seed)
    measured = wasserstein_distance(_quadrature(result), exact)
    bound = posterior_bound(
        result.alpha.numpy(), result.beta.numpy(), n, lengths=result.lengths.numpy()
    )
    return measured, float(exact[-1] - exact[0]), bound, result


# ----------------------------------------------------------------------------- the pieces
def _radau(alpha: np.ndarray, beta: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``[[T_m, beta_m e_m], [beta_m e_m^T, s]]`` (beta ends in beta_m)."""
    nodes, vectors = eigh_tridiagonal(np.append(alpha, s), beta)
    return nodes, vectors[0] ** 2


@pytest.mark.parametrize("seed", range(6))
def test_markov_krein_inequalities_in_their_exact_form(seed):
    """Every node xi of a Radau extension or of the Gauss rule itself satisfies
    rho(< xi) <= mu_v(< xi) and mu_v(<= xi) <= rho(<= xi), with dense eigenvalues."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 120))
    # odd seeds round to one decimal: multiple eigenvalues
    eigenvalues = np.sort(np.round(rng.standard_normal(n) ** 3, 1 if seed % 2 else 6))
    matmat, _ = _operator(eigenvalues, seed, dense=False)
    steps = int(rng.integers(3, 12))
    v = rng.standard_normal(n)
    result = lanczos_block(matmat, n, steps, start=torch.as_tensor(v), keep_basis=False)
    alpha, beta = result.alpha[0].numpy(), result.beta[0].numpy()
    mass = v**2 / (v @ v)
    gauss = tridiagonal_to_quadrature(alpha, beta[:-1])[:2]
    closed_lower_fails = open_upper_fails = False
    for nodes, weights in [gauss, *(_radau(alpha, beta, s) for s in rng.normal(0, 3, 10))]:
        for i, xi in enumerate(nodes):
            below, upto = weights[:i].sum(), weights[: i + 1].sum()
            assert below <= mass[eigenvalues < xi].sum() + 1e-12
            assert mass[eigenvalues <= xi].sum() <= upto + 1e-12
            # the forms with the node's own weight moved across fail somewhere
            closed_lower_fails |= upto > mass[eigenvalues <= xi].sum() + 1e-6
            open_upper_fails |= mass[eigenvalues < xi].sum() > below + 1e-6
    assert closed_lower_fails and open_upper_fails


@pytest.mark.parametrize(("n", "steps", "seed"), [(40, 5, 0), (200, 20, 1), (80, 80, 2)])
def test_quadrature_cdf_bounds_bracket_the_probe_cdf(n, steps, seed):
    rng = np.random.default_rng(seed)
    eigenvalues = _spectrum("bulk+9", n, rng)
    matmat, _ = _operator(eigenvalues, seed, dense=True)
    result = _slq(matmat, n, steps, 1, seed)
    # the probe measure through the dense eigenvectors: mass (u_i . v)^2 / |v|^2
    generator = torch.Generator().manual_seed(1000 + seed)
    v = torch.randn(n, 1, generator=generator, dtype=torch.float64)[:, 0].numpy()  # _slq's
    values, vectors = np.linalg.eigh(matmat(torch.eye(n, dtype=torch.float64)).numpy())
    mass = (vectors.T @ v) ** 2 / (v @ v)
    points, lower, upper = quadrature_cdf_bounds(result.alpha[0].numpy(), result.beta[0].numpy())
    assert np.all(np.diff(points) >= 0) and points.size > steps
    # F_v(xi) and F_v(xi^-), with xi moved by a rounding allowance: a Radau node can fall on
    # a converged eigenvalue, and rounding decides on which side
    shift = 1e-12 * np.abs(values).max()
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    cdf_at = cdf[np.searchsorted(values, points + shift, side="right")]
    cdf_before = cdf[np.searchsorted(values, points - shift, side="left")]
    assert np.all(lower <= cdf_at + 1e-12)
    assert np.all(upper >= cdf_before - 1e-12)


def test_quadrature_cdf_bounds_pin_the_cdf_at_an_invariant_subspace():
    nodes, weights, _ = tridiagonal_to_quadrature(np.array([1.0, 2.0, 0.5]), np.array([0.3, 0.7]))
    points, lower, upper = quadrature_cdf_bounds(
        np.array([1.0, 2.0, 0.5]), np.array([0.3, 0.7, 0.0])
    )
    np.testing.assert_array_equal(points, nodes)
    np.testing.assert_allclose(lower, np.cumsum(weights))
    np.testing.assert_allclose(upper, np.cumsum(weights) - weights)


@pytest.mark.parametrize(("probes", "confidence"), [(1, 0.5), (3, 0.5), (1, 0.9)])
def test_cdf_levels_hold_with_the_stated_probability(probes, confidence):
    """Monte Carlo over Gaussian probes: all levels hold in at least ``confidence``."""
    n, draws = 60, 4000
    levels, lower, upper = cdf_levels(n, probes, confidence)
    assert levels[0] == 0 and levels[-1] == n and np.all(np.diff(levels) > 0)
    g = np.random.default_rng(probes).standard_normal((draws, probes, n)) ** 2
    phi = (np.cumsum(g, axis=2) / g.sum(axis=2, keepdims=True)).mean(axis=1)  # (draws, n)
    phi = np.concatenate([np.zeros((draws, 1)), phi], axis=1)[:, levels]
    failed = ((phi < lower - 1e-12) | (phi > upper + 1e-12)).any(axis=1).mean()
    assert failed <= (1 - confidence) + 3 * np.sqrt((1 - confidence) / draws)
    assert failed > 0 or confidence > 0.5  # at 50 % the bound is not vacuous


def test_cdf_levels_narrow_near_the_ends_and_stay_cheap_at_1e8():
    n = 5000
    levels, lower, upper = cdf_levels(n, 1, 0.95)
    width = (upper - lower)[1:-1]
    middle = width[np.argmin(np.abs(levels[1:-1] - n // 2))]
    assert width[0] < middle / 10 and width[-1] < middle / 10  # outlier levels: O(1/n)
    assert upper[1] <= 40 / n and lower[-2] >= 1 - 40 / n
    started = time.perf_counter()
    big_levels, big_lower, big_upper = cdf_levels(10**8, 4, 0.95)
    assert time.perf_counter() - started < 60
    assert big_levels.size < 200_000 and np.all(big_lower <= big_upper)
    assert not big_lower.flags.writeable


# ----------------------------------------------------------------------------- the bound
CASES = [
    # (spectrum, n, steps, probes)
    ("bulk", 200, 10, 1),
    ("bulk+1", 200, 30, 4),
    ("bulk+9", 1000, 90, 1),
    ("bulk+9", 5000, 10, 4),
    ("bulk+9", 5000, 90, 4),
    ("bulk+1", 5000, 30, 1),
    ("network", 5000, 90, 1),
    ("network", 1000, 10, 4),
    ("uniform", 500, 10, 4),
    ("uniform", 5000, 90, 1),
    ("semicircle", 1000, 30, 1),
    ("semicircle", 5000, 60, 4),
    ("multiplicities", 500, 30, 4),
    ("multiplicities", 5000, 90, 1),
]


@pytest.mark.parametrize(("kind", "n", "steps", "probes"), CASES)
def test_bound_holds_on_planted_spectra(kind, n, steps, probes):
    for seed in range(5):
        measured, spread, bound, _ = _measure(kind, n, steps, probes, seed)
        assert measured <= bound.absolute, (seed, measured, bound)
        assert measured / spread <= bound.relative, (seed, measured / spread, bound)
        assert bound.lanczos <= bound.absolute
        # far below the a-priori bound wherever that one says anything
        assert bound.relative < wasserstein_bound(steps, probes, n) or steps < 30


@pytest.mark.parametrize("kind", ["bulk+9", "bulk+1", "network"])
def test_bound_is_within_20x_of_the_measured_w1(kind):
    """n = 5000, 90 steps, 1 probe, 8 seeds (observed ratios: about 6-9)."""
    rows = [_measure(kind, 5000, 90, 1, seed)[:3] for seed in range(8)]
    measured = np.array([r[0] for r in rows])
    bounds = np.array([r[2].absolute for r in rows])
    assert np.all(bounds >= measured)
    assert bounds.mean() / measured.mean() < 20
    assert np.mean(bounds / measured) < 20


def test_lanczos_part_vanishes_when_the_krylov_space_is_the_whole_space():
    n = 60
    measured, spread, bound, result = _measure("semicircle", n, n, 2, 0)
    assert result.lengths.tolist() == [n, n]
    assert bound.lanczos < 1e-10 * spread
    assert measured <= bound.absolute


def test_lanczos_part_is_zero_after_a_breakdown():
    n = 60
    eigenvalues = np.repeat([-1.0, 0.0, 0.5, 2.0, 3.0], n // 5)
    matmat, exact = _operator(eigenvalues, 3, dense=True)
    result = _slq(matmat, n, 10, 3, 3)
    assert result.lengths.tolist() == [5, 5, 5]  # five distinct eigenvalues
    bound = posterior_bound(
        result.alpha.numpy(), result.beta.numpy(), n, lengths=result.lengths.numpy()
    )
    assert bound.lanczos == 0.0
    assert wasserstein_distance(_quadrature(result), exact) <= bound.absolute


def test_relative_bound_and_user_interval():
    measured, spread, bound, result = _measure("bulk+9", 1000, 40, 1, 7)
    alpha, beta = result.alpha.numpy(), result.beta.numpy()
    assert bound.relative == pytest.approx(bound.absolute / bound.ritz_range)
    assert bound.ritz_range <= spread
    assert bound.interval[1] >= 22.0  # the top outlier has converged
    exact_ends = (22.0 - spread - 1e-9, 22.0 + 1e-9)  # the exact ends, padded for rounding
    given = posterior_bound(alpha, beta, 1000, interval=exact_ends)
    assert given.interval == exact_ends and measured <= given.absolute
    assert posterior_bound(alpha, beta, 1000, confidence=0.99).absolute > bound.absolute
    assert posterior_bound(alpha[0], beta[0], 1000) == bound  # one probe as (m,)


def test_coarser_grids_give_looser_valid_bounds(monkeypatch):
    measured, _, bound, result = _measure("bulk+9", 1000, 60, 2, 4)
    alpha, beta = result.alpha.numpy(), result.beta.numpy()
    fewer_rules = posterior_bound(alpha, beta, 1000, rules=0)
    monkeypatch.setattr(bounds, "MAX_CELLS", 100)
    thinned = posterior_bound(alpha, beta, 1000)
    for coarse in (fewer_rules, thinned):
        assert coarse.absolute >= bound.absolute * (1 - 1e-12)
        assert coarse.lanczos >= bound.lanczos * (1 - 1e-12)
    assert measured <= bound.absolute


def _bad(alpha, beta, dim, **kwargs):
    return posterior_bound(alpha, beta, dim, **kwargs)


def test_bad_input_names_the_problem():
    alpha, beta = np.ones((2, 5)), np.full((2, 5), 0.5)
    with pytest.raises(ValueError, match=r"shape \(probes, m\).*\(2, 5\) and \(2, 4\)"):
        _bad(alpha, beta[:, :4], 10)
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 1.0"):
        _bad(alpha, beta, 10, confidence=1.0)
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 0.0"):
        _bad(alpha, beta, 10, confidence=0.0)
    with pytest.raises(ValueError, match=r"dim \(4\) is smaller than the Lanczos steps m \(5\)"):
        _bad(alpha, beta, 4)
    with pytest.raises(ValueError, match=r"lengths must be integers of shape \(2,\)"):
        _bad(alpha, beta, 10, lengths=np.array([5]))
    with pytest.raises(ValueError, match=r"lengths must lie in 1..5"):
        _bad(alpha, beta, 10, lengths=np.array([5, 6]))
    with pytest.raises(ValueError, match="NaN or inf"):
        _bad(np.array([[1.0, np.nan]]), np.ones((1, 2)), 10)
    with pytest.raises(ValueError, match="negative"):
        _bad(np.ones((1, 2)), -np.ones((1, 2)), 10)
    with pytest.raises(ValueError, match="must contain every Ritz value"):
        _bad(alpha, beta, 10, interval=(0.9, 1.0))
    with pytest.raises(TypeError, match="dim must be an int"):
        _bad(alpha, beta, 10.0)
