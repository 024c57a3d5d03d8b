"""Warm-started top-k eigenpairs through training against a cold 90-step Lanczos record.

The demo's digits CNN (``small_cnn(channels=(8, 16), pool=True)``, no batch norm, 1,418
parameters; SGD, momentum 0.9, lr 0.05, batch 128, as ``hessnb.reference.demo``) is
trained for ``--steps`` steps and its parameters kept at every step. Dense records run
:func:`hessnb.linalg.topk.top_eigenpairs` every ``N`` steps (``--every``), each
warm-started from the previous record's vectors, with every method (``--methods``) and
``k`` (``--k``). A cold 90-step, one-probe Lanczos record
(``hessnb.slq.estimate(op, SLQSettings(lanczos_steps=90, probes=1, top_k=max k))``) at
the check steps (``--checks``) is the reference for lambda_1..lambda_k and the cost
baseline (90 HVPs and its wall time). The Hessian is over all 1,797 digits in one batch
(without batch norm the batch split does not change it).

Records run in windows of ``--window`` records ending at each check step. The first
record of a window is computed once (cold, ``DEFAULT_METHOD``, tol 1e-6) and every method
warm-starts from the same vectors, record to record along the window; ``--window 0``
tracks from step 0 to the end in one chain. Per (k, N, method) the table gives the
largest relative error of lambda_1..lambda_k over the check steps (target 1e-3; step 0
has no warm record), mean HVPs, operator passes and seconds per warm record against the
full record's, and the HVPs of a cold start at the last check step. The load of a shared
machine drifts over a run, so the full record's time is carried over to each
configuration in units of one single-column HVP, timed just before it.

Run from the repository root: ``python -m bench.topk`` (the defaults, cut to fit about
10 minutes on 2 CPU cores with ``--threads 1``: two check steps, windows of two records);
``python -m bench.topk --window 0 --every 10 --checks 0 50 100 150 200 250 300`` tracks
the whole run (about 35 minutes for three methods).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.common import (
    Row,
    check,
    format_table,
    make_parser,
    markdown_table,
    synchronize,
    timed,
)
from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.linalg.topk import DEFAULT_METHOD, METHODS, TopEigen, top_eigenpairs
from hessnb.reference import data, models
from hessnb.slq import estimate

__all__ = [
    "Chain",
    "CountedMatmat",
    "Reference",
    "digits_run",
    "main",
    "record_steps",
    "references",
    "track",
]

#: Accuracy target: lambda_1..lambda_k within this relative error of the cold record.
TARGET = 1e-3
#: Operator products of the cold full record (one probe, 90 Lanczos steps).
FULL_HVPS = 90
#: Residual tolerance of the shared first record of each window.
PRIOR_TOL = 1e-6


@dataclass
class Reference:
    """The cold 90-step Lanczos record at one step: top values and wall time."""

    values: np.ndarray
    seconds: float


@dataclass
class Chain:
    """Per-record costs and check-step errors of one (k, N, method).

    Attributes
    ----------
    hvps, passes, seconds : list
        Per warm record: operator products, ``matmat`` calls and wall time.
    errors : dict of step to float
        Largest relative error of lambda_1..lambda_k against the reference at that step.
    unconverged : int
        Records that stopped at the budget.
    records : int
    """

    hvps: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    errors: dict[int, float] = field(default_factory=dict)
    unconverged: int = 0
    records: int = 0


class CountedMatmat:
    """``op.matmat`` that counts its calls (operator passes)."""

    def __init__(self, op: HessianOperator) -> None:
        self.op, self.calls = op, 0

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V``."""
        self.calls += 1
        return self.op.matmat(vectors)


