"""Accuracy of SLQ densities: against an exact spectrum, other libraries, float64 HVPs.

- :func:`accuracy_rows` (CPU benchmark): on a network small enough for
  ``HessianOperator(..., dtype=float64).dense()`` and ``numpy.linalg.eigvalsh``, hessnb's
  and each installed library's one-probe quadrature is compared with the exact spectrum
  over several probe seeds; the libraries are timed on the benchmark's large network.
  :func:`comparison_rows` sets hessnb's time against theirs.
- :func:`density_effect` (GPU benchmark): the density with reduced-precision HVPs
  against the density with float64 HVPs.

Errors are :func:`bench.common.spectral_errors`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench import libraries
from bench.common import (
    Batches,
    Quadrature,
    Row,
    check,
    fit,
    markdown_table,
    spectral_errors,
    split_batches,
    timed,
)
from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.hessian.precision import configure_backends, prepare_model
from hessnb.linalg.quadrature import wasserstein_bound
from hessnb.reference import data, models
from hessnb.slq import estimate

__all__ = [
    "LAMBDA_FLOOR",
    "Result",
    "accuracy_rows",
    "comparison_rows",
    "density_effect",
    "hessnb_quadrature",
]

#: lambda_max relative errors below this (float32 HVP rounding) count as equal.
LAMBDA_FLOOR = 1e-5


@dataclass
class Result:
    """Seconds of the timed SLQ and per-seed ``(W1, lambda_max error)`` of one method.

    Attributes
    ----------
    seconds : float
        Wall time of one SLQ run on the timed network (NaN until measured).
    errors : array, shape (seeds, 2)
        Relative W1 and lambda_max error per probe seed.
    """

    seconds: float
    errors: np.ndarray

    @property
    def w1(self) -> float:
        """Mean relative W1 over the seeds."""
        return float(self.errors[:, 0].mean())

    @property
    def top(self) -> float:
        """Mean lambda_max relative error over the seeds."""
        return float(self.errors[:, 1].mean())

    def stderr(self, column: int) -> float:
        """Standard error of the mean of one error column (0 with one seed)."""
        seeds = self.errors.shape[0]
        return float(self.errors[:, column].std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0

    def describe(self, column: int) -> str:
        """``"mean ... ± ... (se)"`` of one error column."""
        return f"mean {self.errors[:, column].mean():.3g} ± {self.stderr(column):.2g} (se)"

    def as_accurate_as(self, other: Result) -> bool:
        """Mean errors no worse than ``other``'s beyond two standard errors.

        lambda_max errors below :data:`LAMBDA_FLOOR` (the float32 HVP rounding level)
        count as equal.
        """
        for column, floor in ((0, 0.0), (1, LAMBDA_FLOOR)):
            mine, theirs = self.errors[:, column].mean(), other.errors[:, column].mean()
            slack = 2 * math.hypot(self.stderr(column), other.stderr(column))
            if mine > max(theirs + slack, floor):
                return False
        return True


def hessnb_quadrature(op: HessianOperator, settings: SLQSettings) -> Quadrature:
    """Nodes and weights of :func:`hessnb.slq.estimate`, each ``(probes, lanczos_steps)``."""
    est = estimate(op, settings)
    return est.nodes, est.weights


def accuracy_rows(
    small: nn.Module,
    batches: Batches,
    settings: SLQSettings,
    seeds: int,
    timed_on: tuple[nn.Module, Batches] | None,
) -> tuple[list[Row], dict[str, Result]]:
    """Accuracy rows on ``small``; library timings on the timed network.

    Parameters
    ----------
    small : nn.Module
        A network whose exact spectrum is computed (a few thousand parameters).
    batches : list of (inputs, targets)
        Its data.
    settings : SLQSettings
        Lanczos steps and probes of every method's run (``seed`` is replaced by
        ``0 .. seeds - 1``).
    seeds : int
        Probe seeds averaged.
    timed_on : (model, batches) or None
        Where the libraries are timed; None leaves the libraries out.

    Returns
    -------
    rows : list of Row
    results : dict of method name to Result
        hessnb's ``seconds`` stay NaN (the caller times it).
    """
    op = HessianOperator(small, F.cross_entropy, batches)
    exact = np.linalg.eigvalsh(
        HessianOperator(small, F.cross_entropy, batches, dtype=torch.float64).dense().numpy()
    )
    steps = settings.lanczos_steps
    methods: dict[str, Callable[[int], Quadrature]] = {
        "hessnb": lambda seed: hessnb_quadrature(op, settings.replace(seed=seed))
    }
    found, missing = (
        libraries.set_up(small, batches, steps) if timed_on else ([], list(libraries.LIBRARIES))
    )
    methods.update({lib.name: lib.run for lib in found})
    results = {
        name: Result(math.nan, np.array([spectral_errors(run(s), exact) for s in range(seeds)]))
        for name, run in methods.items()
    }
    ours = results["hessnb"]
    bound = wasserstein_bound(steps, settings.probes, op.n_params, 0.95)
    where = f"{op.n_params:,}-param net, {steps} steps, {settings.probes} probe, {seeds} seeds"
    rows = [
        check(
            "hessnb W1 / spectral range",
            ours.w1,
            round(bound, 3),
            f"{ours.describe(0)}; {where}; target: a-priori bound (95 %)",
        ),
        check("hessnb lambda_max rel. error", ours.top, 1e-3, f"{ours.describe(1)}; {where}"),
    ]
    for lib in libraries.set_up(*timed_on, steps)[0] if timed_on else []:
        result = results[lib.name]
        result.seconds = timed(lambda lib=lib: lib.run(0))[1]
        note = f"{result.describe(0)}; {lib.note}"
        rows.append(Row(f"{lib.name} W1 / spectral range", result.w1, note=note))
        rows.append(Row(f"{lib.name} lambda_max rel. error", result.top, note=result.describe(1)))
    why = (
        "not installed: pip install it to include it (never a hessnb dependency)"
        if timed_on
        else "left out (--no-libraries)"
    )
    rows += [Row(f"{name} (skipped)", math.nan, status="skip", note=why) for name in missing]
    return rows, results


def comparison_rows(results: dict[str, Result]) -> list[Row]:
    """hessnb's SLQ time over each library's, and the verdict against the fastest.

    The verdict row misses when hessnb is slower than the target or less accurate than the
    fastest library (:meth:`Result.as_accurate_as`).
    """
    ours = results["hessnb"]
    others = {k: v for k, v in results.items() if k != "hessnb"}
    rows = [
        Row(
            f"hessnb / {name} SLQ time",
            ours.seconds / other.seconds,
            note=f"{name} {other.seconds:.1f} s, hessnb {ours.seconds:.1f} s",
        )
        for name, other in others.items()
    ]
    name = "hessnb / fastest library SLQ time"
    if not others:
        return [*rows, Row(name, math.nan, "<= 0.75", "skip", "no other library installed")]
    fastest = min(others, key=lambda k: others[k].seconds)
    accurate = ours.as_accurate_as(others[fastest])
    row = check(
        name,
        ours.seconds / others[fastest].seconds,
        0.75,
        f"fastest: {fastest}; accuracy equal or better: {'yes' if accurate else 'no'}",
    )
    if not accurate:
        row.status = "miss"
    return [*rows, row]


def density_effect(
    device: torch.device, precisions: Sequence[str], steps: int = 60, train_steps: int = 300
) -> str:
    """Effect of reduced-precision HVPs on the SLQ density, against float64 HVPs.

    A small CNN with batch norm (``hessnb.reference.models.small_cnn``, 34k parameters)
    trained for ``train_steps`` full-batch Adam steps on the 1,797 digits; one probe,
    ``steps`` Lanczos steps, the same seed for every precision. Reports the Wasserstein-1
    distance between the quadrature measures relative to the spectral range, and the
    relative errors of the top Ritz value and of the trace estimate.
    """
    x, y = data.digits().tensors
    torch.manual_seed(0)
    model = models.small_cnn(bn=True)
    batches = split_batches(x, y, 512)
    fit(model, batches, train_steps, lr=3e-3)
    batches = [(xb.to(device), yb.to(device)) for xb, yb in batches]
    settings = SLQSettings(lanczos_steps=steps, probes=1, top_k=1, seed=0)
    results = {}
    for precision in ("fp64", *precisions):
        arithmetic = "fp32" if precision == "fp64" else precision
        configure_backends(device, arithmetic)
        prepared = prepare_model(copy.deepcopy(model), device, arithmetic, False)
        dtype = torch.float64 if precision == "fp64" else None
        op = HessianOperator(prepared, F.cross_entropy, batches, dtype=dtype)
        results[precision] = timed(lambda op=op: estimate(op, settings), device)
    exact = results["fp64"][0]
    exact_trace = float(exact.traces.mean())
    cells = []
    for precision, (est, seconds) in results.items():
        w1, top = spectral_errors((est.nodes, est.weights), (exact.nodes, exact.weights))
        trace = abs(float(est.traces.mean()) / exact_trace - 1)
        cells.append((precision, f"{w1:.1e}", f"{top:.1e}", f"{trace:.1e}", f"{seconds:.1f}"))
    header = (
        "HVP precision",
        "W1 / range vs fp64",
        "top eigenvalue rel. error",
        "trace rel. error",
        "seconds",
    )
    return (
        f"small CNN with BN on digits ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters), {steps} Lanczos steps, 1 probe, top eigenvalue "
        f"{float(exact.top_eigenvalues[0]):.4g}, trace {exact_trace:.4g}:\n"
        + markdown_table(header, cells, "lrrrr")
    )
