"""Synthetic run datasets for the view tests, with the tracker's schema and chosen steps.

Each step's spectrum is a real SLQ estimate (``hessnb.spectrum``) of a small symmetric
matrix: a bulk near zero plus ``outliers`` eigenvalues that grow with the step, so the
density visibly changes from step to step. The gradient statistics are made up but obey
the schema (overlaps >= 0, ``grad_fraction`` = their sum <= 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

import hessnb
from hessnb.runfile import combine_runs

DIM = 40
LANCZOS = 16
TOP_K = 3


def matrix(step: int, dim: int = DIM, outliers: int = TOP_K, seed: int = 0) -> np.ndarray:
    """Symmetric ``(dim, dim)`` matrix: bulk in about [-0.5, 1] plus growing outliers."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    bulk = rng.uniform(-0.5 * np.exp(-step / 20), 1.0, size=dim)
    bulk[:outliers] = 2.0 + (step / 10.0) * np.arange(outliers, 0, -1)
    return (basis * bulk) @ basis.T


def run_dataset(
    steps: Sequence[int] = (0, 10, 20, 40),
    probes: int = 8,
    name: str = "run",
    lr: Sequence[float] | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """A run dataset with the tracker's schema (dims step, probe, node, k)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny products: thread hand-off costs ~1000x the work on 2 cores
    try:
        spectra = [
            hessnb.spectrum(
                matrix(step, seed=seed),
                lanczos_steps=LANCZOS,
                probes=probes,
                top_k=TOP_K,
                progress=False,
            )
            for step in steps
        ]
    finally:
        torch.set_num_threads(threads)
    ds = xr.concat(spectra, dim="step", data_vars="all", coords="minimal", combine_attrs="override")
    ds = ds.assign_coords(step=np.asarray(steps, dtype=np.int64))
    ds["n_params"] = ds["n_params"].isel(step=0, drop=True)
    rng = np.random.default_rng(seed + 1)
    n = len(steps)
    share = np.linspace(0.2, 0.9, n)
    overlap = rng.dirichlet(np.ones(TOP_K), size=n) * share[:, None]
    ds["grad_overlap"] = (("step", "k"), overlap, {"long_name": "(u_i.g)^2 / ||g||^2"})
    ds["grad_fraction"] = ("step", overlap.sum(axis=1), {"long_name": "||P_k g||^2/||g||^2"})
    ds["grad_norm"] = ("step", np.linspace(2.0, 0.5, n))
    ds["grad_hg_cosine"] = ("step", np.linspace(0.5, 0.95, n))
    ds["loss"] = ("step", np.linspace(2.3, 0.3, n))
    ds["accuracy"] = ("step", np.linspace(0.1, 0.95, n))
    if lr is None:
        lr = [0.1 if i < n // 2 else 0.01 for i in range(n)]
    ds["lr"] = ("step", np.asarray(lr, dtype=np.float64))
    ds.attrs.update(
        run=name,
        model="synthetic",
        lanczos_steps=LANCZOS,
        probes=probes,
        top_k=TOP_K,
        seed=seed,
        bn_mode="none",
        n_examples=0,
    )
    return ds


def two_runs() -> xr.Dataset:
    """Runs "bn" and "no-bn" with different steps, combined along ``run`` (NaN-padded)."""
    bn = run_dataset(steps=(0, 10, 20), name="bn", seed=1)
    no_bn = run_dataset(steps=(0, 10, 20, 40), name="no-bn", seed=2)
    return combine_runs({"bn": bn, "no-bn": no_bn})