def digits_run(
    steps: int, seed: int = 0
) -> tuple[nn.Module, list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Train the demo CNN on digits; its flat parameters at steps ``0..steps``.

    Returns
    -------
    model : nn.Module
        The network (its parameters are those of the last step).
    snapshots : list of torch.Tensor, each shape (n_params,)
        Parameters before update ``s`` (so ``snapshots[s]`` is step ``s``).
    batches : list of (inputs, targets)
        All 1,797 digits as one fixed batch, for the Hessian.
    """
    dataset = data.digits(size=1797)
    inputs, targets = dataset.tensors
    torch.manual_seed(seed)
    model = models.small_cnn(channels=(8, 16), pool=True)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=generator)
    snapshots, cursor = [], 0
    for step in range(steps + 1):
        snapshots.append(nn.utils.parameters_to_vector(model.parameters()).detach().clone())
        if step == steps:
            break
        if cursor + 128 > len(order):
            order, cursor = torch.randperm(len(targets), generator=generator), 0
        rows = order[cursor : cursor + 128]
        cursor += 128
        optimiser.zero_grad()
        F.cross_entropy(model(inputs[rows]), targets[rows]).backward()
        optimiser.step()
    return model, snapshots, [(inputs, targets)]


def record_steps(every: int, checks: Sequence[int], window: int, steps: int) -> list[list[int]]:
    """Windows of record steps: ``window`` records every ``every`` steps ending at each check.

    ``window = 0``: one window ``0, every, 2 every, ...`` up to ``steps`` (it must contain
    the checks).
    """
    if window == 0:
        return [list(range(0, steps + 1, every))]
    return [[s for s in range(c - (window - 1) * every, c + 1, every) if s >= 0] for c in checks]


def references(
    op: HessianOperator, load: Callable[[int], None], checks: Sequence[int], k: int
) -> dict[int, Reference]:
    """The cold 90-step, one-probe Lanczos record at each check step."""
    settings = SLQSettings(lanczos_steps=FULL_HVPS, probes=1, top_k=k)
    out = {}
    for step in checks:
        load(step)
        est, seconds = timed(lambda: estimate(op, settings, keep_vectors=True))
        out[step] = Reference(np.asarray(est.top_eigenvalues), seconds)
    return out


def hvp_seconds(op: HessianOperator, repeats: int = 3) -> float:
    """Least wall time of a one-column ``op.matmat`` (graphs cached), of ``repeats``.

    Records and the full record are compared at the same machine load through it: the
    load of a shared machine changes over the minutes a benchmark runs.
    """
    vector = torch.randn(op.shape[0], 1, dtype=torch.float64, device=op.device)
    with op.reuse_graphs():
        op.matmat(vector)  # builds the cached graphs
        return min(timed(lambda: op.matmat(vector), op.device)[1] for _ in range(repeats))


def solve(
    op: HessianOperator,
    k: int,
    method: str,
    start: torch.Tensor | None,
    tol: float,
    max_matvecs: int,
    seed: int,
) -> tuple[TopEigen, float, int]:
    """One record's top-k at the loaded step: the pairs, wall time and operator passes."""
    counted = CountedMatmat(op)
    with op.reuse_graphs():
        synchronize(op.device)
        clock = time.perf_counter()
        top = top_eigenpairs(
            counted,
            op.shape[0],
            k,
            start=start,
            method=method,
            tol=tol,
            max_matvecs=max_matvecs,
            generator=torch.Generator().manual_seed(seed),
            device=op.device,
        )
        synchronize(op.device)
        seconds = time.perf_counter() - clock
    return top, seconds, counted.calls


def priors(
    op: HessianOperator, load: Callable[[int], None], windows: Sequence[Sequence[int]], k: int
) -> list[torch.Tensor]:
    """Vectors at the first step of each window (cold, tol 1e-6), shared by all methods."""
    out = []
    for steps in windows:
        load(steps[0])
        out.append(
            solve(op, k, DEFAULT_METHOD, None, PRIOR_TOL, 10 * FULL_HVPS, steps[0])[0].vectors
        )
    return out


def track(
    op: HessianOperator,
    load: Callable[[int], None],
    windows: Sequence[Sequence[int]],
    starts: Sequence[torch.Tensor],
    k: int,
    method: str,
    refs: dict[int, Reference],
    tol: float,
    max_matvecs: int,
) -> Chain:
    """Warm-started records along each window after its first step; errors at the checks."""
    chain = Chain()
    for steps, start in zip(windows, starts, strict=True):
        for step in steps[1:]:
            load(step)
            top, seconds, passes = solve(op, k, method, start, tol, max_matvecs, step)
            chain.records += 1
            chain.unconverged += int(not top.converged)
            chain.hvps.append(top.matvecs)
            chain.passes.append(passes)
            chain.seconds.append(seconds)
            if step in refs:
                chain.errors[step] = relative_error(top.values, refs[step].values[:k])
            start = top.vectors
    return chain


def relative_error(values: np.ndarray, exact: np.ndarray) -> float:
    """Largest ``|value - exact| / |exact|`` over the pairs."""
    return float(np.max(np.abs(values - exact) / np.abs(exact)))


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = make_parser("bench.topk", __doc__ or "")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps (300)")
    parser.add_argument("--every", type=int, nargs="+", default=[10, 5, 1], help="N (10 5 1)")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 5], help="k (10 5)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--checks", type=int, nargs="+", default=[150, 300], help="reference steps (150 300)"
    )
    parser.add_argument(
        "--window", type=int, default=2, help="records per window, >= 2 (2; 0: all)"
    )
    parser.add_argument("--tol", type=float, default=1e-4, help="residual tolerance (1e-4)")
    parser.add_argument(
        "--max-matvecs", type=int, default=FULL_HVPS, help="HVP budget per record (90)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    if max(args.checks) > args.steps or min(args.checks) < 0:
        parser.error(f"--checks must lie in 0..{args.steps}")
    if args.window == 1 or args.window < 0:
        parser.error("--window must be 0 (one chain) or >= 2 (a first record, then warm ones)")
    args.checks = sorted(args.checks)

    clock = time.perf_counter()
    model, snapshots, batches = digits_run(args.steps)
    op = HessianOperator(model, F.cross_entropy, batches)

    params = list(model.parameters())
    sizes = [p.numel() for p in params]

    def load(step: int) -> None:
        with torch.no_grad():  # in place: the operator sees a new parameter version
            for param, value in zip(params, snapshots[step].split(sizes), strict=True):
                param.copy_(value.view_as(param))

    load(args.checks[-1])
    before = hvp_seconds(op)
    refs = references(op, load, args.checks, max(args.k))
    full_seconds = _mean([r.seconds for r in refs.values()])
    # The full record's time in units of one HVP, so that each configuration's records
    # compare with a full record at the load of their own minutes.
    full_in_hvps = full_seconds / (0.5 * (before + hvp_seconds(op)))
    rows = [
        Row(
            "full record: cold 90-step Lanczos",
            full_seconds,
            note=f"s per record (mean of {len(refs)}), {FULL_HVPS} HVPs, 90 passes, "
            f"{full_in_hvps:.0f} one-column HVP times; {op.shape[0]:,} params, "
            f"{args.steps} SGD steps",
        )
    ]
    table = []
    last = args.checks[-1]
    for k in args.k:
        load(last)
        cold = {}
        for method in args.methods:
            top, seconds, _ = solve(op, k, method, None, args.tol, args.max_matvecs, last)
            cold[method] = (top.matvecs, relative_error(top.values, refs[last].values[:k]))
        for every in args.every:
            windows = record_steps(every, args.checks, args.window, args.steps)
            starts = priors(op, load, windows, k)
            for method in args.methods:
                load(last)
                full_now = full_in_hvps * hvp_seconds(op)
                chain = track(
                    op, load, windows, starts, k, method, refs, args.tol, args.max_matvecs
                )
                print(f"k={k} N={every} {method}: {chain.records} records", file=sys.stderr)
                worst = max(chain.errors.values()) if chain.errors else math.nan
                hvps, seconds = _mean(chain.hvps), _mean(chain.seconds)
                note = (
                    f"{hvps:.1f} HVPs ({hvps / FULL_HVPS:.2f}x), {_mean(chain.passes):.1f} "
                    f"passes, {seconds:.2f} s ({seconds / full_now:.2f}x) per warm record; "
                    f"cold start {cold[method][0]} HVPs (error {cold[method][1]:.1e}); "
                    f"{chain.records - chain.unconverged}/{chain.records} converged"
                )
                rows.append(check(f"k={k} N={every} {method}: max rel err", worst, TARGET, note))
                table.append(
                    [
                        str(k),
                        str(every),
                        method,
                        f"{hvps:.1f}",
                        f"{_mean(chain.passes):.1f}",
                        f"{seconds:.2f}",
                        f"{seconds / full_now:.2f}",
                        f"{worst:.1e}",
                        f"{chain.records - chain.unconverged}/{chain.records}",
                        f"{cold[method][0]}",
                    ]
                )
    print(format_table(rows))
    print()
    header = [
        "k",
        "N",
        "method",
        "HVPs / record",
        "passes / record",
        "s / record",
        "x full time",
        "max rel err",
        "converged",
        f"cold HVPs (step {last})",
    ]
    print(markdown_table(header, table, "rrlrrrrrrr"))
    print(
        f"\nfull record: {FULL_HVPS} HVPs, {full_seconds:.2f} s; checks at steps "
        f"{args.checks}, windows of {args.window or 'all'} records, tol {args.tol:g}, "
        f"budget {args.max_matvecs} HVPs; {time.perf_counter() - clock:.0f} s in all"
    )
    return rows


if __name__ == "__main__":
    main()
