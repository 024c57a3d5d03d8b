"""The ds.hess accessor: densities and summaries derived from stored quadrature."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import trapezoid

import hessnb
from hessnb.linalg.quadrature import gaussian_density


@pytest.fixture(scope="module")
def two_spectra(matrix_with_spectrum):
    """Spectra of two matrices (bulk plus outliers), 3 probes each, of different lengths."""
    bulk = np.linspace(-0.3, 1.0, 57)
    early = matrix_with_spectrum(np.concatenate([bulk, [3.0, 5.0, 8.0]]), seed=0)
    late = matrix_with_spectrum(np.concatenate([bulk * 2, [4.0, 6.0, 12.0]]), seed=1)
    run = {"probes": 3, "top_k": 3, "progress": False}
    return (
        hessnb.spectrum(early, lanczos_steps=20, **run),
        hessnb.spectrum(late, lanczos_steps=25, **run),
    )


@pytest.fixture(scope="module")
def spectrum_ds(two_spectra):
    return two_spectra[0]


def _integral(density: xr.DataArray, dim: str = "eigenvalue") -> np.ndarray:
    return trapezoid(density.values, density[dim].values, axis=-1)


def test_density_integrates_to_one_and_matches_the_quadrature(spectrum_ds):
    density = spectrum_ds.hess.density()
    assert density.dims == ("eigenvalue",) and density.sizes["eigenvalue"] == 10_000
    assert _integral(density) == pytest.approx(1.0, rel=1e-6)
    sigma = density.attrs["sigma"]
    per_probe = gaussian_density(
        spectrum_ds.nodes.values, spectrum_ds.weights.values, density.eigenvalue.values, sigma
    )
    np.testing.assert_allclose(density, per_probe.mean(axis=0), rtol=1e-12)


def test_log_density_is_log10_of_the_density(spectrum_ds):
    grid = np.linspace(-2.0, 40.0, 3001)  # far beyond the nodes the density underflows
    plain = spectrum_ds.hess.density(sigma=0.05, grid=grid)
    logged = spectrum_ds.hess.density(sigma=0.05, grid=grid, log=True)
    assert logged.name == "log10_density" and np.all(np.isfinite(logged))
    representable = plain.values > 1e-250
    assert representable.any() and (plain.values == 0).any()
    np.testing.assert_allclose(
        logged.values[representable], np.log10(plain.values[representable]), rtol=1e-9
    )


@pytest.mark.parametrize("log", [False, True])
def test_density_over_steps_equals_each_spectrum_on_a_shared_grid(two_spectra, log):
    # The spectra have different lengths, so concatenation pads with NaN nodes and weights.
    run = xr.concat(two_spectra, dim="step", join="outer")
    density = run.hess.density(log=log)
    assert density.dims == ("step", "eigenvalue")
    sigma, grid = density.attrs["sigma"], density.eigenvalue.values
    for step, single in enumerate(two_spectra):
        alone = single.hess.density(sigma=sigma, grid=grid, log=log)
        np.testing.assert_allclose(density.isel(step=step), alone, rtol=1e-12, atol=1e-300)


def test_density_band_brackets_the_density(spectrum_ds):
    band = spectrum_ds.hess.density_band(sigma=0.05, grid=500, resamples=100)
    density = spectrum_ds.hess.density(sigma=0.05, grid=500)
    np.testing.assert_allclose(band.density, density, rtol=1e-12)
    assert np.all(band.lower <= band.density + 1e-15)
    assert np.all(band.density <= band.upper + 1e-15)
    assert np.any(band.upper - band.lower > 1e-3)  # the probes really disagree somewhere


def test_density_band_needs_several_probes(spectrum_ds):
    with pytest.raises(ValueError, match="probes >= 2"):
        spectrum_ds.isel(probe=[0]).hess.density_band()


def test_log_abs_density_integrates_to_one(spectrum_ds):
    density = spectrum_ds.hess.log_abs_density()
    assert density.dims == ("log10_abs_eigenvalue",)
    assert _integral(density, "log10_abs_eigenvalue") == pytest.approx(1.0, rel=1e-6)


def test_top_trace_and_moments(spectrum_ds):
    np.testing.assert_allclose(spectrum_ds.hess.top(), [8.0, 5.0, 3.0], atol=1e-6)
    assert spectrum_ds.hess.top(2).sizes["k"] == 2
    nodes, weights = spectrum_ds.nodes.values, spectrum_ds.weights.values
    moments = spectrum_ds.hess.moments([0, 1, 2])
    assert moments.dims == ("order",) and moments.order.values.tolist() == [0, 1, 2]
    expected = [np.mean(np.nansum(weights * nodes**j, axis=1)) for j in range(3)]
    np.testing.assert_allclose(moments, expected, rtol=1e-12)
    assert float(spectrum_ds.hess.trace()) == pytest.approx(60 * expected[1], rel=1e-12)
    # Without the stored trace the accessor derives the same value from the quadrature.
    derived = spectrum_ds.drop_vars("trace").hess.trace()
    assert float(derived) == pytest.approx(float(spectrum_ds.trace), rel=1e-12)


def test_w1_bound_is_relative_bound_times_ritz_range(spectrum_ds):
    spread = np.nanmax(spectrum_ds.nodes) - np.nanmin(spectrum_ds.nodes)
    assert float(spectrum_ds.hess.w1_bound()) == pytest.approx(float(spectrum_ds.w1_bound) * spread)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ds: ds.drop_vars("nodes").hess.density(), r"needs nodes, which this dataset"),
        (lambda ds: ds.drop_vars(["nodes", "weights"]).hess.moments(), r"needs nodes, weights,"),
        (lambda ds: ds.drop_vars("top_eigenvalues").hess.top(), r"needs top_eigenvalues"),
        (lambda ds: ds.drop_vars("w1_bound").hess.w1_bound(), r"needs w1_bound"),
        (lambda ds: ds.isel(probe=[]).hess.density(), r"holds no spectra"),
        (lambda ds: ds.hess.top(4), r"k must lie in 1\.\.3"),
        (lambda ds: ds.hess.density(sigma=0), r"sigma must be a positive"),
        (lambda ds: ds.hess.density(sigma=-1.0, log=True), r"sigma must be a positive"),
        (lambda ds: ds.hess.density(grid=1), r"at least 2 points"),
        (lambda ds: ds.hess.density(grid=np.zeros((2, 2))), r"1-D array"),
        (lambda ds: ds.hess.density_band(level=1.5), r"level must lie in"),
        (lambda ds: ds.hess.log_abs_density(floor=0), r"floor must be positive"),
    ],
)
def test_bad_requests_raise_clear_errors(spectrum_ds, call, message):
    with pytest.raises(ValueError, match=message):
        call(spectrum_ds)


# ---------------------------------------------------------------------- distances
def _exact(matrix_with_spectrum, eigenvalues, seed=0, **kwargs):
    """Full-Krylov spectrum (m = n): deflated SLQ returns the exact eigenvalues."""
    op = matrix_with_spectrum(eigenvalues, seed=seed)
    return hessnb.spectrum(op, lanczos_steps=eigenvalues.size, progress=False, **kwargs)


def test_distance_between_two_spectra_is_the_exact_w1(matrix_with_spectrum):
    from scipy.stats import wasserstein_distance

    a, b = np.linspace(0.0, 1.0, 30), np.linspace(0.0, 1.0, 30) ** 2 * 3
    ds_a, ds_b = _exact(matrix_with_spectrum, a), _exact(matrix_with_spectrum, b, seed=1)
    assert int(ds_a.n_deflated[0]) == 30
    expected = wasserstein_distance(a, b)
    assert float(ds_a.hess.distance(ds_b)) == pytest.approx(expected, rel=1e-8)
    assert float(ds_a.hess.distance(ds_a)) == pytest.approx(0.0, abs=1e-12)


def test_distance_step_by_step_and_movement(matrix_with_spectrum):
    from scipy.stats import wasserstein_distance

    spectra = {s: np.linspace(0.0, 1.0 + s, 20) for s in (0, 10, 30)}
    run = xr.concat(
        [_exact(matrix_with_spectrum, e).expand_dims(step=[s]) for s, e in spectra.items()],
        dim="step",
    )
    single = _exact(matrix_with_spectrum, spectra[0])
    to_start = run.hess.distance(single)
    assert to_start.dims == ("step",) and to_start.step.values.tolist() == [0, 10, 30]
    np.testing.assert_allclose(
        to_start, [wasserstein_distance(spectra[s], spectra[0]) for s in (0, 10, 30)], atol=1e-9
    )
    same = run.hess.distance(run.isel(step=[1, 2]))
    assert same.step.values.tolist() == [10, 30]
    np.testing.assert_allclose(same, 0.0, atol=1e-9)
    moved = run.hess.movement()
    expected = [
        wasserstein_distance(spectra[10], spectra[0]),
        wasserstein_distance(spectra[30], spectra[10]),
    ]
    np.testing.assert_allclose(moved, expected, rtol=1e-8)
    np.testing.assert_allclose(moved.per_step, np.array(expected) / [10, 20], rtol=1e-8)
    with pytest.raises(ValueError, match="no recorded step"):
        run.isel(step=[0]).hess.distance(run.isel(step=[1]))
    with pytest.raises(ValueError, match="at least two"):
        single.hess.movement()


def test_distance_refuses_different_operators(matrix_with_spectrum):
    a = _exact(matrix_with_spectrum, np.linspace(0.0, 1.0, 20))
    b = _exact(matrix_with_spectrum, np.linspace(0.0, 1.0, 21))
    with pytest.raises(ValueError, match="different sizes"):
        a.hess.distance(b)
    other = b.isel(node=slice(0, 20)).assign_attrs(n_params=20, model="OtherNet")
    other["n_params"] = 20
    a.attrs["model"] = "Net"
    with pytest.raises(ValueError, match=r"different operators.*strict=False"):
        a.hess.distance(other)
    assert np.isfinite(float(a.hess.distance(other, strict=False)))
