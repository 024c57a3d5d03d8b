"""Any symmetric operator with ``shape`` and ``matmat`` or ``@`` works with SLQ."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn

import hessnb
from hessnb.linalg.operator import MatrixOperator, as_operator


def _exact_top(matrix: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.linalg.eigvalsh(matrix))[::-1][:k]


def test_scipy_linear_operator_gives_the_exact_spectrum(matrix_with_spectrum):
    eigenvalues = np.linspace(-2.0, 7.0, 30)
    a = matrix_with_spectrum(eigenvalues).numpy()
    calls = []

    def matmat(block: np.ndarray) -> np.ndarray:
        assert isinstance(block, np.ndarray)  # scipy operators get numpy blocks
        calls.append(block.shape)
        return a @ block

    op = spla.LinearOperator((30, 30), matvec=lambda v: a @ v, matmat=matmat, dtype=np.float64)
    ds = hessnb.spectrum(op, lanczos_steps=30, top_k=3, progress=False)
    np.testing.assert_allclose(ds.top_eigenvalues.values, _exact_top(a, 3), atol=1e-10)
    assert ds.attrs["model"] == "_CustomLinearOperator"
    assert calls  # the block product was used


def test_scipy_sparse_matrix_is_an_operator():
    import scipy.sparse as sp

    diagonal = np.arange(1.0, 41.0)
    ds = hessnb.spectrum(sp.diags(diagonal).tocsr(), lanczos_steps=40, top_k=2, progress=False)
    np.testing.assert_allclose(ds.top_eigenvalues.values, [40.0, 39.0], atol=1e-10)


def test_curvlinops_hessian_matches_hessnb_hessian():
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(23, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (23,))
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]
    theirs = curvlinops.HessianLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), batches
    )
    ours = hessnb.HessianOperator(model, nn.functional.cross_entropy, batches)
    assert theirs.shape == ours.shape == (43, 43)
    a = hessnb.spectrum(theirs, lanczos_steps=43, top_k=4, progress=False)
    b = hessnb.spectrum(ours, lanczos_steps=43, top_k=4, progress=False)
    np.testing.assert_allclose(a.top_eigenvalues.values, b.top_eigenvalues.values, rtol=1e-8)
    np.testing.assert_allclose(a.nodes.values, b.nodes.values, rtol=1e-6, atol=1e-9)
    exact = torch.linalg.eigvalsh(ours.dense()).numpy()[::-1][:4]
    np.testing.assert_allclose(a.top_eigenvalues.values, exact, rtol=1e-8)


@pytest.mark.parametrize("kind", ["numpy", "torch", "matrix_operator"])
def test_dense_matrices_are_operators(kind):
    a = np.diag(np.arange(1.0, 11.0))
    source = {
        "numpy": a,
        "torch": torch.as_tensor(a),
        "matrix_operator": MatrixOperator(a),
    }[kind]
    ds = hessnb.spectrum(source, lanczos_steps=10, top_k=1, progress=False)
    assert ds.top_eigenvalues.values[0] == pytest.approx(10.0, abs=1e-10)


class _MatmulOnly:
    """An operator with ``shape`` and ``@`` only, in float32."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix.float()
        self.dtype = torch.float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def __matmul__(self, block: torch.Tensor) -> torch.Tensor:
        assert block.dtype == torch.float32  # the adapter respects the operator's dtype
        return self.matrix @ block


def test_operator_with_only_matmul_and_its_own_dtype():
    op = as_operator(_MatmulOnly(torch.diag(torch.arange(1.0, 6.0))))
    out = op.matmat(torch.eye(5, dtype=torch.float64))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), np.diag(np.arange(1.0, 6.0)))


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (object(), TypeError, "has no \\(n, n\\) shape"),
        (np.ones((3, 4)), ValueError, "need a square matrix"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), ValueError, "not symmetric"),
    ],
)
def test_non_operators_are_refused(bad, error, message):
    with pytest.raises(error, match=message):
        hessnb.spectrum(bad, lanczos_steps=2, top_k=1, progress=False)


class _ShapeOnly:
    shape = (4, 4)


class _WrongShape:
    shape = (4, 4)

    def matmat(self, block):
        return block[:2]


def test_operator_without_product_or_with_wrong_output_is_refused():
    with pytest.raises(TypeError, match="neither matmat"):
        as_operator(_ShapeOnly())
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\)"):
        hessnb.spectrum(_WrongShape(), lanczos_steps=2, top_k=1, progress=False)
