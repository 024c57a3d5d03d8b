"""Warm-startable top-k eigenpairs against dense float64 eigendecompositions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessnb.linalg.operator import MatrixOperator, as_operator
from hessnb.linalg.topk import DEFAULT_METHOD, METHODS, TopEigen, top_eigenpairs

DIM = 240
#: Methods with a block of at least k vectors: they resolve repeated eigenvalues, which a
#: single-vector Krylov space (``"lanczos"``) holds only once.
BLOCK_METHODS = tuple(m for m in METHODS if m != "lanczos")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bulk(count: int) -> np.ndarray:
    return np.linspace(-0.5, 1.0, count)


#: Planted spectra (``DIM`` eigenvalues each); "top" is algebraically largest.
SPECTRA = {
    "outliers and bulk": np.concatenate(
        [_bulk(DIM - 8), [2.0, 3.0, 4.5, 6.0, 8.0, 9.0, 14.0, 20.0]]
    ),
    "clustered top": np.concatenate(
        [_bulk(DIM - 8), [20.0, 20.0 + 1e-3, 20.0 + 2e-3, 12.0, 12.0 + 1e-2, 11.98, 6.0, 5.5]]
    ),
    "repeated top": np.concatenate(
        [_bulk(DIM - 8), [20.0, 20.0 + 1e-3, 20.0 + 2e-3, 12.0, 12.0, 12.0, 6.0, 5.5]]
    ),
    "large negative": np.concatenate(
        [_bulk(DIM - 10), [-60.0, -45.0, 2.0, 3.0, 4.5, 6.0, 8.0, 9.0, 14.0, 20.0]]
    ),
}


def _exact(matrix: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenvalues (descending) and eigenvectors of a dense matrix, by numpy."""
    values, vectors = np.linalg.eigh(matrix.numpy())
    return values[::-1][:k].copy(), vectors[:, ::-1][:, :k].copy()


def _check_pairs(top: TopEigen, matrix: torch.Tensor, k: int, tol: float) -> None:
    """Shapes, orthonormality, honest residuals, and values within the residual bound."""
    exact, _ = _exact(matrix, k)
    scale = abs(exact[0])
    assert top.values.shape == (k,) and top.residuals.shape == (k,)
    assert top.vectors.shape == (matrix.shape[0], k) and top.vectors.dtype == torch.float64
    assert np.all(np.diff(top.values) <= 0)
    gram = top.vectors.T @ top.vectors
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    values = torch.as_tensor(top.values)
    actual = (matrix @ top.vectors - top.vectors * values).norm(dim=0).numpy()
    np.testing.assert_allclose(top.residuals, actual, rtol=1e-6, atol=1e-10 * scale)
    assert top.converged
    assert np.all(top.residuals <= tol * abs(top.values[0]))
    # Rayleigh-Ritz values never exceed the eigenvalue of the same rank (interlacing);
    # a converged pair lies within its residual of an eigenvalue, here of its own rank.
    assert np.all(top.values <= exact + 1e-12 * scale)
    np.testing.assert_allclose(top.values, exact, rtol=0, atol=tol * scale)


@pytest.fixture
def perturbed(matrix_with_spectrum):
    """Factory ``(spectrum name, size) -> (A, A + size * |lambda_1| * E)`` with unit-norm E."""

    def make(name: str, size: float) -> tuple[torch.Tensor, torch.Tensor]:
        matrix = matrix_with_spectrum(SPECTRA[name], seed=11)
        noise = torch.randn(DIM, DIM, generator=_seeded(12), dtype=torch.float64)
        noise = noise + noise.T
        noise = noise / torch.linalg.matrix_norm(noise, ord=2)
        return matrix, matrix + size * float(matrix.abs().max()) * noise

    return make


# ----------------------------------------------------------------------------- accuracy
COLD_CASES = [
    (method, name)
    for method in METHODS
    for name in SPECTRA
    if not (method == "lanczos" and name == "repeated top")
]


@pytest.mark.parametrize(("method", "name"), COLD_CASES)
@pytest.mark.parametrize("k", [1, 5])
def test_cold_start_matches_dense_eigh(method, name, k, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA[name], seed=3)
    tol = 1e-7
    top = top_eigenpairs(
        lambda v: matrix @ v, DIM, k, method=method, tol=tol, max_matvecs=4000, generator=_seeded(4)
    )
    _check_pairs(top, matrix, k, tol)
    assert top.iterations >= 1 and top.matvecs >= k


