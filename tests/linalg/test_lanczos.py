"""Lanczos with full re-orthogonalisation against dense float64 eigendecompositions."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hessnb.linalg.lanczos import lanczos, lanczos_block
from hessnb.linalg.quadrature import tridiagonal_to_quadrature


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ritz_values(result, probe: int = 0) -> np.ndarray:
    return torch.linalg.eigvalsh(result.dense_tridiagonal(probe)).numpy()


def _random_symmetric(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=_seeded(seed), dtype=torch.float64)
    return (a + a.T) / 2


@pytest.mark.parametrize(("dim", "seed"), [(1, 0), (2, 1), (17, 2), (60, 3)])
def test_full_length_lanczos_returns_the_exact_spectrum(dim, seed):
    a = _random_symmetric(dim, seed)
    result = lanczos(lambda v: a @ v, dim, dim, generator=_seeded(seed + 100))
    assert int(result.lengths[0]) == dim
    exact = torch.linalg.eigvalsh(a).numpy()
    np.testing.assert_allclose(_ritz_values(result), exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("isolated outliers", []),
        ("a tight cluster", [20.0, 20.0 + 1e-3, 20.0 + 2e-3]),
        ("a repeated eigenvalue", [20.0] * 5),
    ],
)
def test_top_ritz_values_converge_without_ghosts(name, extra, matrix_with_spectrum):
    bulk = np.linspace(-0.5, 1.0, 250 - len(extra) - 3)
    eigenvalues = np.concatenate([bulk, [6.0, 9.0, 14.0], extra])
    a = matrix_with_spectrum(eigenvalues, seed=4)
    start = torch.randn(250, generator=_seeded(5), dtype=torch.float64)
    result = lanczos(lambda v: a @ v, 250, 80, start=start)
    nodes, weights, _ = tridiagonal_to_quadrature(*(x.numpy() for x in result.tridiagonal(0)))
    exact_values, exact_vectors = np.linalg.eigh(a.numpy())
    start_mass = (exact_vectors.T @ (start / start.norm()).numpy()) ** 2
    for value in np.unique(eigenvalues[eigenvalues > 2]):
        multiplicity = int(np.sum(eigenvalues == value))
        near = np.abs(nodes - value) < 2.5e-4
        # Lost orthogonality would add spurious copies (ghosts) of converged outliers. A
        # simple eigenvalue has exactly one Ritz value; a repeated one at most its
        # multiplicity (rounding lets Lanczos find further true copies, of negligible weight).
        assert 1 <= near.sum() <= multiplicity, f"{name}: {near.sum()} Ritz values at {value}"
        assert np.min(np.abs(nodes - value)) < 1e-8, f"{name}: {value} not converged"
        # The quadrature weight near the eigenvalue is the start vector's mass in its
        # eigenspace, whatever the number of copies.
        mass = start_mass[np.abs(exact_values - value) < 1e-9].sum()
        np.testing.assert_allclose(weights[near].sum(), mass, rtol=1e-8, err_msg=name)


def test_lanczos_vectors_stay_orthonormal(matrix_with_spectrum, bulk_and_outliers):
    a = matrix_with_spectrum(bulk_and_outliers)
    result = lanczos(lambda v: a @ v, a.shape[0], 90, generator=_seeded(0))
    q = result.basis.vectors(0, 90)
    gram = q @ q.T
    assert torch.max(torch.abs(gram - torch.eye(90, dtype=torch.float64))) < 1e-12
    # And they satisfy the Lanczos relation A Q^T = Q^T T + beta_m q_{m+1} e_m^T up to the
    # last column, i.e. Q A Q^T = T.
    t = result.dense_tridiagonal(0)
    assert torch.max(torch.abs(q @ a @ q.T - t)) < 1e-10 * torch.linalg.norm(a, 2)


def test_breakdown_on_few_distinct_eigenvalues_is_clean_and_exact(matrix_with_spectrum):
    eigenvalues = np.repeat([-1.0, 0.5, 3.0], [20, 20, 10])
    a = matrix_with_spectrum(eigenvalues, seed=7)
    start = torch.randn(50, generator=_seeded(8), dtype=torch.float64)
    result = lanczos(lambda v: a @ v, 50, 20, start=start)
    assert result.lengths.tolist() == [3]
    assert torch.all(result.alpha[0, 3:] == 0) and torch.all(result.beta[0, 2:] == 0)
    alpha, beta = result.tridiagonal(0)
    nodes = torch.linalg.eigvalsh(result.dense_tridiagonal(0))
    np.testing.assert_allclose(nodes.numpy(), [-1.0, 0.5, 3.0], atol=1e-12)
    # The quadrature is exact for every moment: v^T A^j v = e_1^T T^j e_1.
    v = start / start.norm()
    t = result.dense_tridiagonal(0)
    for j in range(8):
        direct = v @ torch.linalg.matrix_power(a, j) @ v
        quadrature = torch.linalg.matrix_power(t, j)[0, 0]
        assert torch.isclose(direct, quadrature, rtol=1e-11, atol=1e-12), j
    assert alpha.shape == (3,) and beta.shape == (2,)


def test_batched_probes_match_single_probe_runs(matrix_with_spectrum, bulk_and_outliers):
    a = matrix_with_spectrum(bulk_and_outliers)
    starts = torch.randn(a.shape[0], 4, generator=_seeded(9), dtype=torch.float64)
    block = lanczos_block(lambda v: a @ v, a.shape[0], 40, start=starts)
    for p in range(4):
        alone = lanczos(lambda v: a @ v, a.shape[0], 40, start=starts[:, p])
        np.testing.assert_allclose(block.alpha[p], alone.alpha[0], rtol=0, atol=1e-11)
        np.testing.assert_allclose(block.beta[p], alone.beta[0], rtol=0, atol=1e-11)


def test_probes_stopping_at_different_steps_match_single_runs(matrix_with_spectrum):
    eigenvalues = np.linspace(1.0, 4.0, 30)
    a = matrix_with_spectrum(eigenvalues, seed=2)
    _, q = torch.linalg.eigh(a)
    in_two_eigenvectors = q[:, 0] + 2 * q[:, 5]
    generic = torch.randn(30, generator=_seeded(3), dtype=torch.float64)
    starts = torch.stack([generic, in_two_eigenvectors, generic.flip(0)], dim=1)
    block = lanczos_block(lambda v: a @ v, 30, 12, start=starts)
    assert block.lengths.tolist() == [12, 2, 12]
    for p in range(3):
        alone = lanczos(lambda v: a @ v, 30, 12, start=starts[:, p])
        np.testing.assert_allclose(block.alpha[p], alone.alpha[0], rtol=0, atol=1e-11)
        np.testing.assert_allclose(block.beta[p], alone.beta[0], rtol=0, atol=1e-11)


@pytest.mark.parametrize("placement", ["cpu", "mmap", "auto"])
def test_basis_placements_give_identical_results(placement, matrix_with_spectrum):
    a = matrix_with_spectrum(np.linspace(-1.0, 5.0, 40), seed=1)
    starts = torch.randn(40, 2, generator=_seeded(1), dtype=torch.float64)
    reference = lanczos_block(lambda v: a @ v, 40, 25, start=starts, placement="device")
    other = lanczos_block(lambda v: a @ v, 40, 25, start=starts, placement=placement)
    assert torch.equal(reference.alpha, other.alpha)
    assert torch.equal(reference.beta, other.beta)
    assert torch.equal(reference.basis.storage, other.basis.storage)
    path = other.basis.path
    assert (path is not None) == (other.basis.placement == "mmap")
    other.basis.close()
    assert path is None or not os.path.exists(path)


def test_discarded_mmap_basis_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    a = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    result = lanczos_block(lambda v: a @ v, 20, 10, start=torch.ones(20), placement="mmap")
    assert result.basis.path is not None and os.path.dirname(result.basis.path) == str(tmp_path)
    lanczos_block(lambda v: a @ v, 20, 10, start=torch.ones(20), placement="mmap", keep_basis=False)
    assert len(list(tmp_path.iterdir())) == 1  # only the basis still held by ``result``
    del result
    assert list(tmp_path.iterdir()) == []


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 11}, r"cannot exceed the operator dimension \(10,.*steps <= 10"),
        ({"steps": 0}, r"must be >= 1"),
        ({"steps": -3}, r"must be >= 1"),
        ({"start": torch.zeros(10)}, r"start vector is zero"),
        ({"start": torch.ones(9)}, r"shape \(9,\).*dimension 10"),
        ({"start": torch.ones(10, 2)}, r"use lanczos_block"),
        ({"start": torch.tensor([float("nan")] + [1.0] * 9)}, r"NaN or inf"),
        ({"start": torch.tensor([float("inf")] + [1.0] * 9)}, r"NaN or inf"),
    ],
)
def test_invalid_settings_raise_helpful_errors(kwargs, message):
    settings = {"steps": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        lanczos(_identity, 10, **settings)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"probes": 0}, ValueError, r"probes must be an int >= 1"),
        ({"steps": 2.5}, TypeError, r"must be an int"),
        ({"start": torch.zeros(10, 3).index_fill_(1, torch.tensor([0]), 1.0)}, ValueError, "zero"),
        ({"start": torch.ones(9, 2)}, ValueError, r"\(10, probes\) block"),
        ({"placement": "disk"}, ValueError, r"placement must be one of"),
    ],
)
def test_invalid_block_settings_raise_helpful_errors(kwargs, error, message):
    settings = {"steps": 5, **kwargs}
    with pytest.raises(error, match=message):
        lanczos_block(_identity, 10, **settings)


@pytest.mark.parametrize(
    ("operator", "error", "message"),
    [
        (lambda v: v[:-1], ValueError, r"must return A @ V with the same shape"),
        (lambda v: v * float("nan"), FloatingPointError, r"NaN or inf at Lanczos step 0"),
    ],
)
def test_broken_operators_are_reported(operator, error, message):
    with pytest.raises(error, match=message):
        lanczos_block(operator, 10, 5, start=torch.ones(10))


def test_same_generator_seed_gives_the_same_run():
    a = _random_symmetric(30, 0)
    first = lanczos(lambda v: a @ v, 30, 10, generator=_seeded(11))
    second = lanczos(lambda v: a @ v, 30, 10, generator=_seeded(11))
    other = lanczos(lambda v: a @ v, 30, 10, generator=_seeded(12))
    assert torch.equal(first.alpha, second.alpha)
    assert not torch.equal(first.alpha, other.alpha)
