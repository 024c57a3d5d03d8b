"""Synthetic run datasets for the view tests, with the tracker's schema and chosen steps.

Each step's spectrum is a real SLQ estimate (``hessnb.spectrum``) of a small symmetric
matrix: a bulk near zero plus ``outliers`` eigenvalues that grow with the step, so the
density visibly changes from step to step. The gradient statistics are made up but obey
the schema (overlaps >= 0, ``grad_fraction`` = their sum <= 1). These datasets have no
top-k records, no ``has_density`` and no gradient measure, like run files written before
hessnb stored them; :func:`tracked_run` writes a real run that has all three.
:func:`series_run` stacks such runs along the ``curvature`` and ``block`` dimensions of
issue 12 (several curvature matrices, the Hessian's diagonal blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.nn import functional as F

import hessnb
from hessnb.reference import data, models
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


#: Curvatures and blocks of :func:`series_run` (block names that sort otherwise than stored).
CURVATURES, BLOCKS = ("hessian", "ggn"), ("conv1", "0", "fc")
#: Variables of a run that no curvature matrix changes (they keep no ``curvature`` dim).
TRAINING = ("loss", "accuracy", "grad_norm", "lr", "momentum", "n_params")


def stack(parts: Sequence[xr.Dataset], dim: str, names: Sequence[str]) -> xr.Dataset:
    """``parts`` along a new ``dim`` labelled ``names``, placed after ``step``.

    Along ``curvature``, the :data:`TRAINING` variables are taken from the first part
    (they do not depend on the curvature); along ``block`` only ``n_params`` differs, per
    block, and the training variables likewise keep no ``block`` dim.
    """
    ds = xr.concat(
        parts,
        dim=xr.DataArray(list(names), dims=dim),
        data_vars="all",
        coords="minimal",
        combine_attrs="override",
    )
    shared = TRAINING if dim == "curvature" else tuple(n for n in TRAINING if n != "n_params")
    for name in shared:
        if name in ds and dim in ds[name].dims:
            ds[name] = ds[name].isel({dim: 0}, drop=True)
    return ds.transpose("step", *[d for d in ("curvature", "block") if d in ds.dims], ...)


def series_run(
    steps: Sequence[int] = (0, 10, 20),
    curvatures: Sequence[str] | None = CURVATURES,
    blocks: Sequence[str] | None = BLOCKS,
    name: str = "run",
    seed: int = 0,
) -> xr.Dataset:
    """A run with a ``curvature`` and/or ``block`` dimension (None leaves one out).

    Every (curvature, block) spectrum is :func:`run_dataset` (2 probes) with its own seed,
    so each differs; blocks get ``n_params`` 10, 20, 30, ... Dims like ``(step,
    curvature, block, probe, node)``; the training variables (:data:`TRAINING`) have
    neither. Built once per argument set (a copy is returned).
    """
    key = (tuple(steps), _names(curvatures), _names(blocks), name, seed)
    return _series_run(*key).copy(deep=True)


def _names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


@functools.cache
def _series_run(
    steps: tuple[int, ...],
    curvatures: tuple[str, ...] | None,
    blocks: tuple[str, ...] | None,
    name: str,
    seed: int,
) -> xr.Dataset:
    rows = []
    for i in range(len(curvatures or [None])):
        row = [
            run_dataset(steps, 2, name, seed=seed + 10 * i + j)
            for j in range(len(blocks or [None]))
        ]
        if blocks is not None:
            for j, part in enumerate(row):
                part["n_params"] = 10 * (j + 1)
            row = [stack(row, "block", blocks)]
        rows.append(row[0])
    return rows[0] if curvatures is None else stack(rows, "curvature", curvatures)


def block_spectrum() -> xr.Dataset:
    """``hessnb.spectrum`` of diag(1..12) in blocks "low" (1..6) and "high" (7..12), exact."""
    return hessnb.spectrum(
        np.diag(np.arange(1.0, 13.0)),
        lanczos_steps=6,
        top_k=2,
        blocks={"low": slice(0, 6), "high": slice(6, 12)},
        progress=False,
    )


def series_runs() -> xr.Dataset:
    """Two curvature-and-block runs combined along ``run`` ("bn": steps 0-20, "no-bn": 0-40)."""
    bn = series_run(steps=(0, 10, 20), name="bn", seed=1)
    no_bn = series_run(steps=(0, 10, 20, 40), name="no-bn", seed=2)
    return combine_runs({"bn": bn, "no-bn": no_bn})


#: Learning rate of :func:`tracked_run` before and from step :data:`LR_DROP_STEP`.
TRACKED_LR, LR_DROP_STEP = (0.3, 0.1), 4


def tracked_run(path: Path, steps: int = 7) -> xr.Dataset:
    """A real run with top-k records, from ``hessnb.Tracker`` on a tiny digits MLP.

    A 64-8-10 tanh MLP (float64) on 300 digits, trained by full-batch gradient descent
    (lr 0.3, then 0.1 from step 4), tracked with ``every=[0, 6]`` (full records, with
    the gradient's spectral measure) and ``top_every=2`` (top-k records at steps 2 and 4),
    ``lr`` recorded at every step.

    Returns
    -------
    xarray.Dataset
        The run file at ``path``, opened (steps 0, 2, 4, 6; ``has_density`` 1, 0, 0, 1).
    """
    dataset = data.digits(images=False, size=300)
    batches = [(x.double(), y) for x, y in data.fixed_batches(dataset, 100)]
    torch.manual_seed(0)
    model = models.mlp(hidden=(8,)).double()
    tracker = hessnb.Tracker(
        model,
        F.cross_entropy,
        batches,
        path,
        every=[0, 6],
        top_every=2,
        lanczos_steps=15,
        top_k=3,
        progress=False,
    )
    x, y = (torch.cat(part) for part in zip(*batches, strict=True))
    for step in range(steps):
        lr = TRACKED_LR[1] if step >= LR_DROP_STEP else TRACKED_LR[0]
        tracker.maybe_record(step, lr=lr)
        # plain gradient descent: torch.optim's first step imports torch._dynamo (seconds)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for parameter, grad in zip(model.parameters(), grads, strict=True):
                parameter -= lr * grad
    return hessnb.open_run(path)
