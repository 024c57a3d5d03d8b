"""Diagonal blocks: index sets, the block-diagonal product, and SLQ of every block at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessnb import SLQSettings
from hessnb.linalg.blocks import Blocks, block_diagonal, index_blocks
from hessnb.linalg.quadrature import wasserstein_distance
from hessnb.slq import estimate_blocks


def _random_symmetric(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


def test_block_diagonal_product_keeps_each_column_in_its_block():
    a = _random_symmetric(9, 0)
    blocks = index_blocks({"x": slice(0, 4), "y": [4, 6, 8], "z": [5]}, 9)
    v = torch.zeros(9, 3, dtype=torch.float64)
    v[[0, 2], 0] = torch.tensor([1.0, -2.0], dtype=torch.float64)
    v[[4, 8], 1] = torch.tensor([0.5, 3.0], dtype=torch.float64)
    v[5, 2] = 1.0
    product = block_diagonal(lambda m: a @ m, blocks)(v)
    for column, index in enumerate(blocks.indices):
        expected = torch.zeros(9, dtype=torch.float64)
        expected[index] = (a @ v[:, column])[index]
        assert torch.equal(product[:, column], expected)  # exact zeros elsewhere
    # any subset of columns works: the block is read from the support
    assert torch.equal(block_diagonal(lambda m: a @ m, blocks)(v[:, [2]]), product[:, [2]])


def test_every_block_spectrum_matches_its_exact_diagonal_block():
    a = _random_symmetric(30, 1)
    blocks = index_blocks(
        {"first": slice(0, 12), "mid": slice(12, 20), "odd": [20, 22, 24, 26]}, 30
    )
    settings = SLQSettings(lanczos_steps=12, probes=2, top_k=3, seed=3, deflate=False)
    ests = estimate_blocks(a, blocks, settings)
    for est, index in zip(ests, blocks.indices, strict=True):
        exact = np.linalg.eigvalsh(a[index][:, index].numpy())
        assert est.n_params == index.numel()
        # Lanczos over a whole block (steps >= its size) finds its eigenvalues exactly
        for p in range(2):
            m = int(est.lengths[p])
            np.testing.assert_allclose(np.sort(est.nodes[p, :m]), exact, atol=1e-10)
            assert est.weights[p].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(est.top_eigenvalues, exact[::-1][:3], rtol=1e-10)
        assert (est.lengths == min(12, index.numel())).all()  # small blocks stop at their size
    # the whole-operator quadrature of each block converges to its exact spectrum
    many = estimate_blocks(a, blocks, settings.replace(probes=200))
    for est, index in zip(many, blocks.indices, strict=True):
        exact = np.linalg.eigvalsh(a[index][:, index].numpy())
        assert wasserstein_distance((est.nodes, est.weights), exact) <= 0.05 * np.ptp(exact)


def test_trace_of_each_block_is_unbiased_over_probes():
    rng = np.random.default_rng(0)
    values = rng.uniform(1, 2, 40)
    a = np.diag(values)
    blocks = index_blocks({"a": slice(0, 25), "b": slice(25, 40)}, 40)
    ests = estimate_blocks(a, blocks, SLQSettings(lanczos_steps=15, probes=64, top_k=1, seed=0))
    for est, index in zip(ests, blocks.indices, strict=True):
        exact = values[index.numpy()].sum()
        stderr = est.traces.std(ddof=1) / np.sqrt(64)
        assert abs(est.traces.mean() - exact) <= 4 * stderr + 1e-9 * exact


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ({}, ValueError, "blocks is empty"),
        ({"a": slice(0, 0)}, ValueError, "'a' holds no coordinates"),
        ({"a": [0, 1], "b": [1, 2]}, ValueError, "'a' and 'b' share coordinates"),
        ({"a": [0, 9]}, ValueError, "outside 0..4"),
        ({"a": [0.5, 1.0]}, TypeError, "integer coordinates"),
    ],
)
def test_bad_blocks_say_what_is_wrong(spec, error, match):
    with pytest.raises(error, match=match):
        index_blocks(spec, 5)


def test_blocks_of_another_dimension_are_refused():
    blocks = Blocks(("a",), (torch.arange(3),), 3)
    with pytest.raises(ValueError, match="dimension 3, but the operator has dimension 5"):
        estimate_blocks(np.eye(5), blocks, SLQSettings(lanczos_steps=3, top_k=1))
