import numpy as np
import pytest
import torch

from hessnb.tracking.gradients import cosine, projection_statistics


def test_projection_statistics_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    g = rng.standard_normal(30)
    vectors = torch.tensor(q[:, :4])
    fraction, overlaps, norm = projection_statistics(vectors, torch.tensor(g))
    expected = (q[:, :4].T @ g) ** 2 / (g @ g)
    np.testing.assert_allclose(overlaps, expected, rtol=1e-12)
    np.testing.assert_allclose(
        fraction, np.linalg.norm(q[:, :4] @ (q[:, :4].T @ g)) ** 2 / (g @ g), rtol=1e-12
    )
    assert norm == pytest.approx(np.linalg.norm(g), rel=1e-12)


def test_projection_ignores_missing_vectors_and_zero_gradient():
    q = torch.eye(5, dtype=torch.float64)[:, :3].clone()
    q[:, 2] = float("nan")
    g = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    fraction, overlaps, _ = projection_statistics(q, g)
    assert fraction == pytest.approx(1.0)
    np.testing.assert_allclose(overlaps[:2], [9 / 25, 16 / 25])
    assert np.isnan(overlaps[2])
    fraction, overlaps, norm = projection_statistics(q, torch.zeros(5, dtype=torch.float64))
    assert np.isnan(fraction) and norm == 0.0


def test_projection_shape_errors():
    with pytest.raises(ValueError, match="need vectors"):
        projection_statistics(torch.zeros(4, 2), torch.zeros(5))


def test_cosine():
    a = torch.tensor([1.0, 0.0])
    assert cosine(a, torch.tensor([1.0, 1.0])) == pytest.approx(2**-0.5)
    assert np.isnan(cosine(a, torch.zeros(2)))