@pytest.mark.parametrize("method", METHODS)
def test_large_negative_eigenvalues_are_not_top(method, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["large negative"], seed=5)
    # Subspace iteration must shift by about -30 to damp -60, which slows it down.
    top = top_eigenpairs(
        lambda v: matrix @ v, DIM, 8, method=method, max_matvecs=4000, generator=_seeded(6)
    )
    assert top.converged
    np.testing.assert_allclose(top.values, [20.0, 14.0, 9.0, 8.0, 6.0, 4.5, 3.0, 2.0], rtol=1e-4)


@pytest.mark.parametrize(
    ("method", "name"),
    [(m, "clustered top") for m in METHODS] + [(m, "repeated top") for m in BLOCK_METHODS],
)
def test_clustered_top_eigenvectors_span_the_cluster(method, name, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA[name], seed=7)
    top = top_eigenpairs(
        lambda v: matrix @ v,
        DIM,
        6,
        method=method,
        tol=1e-8,
        max_matvecs=4000,
        generator=_seeded(8),
    )
    _, exact = _exact(matrix, 6)
    # Within a cluster single eigenvectors are ill-determined; the subspace is not.
    overlap = torch.linalg.svdvals(torch.as_tensor(exact).T @ top.vectors)
    np.testing.assert_allclose(overlap.numpy(), 1.0, atol=1e-8)


# ----------------------------------------------------------------------------- warm starts
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(SPECTRA))
def test_warm_start_from_a_nearby_matrix_is_much_cheaper(method, name, perturbed):
    if method == "lanczos" and name == "repeated top":
        pytest.skip("one Krylov vector holds a repeated eigenvalue once")
    before, after = perturbed(name, 1e-3)
    k, tol = 6, 1e-6  # k = 5 would split the triple 12 of the clustered spectra
    runs = {}
    for label, start in (("cold", None), ("previous", None), ("warm", "previous")):
        runs[label] = top_eigenpairs(
            lambda v, m=(before if label == "previous" else after): m @ v,
            DIM,
            k,
            start=None if start is None else runs[start].vectors,
            method=method,
            tol=tol,
            max_matvecs=4000,
            generator=_seeded(len(runs)),
        )
    _check_pairs(runs["warm"], after, k, tol)
    _check_pairs(runs["cold"], after, k, tol)
    warm, cold = runs["warm"].matvecs, runs["cold"].matvecs
    if method == "lanczos":
        # A single start vector needs about k + a few steps, warm or cold: on these
        # well-separated outliers the cold run is short already.
        assert warm <= cold, (warm, cold)
    else:
        assert warm <= cold / 2, (warm, cold)


