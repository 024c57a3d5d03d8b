"""The ``ds.hess`` accessor: densities and summaries derived from stored quadrature.

Works on a single spectrum (dims probe x node) and on a tracked run (step x probe x node,
optionally run x step x ...): every dimension other than ``probe`` and ``node`` is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import xarray as xr

from hessnb.linalg.quadrature import (
    GRID_POINTS,
    check_sigma,
    default_grid,
    default_sigma,
    gaussian_density,
    log_gaussian_density,
    moments,
    wasserstein_distance,
)
from hessnb.schema import QUADRATURE, require

__all__ = ["HessAccessor"]

GRID_DIM = "eigenvalue"


def _probe_mean(values: np.ndarray, weights_present: np.ndarray) -> np.ndarray:
    """Mean over the probe axis (-2) counting only probes that hold any weight."""
    count = np.maximum(weights_present.sum(axis=-1), 1)
    return values.sum(axis=-2) / count[..., None]


def _present(weights: np.ndarray) -> np.ndarray:
    """1.0 for probes holding quadrature weight, else 0.0, shape ``weights.shape[:-1]``.

    ``nansum``: spectra of different lengths concatenated along a new dimension are padded
    with NaN weights, which must not hide the probe.
    """
    return (np.nansum(weights, axis=-1) > 0).astype(float)


@xr.register_dataset_accessor("hess")
class HessAccessor:
    """Derived views of a hessnb dataset: ``ds.hess.density()``, ``.top()``, ``.trace()``."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # ------------------------------------------------------------------ helpers
    def _quadrature(self) -> tuple[xr.DataArray, xr.DataArray]:
        require(self._ds, QUADRATURE, "ds.hess")
        nodes, weights = self._ds["nodes"], self._ds["weights"]
        if nodes.size == 0:
            raise ValueError("dataset holds no spectra (it is empty); record a step first")
        lead = [d for d in nodes.dims if d not in ("probe", "node")]
        order = [*lead, "probe", "node"]
        return nodes.transpose(*order), weights.transpose(*order)

    def _grid(
        self, nodes: np.ndarray, sigma: float | None, grid: np.ndarray | int | None
    ) -> tuple[float, np.ndarray]:
        sigma = default_sigma(nodes) if sigma is None else check_sigma(sigma)
        if grid is None or isinstance(grid, (int, np.integer)):
            points = GRID_POINTS if grid is None else int(grid)
            if points < 2:
                raise ValueError(f"a grid needs at least 2 points, got {points}")
            grid = default_grid(nodes, sigma, points)
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2:
            raise ValueError("grid must be a 1-D array of at least 2 eigenvalues")
        return sigma, grid

    def _wrap(
        self, values: np.ndarray, nodes: xr.DataArray, grid: np.ndarray, name: str, attrs: dict
    ) -> xr.DataArray:
        lead = list(nodes.dims[:-2])
        coords = {d: nodes[d] for d in lead if d in nodes.coords}
        coords[GRID_DIM] = (GRID_DIM, grid, {"long_name": "eigenvalue", "units": "1"})
        return xr.DataArray(values, dims=[*lead, GRID_DIM], coords=coords, name=name, attrs=attrs)

    # ------------------------------------------------------------------ densities
    def density(
        self,
        sigma: float | None = None,
        grid: np.ndarray | int | None = None,
        log: bool = False,
    ) -> xr.DataArray:
        """Smoothed spectral density ``phi_sigma`` on a grid, averaged over probes.

        Parameters
        ----------
        sigma : float, optional
            Kernel standard deviation. Default: ``sqrt(1e-5 * max(1, range))`` over all
            nodes (the paper's reference code), so every step shares one kernel.
        grid : array of shape (g,) or int, optional
            Eigenvalues to evaluate at, or a number of points for the default grid
            (10,000 points over all nodes, padded by ``max(0.01, 6 sigma)``).
        log : bool
            Return ``log10 phi`` computed stably (values like 1e-200 stay finite).

        Returns
        -------
        xarray.DataArray, dims (..., "eigenvalue")
            Leading dims are those of ``nodes`` other than probe and node (e.g. step).
        """
        nodes, weights = self._quadrature()
        sigma, grid = self._grid(nodes.values, sigma, grid)
        present = _present(weights.values)
        if log:
            logs = log_gaussian_density(nodes.values, weights.values, grid, sigma)
            logs = np.where(present[..., None] > 0, logs, -np.inf)
            count = np.maximum(present.sum(axis=-1), 1)
            from scipy.special import logsumexp

            values = (logsumexp(logs, axis=-2) - np.log(count)[..., None]) / np.log(10)
            attrs = {"long_name": "log10 spectral density", "units": "1", "sigma": sigma}
            return self._wrap(values, nodes, grid, "log10_density", attrs)
        dens = gaussian_density(nodes.values, weights.values, grid, sigma)
        values = _probe_mean(dens, present)
        attrs = {"long_name": "spectral density", "units": "1", "sigma": sigma}
        return self._wrap(values, nodes, grid, "density", attrs)

    def density_band(
        self,
        sigma: float | None = None,
        grid: np.ndarray | int | None = None,
        level: float = 0.9,
        resamples: int = 200,
        seed: int = 0,
    ) -> xr.Dataset:
        """Density with a probe-bootstrap band (needs at least 2 probes).

        Resamples probes with replacement ``resamples`` times and returns the mean density
        with the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled
        means as ``lower`` and ``upper``.
        """
        nodes, weights = self._quadrature()
        n_probes = nodes.sizes["probe"]
        if n_probes < 2:
            raise ValueError(
                "a bootstrap band needs several probes; run hessnb.spectrum with probes >= 2"
            )
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        sigma, grid = self._grid(nodes.values, sigma, grid)
        dens = gaussian_density(nodes.values, weights.values, grid, sigma)  # (..., P, g)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, n_probes, size=(resamples, n_probes))
        boot = np.stack([dens[..., idx, :].mean(axis=-2) for idx in picks])
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
        mean = _probe_mean(dens, _present(weights.values))
        attrs = {"units": "1", "sigma": sigma, "level": level}
        return xr.Dataset(
            {
                "density": self._wrap(
                    mean, nodes, grid, "density", {**attrs, "long_name": "spectral density"}
                ),
                "lower": self._wrap(
                    lo, nodes, grid, "lower", {**attrs, "long_name": "bootstrap lower quantile"}
                ),
                "upper": self._wrap(
                    hi, nodes, grid, "upper", {**attrs, "long_name": "bootstrap upper quantile"}
                ),
            }
        )

    def log_abs_density(
        self,
        sigma: float | None = None,
        grid: np.ndarray | int | None = None,
        floor: float = 1e-12,
    ) -> xr.DataArray:
        """Density of ``log10 |lambda|`` (for log-scale eigenvalue axes).

        Nodes with ``|theta| < floor`` are placed at ``log10(floor)``. The result
        integrates to 1 over ``log10 |lambda|``; the sign of eigenvalues is not kept.
        """
        nodes, weights = self._quadrature()
        if floor <= 0:
            raise ValueError(f"floor must be positive, got {floor}")
        logged = np.log10(np.maximum(np.abs(nodes.values), floor))
        sigma, grid = self._grid(logged, sigma, grid)
        dens = gaussian_density(logged, weights.values, grid, sigma)
        present = _present(weights.values)
        out = self._wrap(
            _probe_mean(dens, present),
            nodes,
            grid,
            "log_abs_density",
            {"long_name": "density of log10 |eigenvalue|", "sigma": sigma},
        )
        return out.rename({GRID_DIM: "log10_abs_eigenvalue"})

    # ------------------------------------------------------------------ summaries
    def top(self, k: int | None = None) -> xr.DataArray:
        """The top ``k`` Ritz values (all stored when ``k`` is None), dims (..., k)."""
        top = require(self._ds, ["top_eigenvalues"], "ds.hess.top")["top_eigenvalues"]
        if k is None:
            return top
        if not 1 <= k <= top.sizes["k"]:
            raise ValueError(f"k must lie in 1..{top.sizes['k']}, got {k}")
        return top.isel(k=slice(0, k))

    def trace(self) -> xr.DataArray:
        """Trace estimate ``n sum_j tau_j theta_j`` averaged over probes."""
        if "trace" in self._ds:
            return self._ds["trace"]
        nodes, weights = self._quadrature()
        per_probe = (weights * nodes.fillna(0)).sum("node") * self._ds["n_params"]
        return per_probe.mean("probe").rename("trace")

    def moments(self, orders: Sequence[int] = (1, 2, 3, 4)) -> xr.DataArray:
        """Spectral moments ``tr(H^j) / n`` estimated by quadrature, dims (..., order)."""
        nodes, weights = self._quadrature()
        values = moments(nodes.values, weights.values, list(orders))  # (..., P, orders)
        present = _present(weights.values)
        mean = _probe_mean(values, present)
        lead = list(nodes.dims[:-2])
        coords = {d: nodes[d] for d in lead if d in nodes.coords}
        coords["order"] = list(orders)
        return xr.DataArray(mean, dims=[*lead, "order"], coords=coords, name="moments")

    def w1_bound(self) -> xr.DataArray:
        """A-priori Wasserstein-1 bound in eigenvalue units: ``t * (theta_max - theta_min)``."""
        require(self._ds, ["w1_bound"], "ds.hess.w1_bound")
        nodes, _ = self._quadrature()
        spread = nodes.max(["probe", "node"]) - nodes.min(["probe", "node"])
        return (self._ds["w1_bound"] * spread).rename("w1_bound_abs")

    # ------------------------------------------------------------------ distances
    def _spectra(self) -> dict[int | None, tuple[np.ndarray, np.ndarray]]:
        """Quadrature per recorded step (key None for a single spectrum)."""
        nodes, weights = self._quadrature()
        extra = [d for d in nodes.dims[:-2] if d != "step"]
        if extra:
            raise ValueError(
                f"distances need one run (dims step, probe, node); this dataset also has "
                f"{extra}: select one first, e.g. ds.sel(run=...)"
            )
        if "step" not in nodes.dims:
            return {None: (nodes.values, weights.values)}
        out = {}
        for i, step in enumerate(nodes["step"].values):
            n, w = nodes.values[i], weights.values[i]
            if np.isfinite(n).any():  # top-k records (has_density 0) hold no density
                out[int(step)] = (n, np.nan_to_num(w))
        return out

    def distance(self, other: xr.Dataset, strict: bool = True) -> xr.DataArray:
        """Wasserstein-1 distance to the spectrum of ``other``, in eigenvalue units.

        Parameters
        ----------
        other : xarray.Dataset
            A spectrum, or a run. Two single spectra give one number; a run and a single
            spectrum give the distance at each of the run's steps; two runs give it at each
            step both recorded (e.g. two training runs, step by step).
        strict : bool
            Refuse spectra of different operators: a different ``n_params``, ``model`` or
            parameter selection (``strict=False`` allows different models of one size).

        Returns
        -------
        xarray.DataArray
            Dims ``()`` or ``("step",)``; ``W1`` between the probe-averaged quadratures.

        Raises
        ------
        ValueError
            Different sizes or operators, or no step in common.
        """
        require(other, QUADRATURE, "ds.hess.distance")
        self._check_same_operator(other, strict)
        mine, theirs = self._spectra(), other.hess._spectra()
        attrs = {"long_name": "Wasserstein-1 distance between spectra", "units": "1"}
        if list(mine) == [None] and list(theirs) == [None]:
            value = wasserstein_distance(mine[None], theirs[None])
            return xr.DataArray(value, name="distance", attrs=attrs)
        if None in mine or None in theirs:
            single = mine.get(None) or theirs[None]
            pairs = {s: (q, single) for s, q in {**mine, **theirs}.items() if s is not None}
        else:
            common = sorted(set(mine) & set(theirs))
            if not common:
                raise ValueError(
                    f"the two runs share no recorded step (steps {sorted(mine)[:8]} and "
                    f"{sorted(theirs)[:8]}); pick steps with ds.sel(step=...) first"
                )
            pairs = {s: (mine[s], theirs[s]) for s in common}
        steps = np.array(sorted(pairs), dtype=np.int64)
        values = [wasserstein_distance(*pairs[s]) for s in steps]
        return xr.DataArray(
            values, dims="step", coords={"step": steps}, name="distance", attrs=attrs
        )

    def movement(self) -> xr.DataArray:
        """How far the spectrum moved since the previous full record, at each record.

        Returns
        -------
        xarray.DataArray, dims ("step",)
            ``W1`` between the spectrum at each recorded step (from the second on) and the
            one before it, in eigenvalue units; ``per_step`` (a coordinate) divides it by
            the number of training steps in between.

        Raises
        ------
        ValueError
            Fewer than two recorded densities.
        """
        spectra = self._spectra()
        if None in spectra or len(spectra) < 2:
            raise ValueError(
                "movement needs a run with at least two recorded densities (a step dimension)"
            )
        steps = np.array(sorted(spectra), dtype=np.int64)
        values = [wasserstein_distance(spectra[a], spectra[b]) for a, b in pairwise(steps)]
        return xr.DataArray(
            values,
            dims="step",
            coords={"step": steps[1:], "per_step": ("step", np.asarray(values) / np.diff(steps))},
            name="movement",
            attrs={"long_name": "Wasserstein-1 distance to the previous record", "units": "1"},
        )

    def _check_same_operator(self, other: xr.Dataset, strict: bool) -> None:
        for key in ("n_params", "model") if strict else ("n_params",):
            a, b = _describe(self._ds, key), _describe(other, key)
            if a is not None and b is not None and str(a) != str(b):
                what = "sizes" if key == "n_params" else "operators"
                hint = "" if key == "n_params" else " (pass strict=False to compare anyway)"
                raise ValueError(
                    f"these spectra are of different {what} ({key} {a!r} and {b!r}); a "
                    f"distance compares spectra of the same operator{hint}"
                )


def _describe(ds: xr.Dataset, key: str) -> object:
    """Attribute ``key`` of ``ds`` (``n_params`` also from its variable), or None."""
    if key in ds.attrs:
        return ds.attrs[key]
    if key in ds and ds[key].size == 1:
        return ds[key].item()
    return None
