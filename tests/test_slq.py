"""SLQ end to end: the dataset it returns, and its accuracy against exact Hessian spectra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import hessnb
from hessnb.linalg.quadrature import wasserstein_distance
from hessnb.settings import SLQSettings
from hessnb.slq import estimate, probe_vectors

#: Measured W1 distance on the trained digits MLP (610 parameters, 90 steps, 1 probe, seed 0):
#: 7.0e-3, for a spectral range of 0.64 and an a-priori bound of 0.16; allow a 2x margin.
W1_THRESHOLD = 1.4e-2


@pytest.fixture(scope="module")
def digits_exact(trained_digits_mlp):
    """(operator, dense Hessian, exact eigenvalues ascending) of the trained digits MLP."""
    problem = trained_digits_mlp
    op = hessnb.HessianOperator(problem.model, problem.loss_fn, problem.batches)
    dense = op.dense()
    return op, dense, np.linalg.eigvalsh(dense.numpy())


@pytest.fixture(scope="module")
def digits_spectrum(digits_exact):
    op, _, _ = digits_exact
    return hessnb.spectrum(op, lanczos_steps=90, probes=1, seed=0, progress=False)


def _slq_wasserstein(ds, exact: np.ndarray) -> float:
    """W1 between the probe-averaged quadrature measure and the exact eigenvalue measure."""
    nodes = ds.nodes.values.ravel()
    weights = ds.weights.values.ravel() / ds.sizes["probe"]
    finite = np.isfinite(nodes)
    return scipy.stats.wasserstein_distance(nodes[finite], exact, u_weights=weights[finite])


def test_slq_matches_the_exact_spectrum_of_a_trained_network(digits_spectrum, digits_exact):
    _, _, exact = digits_exact
    ds = digits_spectrum
    assert exact.size == 610 and exact[-1] > 10 * abs(exact[0])  # outlier-dominated
    assert abs(float(ds.top_eigenvalues[0]) - exact[-1]) < 1e-6
    np.testing.assert_allclose(ds.top_eigenvalues.values[:3], exact[::-1][:3], atol=1e-6)
    w1 = _slq_wasserstein(ds, exact)
    assert w1 < W1_THRESHOLD
    assert w1 < float(ds.hess.w1_bound())
    assert float(ds.top_residuals[0]) < 1e-8


def test_ritz_residuals_match_explicit_residuals(digits_exact):
    op, dense, _ = digits_exact
    est = estimate(op, SLQSettings(lanczos_steps=15, top_k=5), keep_vectors=True)
    vectors = est.top_vectors
    assert vectors.shape == (610, 5)
    np.testing.assert_allclose(vectors.norm(dim=0), 1.0, atol=1e-12)
    theta = torch.as_tensor(est.top_eigenvalues)
    np.testing.assert_allclose(theta, torch.einsum("ik,ij,jk->k", vectors, dense, vectors))
    explicit = (dense @ vectors - vectors * theta).norm(dim=0).numpy()
    assert explicit.max() > 1e-6  # some not yet converged: the comparison means something
    np.testing.assert_allclose(est.top_residuals, explicit, rtol=1e-6, atol=1e-12)


def test_trace_estimate_is_within_a_few_standard_errors(digits_exact):
    op, dense, _ = digits_exact
    ds = hessnb.spectrum(op, lanczos_steps=3, probes=40, seed=1, top_k=1, progress=False)
    exact = float(torch.trace(dense))
    stderr = float(ds.trace_stderr)
    assert 0 < stderr < 0.2 * abs(exact)
    assert abs(float(ds.trace) - exact) < 3 * stderr
    # Per probe the quadrature trace is exactly n v^T H v (Hutchinson).
    v = probe_vectors(op.n_params, 40, seed=1)
    v = v / v.norm(dim=0)
    hutchinson = op.n_params * torch.einsum("ip,ij,jp->p", v, dense, v)
    np.testing.assert_allclose(ds.hess.trace(), hutchinson.mean(), rtol=1e-10)


@pytest.fixture
def outlier_matrix(matrix_with_spectrum, bulk_and_outliers):
    return matrix_with_spectrum(bulk_and_outliers, seed=2)


def test_dataset_schema(outlier_matrix):
    ds = hessnb.spectrum(outlier_matrix, lanczos_steps=30, probes=3, top_k=4, progress=False)
    expected = {
        "nodes": ("probe", "node"),
        "weights": ("probe", "node"),
        "lanczos_length": ("probe",),
        "top_eigenvalues": ("k",),
        "top_residuals": ("k",),
        "trace": (),
        "trace_stderr": (),
        "w1_bound": (),
        "w1_posterior": (),
        "n_deflated": ("probe",),
        "lambda_min": (),
        "negative_mass": (),
        "bulk_edge": (),
        "n_outliers": (),
        "outlier_gap": (),
        "n_params": (),
    }
    assert {name: ds[name].dims for name in ds.data_vars} == expected
    assert ds.sizes == {"probe": 3, "node": 30, "k": 4}
    assert ds.k.values.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(ds.weights.sum("node"), 1.0, rtol=1e-13)
    np.testing.assert_allclose(ds.top_eigenvalues, [14.0, 9.0, 6.0, 1.0], atol=1e-3)
    assert np.all(np.diff(ds.top_eigenvalues.values) <= 0)
    assert ds.attrs["lanczos_steps"] == 30 and ds.attrs["probes"] == 3
    assert int(ds.n_outliers) == 3 and float(ds.outlier_gap) == pytest.approx(14.0, rel=1e-3)
    assert ds.attrs["n_params"] == 200 and ds.attrs["model"] == "MatrixOperator"
    assert float(ds.w1_bound) == hessnb.wasserstein_bound(30, 3, 200)


def test_same_seed_same_spectrum_other_seed_other_spectrum(outlier_matrix):
    def run(seed):
        return hessnb.spectrum(outlier_matrix, lanczos_steps=10, seed=seed, progress=False)

    assert run(3).identical(run(3))
    assert not np.allclose(run(3).nodes, run(4).nodes)


def test_breakdown_pads_with_nan_and_zero_residuals(matrix_with_spectrum):
    matrix = matrix_with_spectrum(np.repeat([-1.0, 2.0, 5.0], [10, 10, 5]))
    ds = hessnb.spectrum(matrix, lanczos_steps=8, probes=2, top_k=4, progress=False)
    assert ds.lanczos_length.values.tolist() == [3, 3]
    np.testing.assert_allclose(ds.nodes[:, :3], [[-1.0, 2.0, 5.0]] * 2, atol=1e-12)
    assert np.all(np.isnan(ds.nodes[:, 3:])) and np.all(ds.weights[:, 3:] == 0)
    np.testing.assert_allclose(ds.top_eigenvalues[:3], [5.0, 2.0, -1.0], atol=1e-12)
    assert np.isnan(ds.top_eigenvalues[3]) and np.isnan(ds.top_residuals[3])
    np.testing.assert_allclose(ds.top_residuals[:3], 0.0, atol=1e-12)
    exact_trace = float(torch.trace(matrix))
    assert np.isclose(float(ds.trace), exact_trace, rtol=0.5)  # finite despite NaN padding


@pytest.mark.parametrize("placement", ["cpu", "mmap"])
def test_basis_placement_does_not_change_the_spectrum(
    placement, outlier_matrix, tmp_path, monkeypatch
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run = {"lanczos_steps": 12, "probes": 2, "progress": False}
    default = hessnb.spectrum(outlier_matrix, **run)
    assert hessnb.spectrum(outlier_matrix, placement=placement, **run).identical(default)
    assert list(tmp_path.iterdir()) == []  # the memory-mapped basis file is gone


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"lanczos_steps": 0}, ValueError, r"lanczos_steps must be >= 1"),
        ({"probes": 0}, ValueError, r"probes must be >= 1"),
        ({"top_k": 0}, ValueError, r"top_k must be >= 1"),
        ({"lanczos_steps": 5, "top_k": 6}, ValueError, r"top_k=6 exceeds lanczos_steps=5"),
        ({"lanczos_steps": 201}, ValueError, r"cannot exceed the operator dimension \(200"),
        ({"lanczos_steps": 5.0}, TypeError, r"lanczos_steps must be an int"),
        ({"probes": True}, TypeError, r"probes must be an int"),
        ({"placement": "ssd"}, ValueError, r"placement must be one of"),
    ],
)
def test_invalid_settings_are_refused(settings, error, message, outlier_matrix):
    with pytest.raises(error, match=message):
        hessnb.spectrum(outlier_matrix, **{"top_k": 2, "progress": False, **settings})


def test_settings_object_and_keywords_agree_and_do_not_mix(outlier_matrix):
    settings = SLQSettings(lanczos_steps=12, probes=2, top_k=3, seed=4)
    by_object = hessnb.spectrum(outlier_matrix, settings=settings, progress=False)
    by_keywords = hessnb.spectrum(
        outlier_matrix, lanczos_steps=12, probes=2, top_k=3, seed=4, progress=False
    )
    assert by_object.identical(by_keywords)
    assert by_object.attrs["seed"] == 4 and by_object.attrs["lanczos_steps"] == 12
    with pytest.raises(ValueError, match="either settings="):
        hessnb.spectrum(outlier_matrix, probes=3, settings=settings, progress=False)


@pytest.mark.parametrize(
    ("operator", "error", "message"),
    [
        (np.arange(6.0).reshape(2, 3), ValueError, r"need a square matrix"),
        (np.triu(np.ones((3, 3))), ValueError, r"not symmetric"),
        ("H", TypeError, r"str has no \(n, n\) shape"),
    ],
)
def test_non_operators_are_refused(operator, error, message):
    with pytest.raises(error, match=message):
        hessnb.spectrum(operator, lanczos_steps=2, top_k=1, progress=False)


def test_spectrum_of_a_hessian_operator_records_provenance(digits_exact):
    op, _, _ = digits_exact
    ds = hessnb.spectrum(op, lanczos_steps=4, top_k=2, progress=False)
    assert ds.attrs["model"] == "Sequential" and ds.attrs["bn_mode"] == "train"
    assert ds.attrs["n_examples"] == 300 and ds.attrs["dtype"] == "float64"
    assert ds.attrs["hessnb_version"] == hessnb.__version__


@pytest.mark.parametrize("outliers", [0, 1, 9])
def test_posterior_bound_holds_and_is_within_20x_of_the_measured_w1(outliers):
    """Stored ``w1_posterior`` against the exact W1 on planted spectra (8 seeds, 1 probe)."""

    rng = np.random.default_rng(outliers)
    eigs = np.sort(np.r_[rng.gamma(0.5, 0.02, 3000 - outliers), np.linspace(3, 30, outliers)])
    diagonal = torch.as_tensor(eigs)
    op = hessnb.linalg.as_operator(
        type("D", (), {"shape": (3000, 3000), "__matmul__": lambda s, v: diagonal[:, None] * v})()
    )
    spread = eigs.max() - eigs.min()
    for deflate in (False, True):
        measured, bounds = [], []
        for seed in range(8):
            ds = hessnb.spectrum(op, lanczos_steps=60, seed=seed, deflate=deflate, progress=False)
            measured.append(
                wasserstein_distance((ds.nodes.values, ds.weights.values), eigs) / spread
            )
            bounds.append(float(ds.w1_posterior))
        assert all(b >= m for b, m in zip(bounds, measured, strict=True))  # it holds
        if not deflate:  # tight for plain SLQ; with deflation it bounds plain + the shift
            assert np.mean(bounds) <= 20 * np.mean(measured)
        assert ds.w1_posterior.attrs["confidence"] == 0.95


def test_every_layer_spectrum_matches_its_dense_diagonal_block(digits_exact):
    op, dense, _ = digits_exact
    ds = hessnb.spectrum(op, lanczos_steps=90, top_k=3, blocks="layers", progress=False)
    blocks = op.space.blocks("layers")
    assert ds.block.values.tolist() == list(blocks.labels) and ds.attrs["blocks"] == "layers"
    assert ds.n_params.values.tolist() == blocks.sizes and ds.attrs["n_params"] == op.n_params
    for label, index in zip(blocks.labels, blocks.indices, strict=True):
        exact = np.linalg.eigvalsh(dense[index][:, index].numpy())
        block = ds.sel(block=label)
        np.testing.assert_allclose(block.top_eigenvalues, exact[::-1][:3], rtol=1e-6)
        assert _slq_wasserstein(block, exact) <= W1_THRESHOLD
    assert ds.hess.density().sizes["block"] == len(blocks.labels)


def test_blocks_by_name_need_parameter_names(outlier_matrix):
    with pytest.raises(ValueError, match="has no parameter names"):
        hessnb.spectrum(outlier_matrix, lanczos_steps=5, top_k=1, blocks="layers", progress=False)