def test_warm_start_at_the_same_matrix_converges_in_one_block(matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["outliers and bulk"], seed=9)
    first = top_eigenpairs(lambda v: matrix @ v, DIM, 5, tol=1e-8, generator=_seeded(0))
    again = top_eigenpairs(
        lambda v: matrix @ v, DIM, 5, start=first.vectors, method="krylov", tol=1e-6
    )
    assert again.converged and again.iterations == 1 and again.matvecs == 5
    np.testing.assert_allclose(again.values, first.values, rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_partial_dependent_or_numpy_starts_are_completed(method, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["outliers and bulk"], seed=10)
    _, exact = _exact(matrix, 4)
    starts = {
        "fewer columns": torch.as_tensor(exact[:, :2]),
        "repeated column": torch.as_tensor(exact[:, [0, 0, 1, 1]]),
        "numpy": exact,
    }
    for start in starts.values():
        top = top_eigenpairs(
            lambda v: matrix @ v, DIM, 4, start=start, method=method, tol=1e-7, generator=_seeded(3)
        )
        _check_pairs(top, matrix, 4, 1e-7)


# ----------------------------------------------------------------------------- budget, edges
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [5, 7, 23])
def test_max_matvecs_is_never_exceeded(method, budget, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["clustered top"], seed=13)
    calls: list[int] = []

    def matmat(block: torch.Tensor) -> torch.Tensor:
        calls.append(block.shape[1])
        return matrix @ block

    top = top_eigenpairs(
        matmat, DIM, 5, method=method, tol=1e-30, max_matvecs=budget, generator=_seeded(14)
    )
    assert not top.converged
    assert top.matvecs == sum(calls) <= budget
    assert np.all(np.isfinite(top.values)) and np.all(np.isfinite(top.residuals))
    gram = top.vectors.T @ top.vectors
    torch.testing.assert_close(gram, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_default_budget_stops_an_unreachable_tolerance(method, matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["outliers and bulk"], seed=15)
    top = top_eigenpairs(lambda v: matrix @ v, DIM, 5, method=method, tol=1e-30)
    assert not top.converged
    assert top.matvecs <= 300  # the default max(300, 30 * (k + oversample))
    assert np.all(np.isfinite(top.values))


@pytest.mark.parametrize("method", METHODS)
def test_whole_space_and_tiny_dimensions_are_exact(method, matrix_with_spectrum):
    for dim in (1, 2, 7):
        spectrum = np.linspace(-3.0, 5.0, dim)
        matrix = matrix_with_spectrum(spectrum, seed=dim)
        top = top_eigenpairs(
            lambda v, m=matrix: m @ v, dim, dim, method=method, tol=1e-10, generator=_seeded(0)
        )
        np.testing.assert_allclose(top.values, spectrum[::-1], rtol=0, atol=1e-10)
        assert top.converged


@pytest.mark.parametrize("method", METHODS)
def test_zero_operator_converges_at_once(method):
    top = top_eigenpairs(lambda v: torch.zeros_like(v), 30, 3, method=method, generator=_seeded(0))
    assert top.converged and top.values.shape == (3,) and top.vectors.shape == (30, 3)
    np.testing.assert_array_equal(top.values, 0.0)


def test_same_generator_same_result(matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["outliers and bulk"], seed=16)
    runs = [top_eigenpairs(lambda v: matrix @ v, DIM, 4, generator=_seeded(5)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].values, runs[1].values)
    assert runs[0].matvecs == runs[1].matvecs
    torch.testing.assert_close(runs[0].vectors, runs[1].vectors, rtol=0, atol=0)


def test_operator_protocol_matmat_and_default_method(matrix_with_spectrum):
    matrix = matrix_with_spectrum(SPECTRA["outliers and bulk"], seed=17)
    op = as_operator(MatrixOperator(matrix))
    top = top_eigenpairs(op.matmat, op.dim, 3, generator=_seeded(0), device=op.device)
    assert DEFAULT_METHOD in METHODS
    assert top.vectors.device == op.device
    np.testing.assert_allclose(top.values, [20.0, 14.0, 9.0], rtol=1e-5)


# ----------------------------------------------------------------------------- bad input
def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 11}, "cannot exceed the operator dimension"),
        ({"start": torch.zeros(11, 2) + 1.0}, "start has shape"),
        ({"start": torch.ones(10, 4)}, "start has shape"),
        ({"start": torch.ones(10)}, "start has shape"),
        ({"start": torch.full((10, 3), float("nan"))}, "NaN or inf"),
        ({"start": torch.full((10, 3), float("inf"))}, "NaN or inf"),
        ({"start": torch.zeros(10, 3)}, "all zeros"),
        ({"tol": 0.0}, "tol must be > 0"),
        ({"tol": -1e-4}, "tol must be > 0"),
        ({"tol": float("nan")}, "positive finite"),
        ({"tol": float("inf")}, "positive finite"),
        ({"method": "arnoldi"}, "method must be one of"),
        ({"max_matvecs": 2}, "max_matvecs"),
        ({"max_matvecs": 0}, "max_matvecs must be >= 1"),
        ({"oversample": -1}, "oversample must be >= 0"),
        ({"k": 0}, "k must be >= 1"),
    ],
)
def test_bad_input_raises_a_specific_value_error(kwargs, match):
    args = {"k": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        top_eigenpairs(_identity, 10, **args)


def test_a_wrong_matmat_is_reported():
    with pytest.raises(ValueError, match="matmat returned shape"):
        top_eigenpairs(lambda v: v[:-1], 10, 3)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        top_eigenpairs(lambda v: v * float("nan"), 10, 3)
