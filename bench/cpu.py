"""CPU benchmark of hessnb's Hessian-vector products and SLQ against their targets.

Run ``python -m bench.cpu`` from the repository root (about 5-10 minutes on a 2-core CPU)
or ``python -m bench.cpu --quick`` (a tiny configuration, seconds). Everything is measured
in one process, side by side on the same model and data, and printed as one table whose
rows carry the measured value, the target and pass / miss:

- one full-dataset HVP (``op.matvec``) in units of one full-dataset gradient;
- Lanczos overhead: wall time of a 90-step, one-probe ``hessnb.spectrum`` over the time its
  own 90 operator calls took;
- 8 probes batched (``spectrum(probes=8)``) over 8 single-probe runs (the single-probe
  run is timed before and after the batched one, and their mean taken);
- per HVP backend (``HessianOperator(hvp=...)``): seconds of a block of 1 and of 8
  vectors, and the relative difference of its products from double backward's;
- accuracy against the exact spectrum of a ~5k-parameter network (``op.dense()`` in float64
  and ``eigvalsh``): Wasserstein-1 distance and lambda_max error (:mod:`bench.accuracy`);
- the same 90-step, one-probe density with ``hessian-eigenthings`` and ``curvlinops`` (only
  when they are installed; they are never dependencies of hessnb), time and accuracy;
  hessnb's 90-step run is timed again after theirs and the mean of its two runs compared.

Timings are minima over interleaved repeats (:func:`bench.common.interleaved_times`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.accuracy import accuracy_rows, comparison_rows
from bench.common import (
    BackendTiming,
    Batches,
    BenchConfig,
    CountingOperator,
    Row,
    check,
    compare_backends,
    digits_batches,
    digits_cnn,
    fit,
    format_table,
    interleaved_times,
    machine_name,
    make_parser,
    override,
    timed,
)
from hessnb import SLQSettings
from hessnb.hessian.hvp import AUTO_BACKEND, HVP_BACKENDS
from hessnb.hessian.operator import HessianOperator
from hessnb.slq import spectrum

__all__ = [
    "CpuConfig",
    "backend_rows",
    "cache_state",
    "main",
    "profile_hvp",
    "run_benchmark",
]


@dataclass
class CpuConfig(BenchConfig):
    """Sizes and settings of one CPU benchmark run.

    ``slq.lanczos_steps`` are the steps of the timed single-probe runs and of the accuracy
    runs; ``slq.probes`` the probes of the batched row.

    Attributes
    ----------
    widths : tuple of int
        ``(conv1 channels, conv2 channels, hidden units)`` of the timed CNN.
    small_widths : tuple of int
        The same for the network whose exact spectrum is computed (~5k parameters).
    n_examples : int or None
        Digits images used (None: all 1797).
    batch_size : int
        Examples per batch.
    batched_steps : int
        Lanczos steps of the batched-probes row (kept short to bound the run time).
    repeats : int
        Interleaved repeats of the HVP and gradient timings.
    accuracy_seeds : int
        Probe seeds averaged in the accuracy rows.
    libraries : bool
        Include hessian-eigenthings and curvlinops when installed.
    accuracy : bool
        Run the accuracy and library rows (False: speed rows only).
    backends : tuple of str
        HVP backends timed side by side (``hessnb.hessian.hvp.HVP_BACKENDS``; ``"compile"``
        spends minutes compiling on a 2-core CPU).
    """

    slq: SLQSettings = field(default_factory=lambda: SLQSettings(probes=8, top_k=1))
    widths: tuple[int, int, int] = (32, 64, 64)
    small_widths: tuple[int, int, int] = (4, 8, 9)
    n_examples: int | None = None
    batch_size: int = 512
    batched_steps: int = 20
    repeats: int = 5
    accuracy_seeds: int = 8
    libraries: bool = True
    accuracy: bool = True
    backends: tuple[str, ...] = HVP_BACKENDS

    @classmethod
    def quick(cls) -> CpuConfig:
        """A tiny configuration that runs in seconds (smoke tests, not figures).

        One thread: on a loaded machine, tiny problems spend most of their time in
        OpenMP spin-waiting with more.
        """
        return cls(
            slq=SLQSettings(lanczos_steps=10, probes=8, top_k=1),
            threads=1,
            widths=(4, 8, 16),
            small_widths=(2, 4, 4),
            n_examples=160,
            batch_size=64,
            batched_steps=4,
            repeats=2,
            accuracy_seeds=2,
            backends=("double-backward", "forward-over-reverse"),
        )


def cache_state(op: HessianOperator) -> str:
    """The graph cache as a note: ``"off"``, ``"gave up"`` or the MiB it holds."""
    info = op.graph_cache_info()
    if not info["enabled"]:
        return "off"
    return "gave up" if info["gave_up"] else f"{info['bytes'] / 2**20:.0f} MiB"


def profile_hvp(model: nn.Module, batches: Batches, repeats: int = 3) -> dict[str, float]:
    """Seconds of the parts of one full-dataset HVP by double backward, per pass.

    Returns forward, first backward with ``create_graph=True``, second backward, and a plain
    gradient (forward + backward) for reference; minima over ``repeats`` rounds.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    tangent = [torch.randn_like(p) for p in params]
    forward, first, second = "forward", "first backward (create_graph)", "second backward"
    best = dict.fromkeys((forward, first, second), math.inf)
    for _ in range(repeats):
        totals = dict.fromkeys(best, 0.0)

        def part(name: str, fn: Callable[[], Any], totals: dict[str, float] = totals) -> Any:
            out, seconds = timed(fn)
            totals[name] += seconds
            return out

        for x, y in batches:
            loss = part(forward, lambda x=x, y=y: F.cross_entropy(model(x), y))
            grads = part(
                first, lambda loss=loss: torch.autograd.grad(loss, params, create_graph=True)
            )
            part(second, lambda grads=grads: torch.autograd.grad(grads, params, tangent))
        best = {k: min(best[k], totals[k]) for k in best}

    def gradient() -> None:
        for x, y in batches:
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

    best["gradient (forward + backward)"] = min(interleaved_times({"g": gradient}, repeats)["g"])
    return best


def _speed_rows(
    op: HessianOperator, fresh: HessianOperator, config: CpuConfig
) -> tuple[list[Row], float]:
    """HVP / gradient, Lanczos overhead and batched probes; also the 1-probe SLQ seconds.

    ``op`` is the operator as users get it (graph cache on where it fits); ``fresh`` has the
    cache off, so its gradient is a genuine pass over the data (a cached operator returns
    the gradient kept with its graphs) and its HVP shows the cost without the cache.
    """
    v = torch.randn(op.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with op.reuse_graphs():  # as inside hessnb.spectrum: one run's graphs are reused
        times = interleaved_times(
            {"hvp": lambda: op.matvec(v), "grad": fresh.gradient, "cold": lambda: fresh.matvec(v)},
            config.repeats,
        )
        cached = cache_state(op)
    hvp, grad, cold = (min(times[k]) for k in ("hvp", "grad", "cold"))
    rows = [
        check(
            "HVP / gradient",
            hvp / grad,
            2.2,
            f"op.matvec {hvp * 1e3:.0f} ms (graph cache: {cached}), "
            f"gradient {grad * 1e3:.0f} ms (min of {config.repeats} interleaved)",
        ),
        Row(
            "HVP without graph cache / gradient",
            cold / grad,
            note=f"op.matvec {cold * 1e3:.0f} ms with graph_cache=False",
        ),
    ]

    def slq(steps: int, probes: int) -> tuple[float, list[float]]:
        counting = CountingOperator(op)
        settings = config.slq.replace(lanczos_steps=steps, probes=probes)
        seconds = timed(lambda: spectrum(counting, settings=settings, progress=False))[1]
        return seconds, counting.calls

    steps, probes, short = config.slq.lanczos_steps, config.slq.probes, config.batched_steps
    single, calls = slq(steps, 1)
    rows.append(
        check(
            f"SLQ {steps} steps / {steps} HVPs",
            single / sum(calls),
            1.03,
            f"wall {single:.1f} s over its own {len(calls)} op.matmat calls "
            f"({sum(calls):.1f} s); {single / (steps * hvp):.3f} against {steps} x the min HVP",
        )
    )
    before, many, after = slq(short, 1)[0], slq(short, probes)[0], slq(short, 1)[0]
    one = (before + after) / 2  # the mean of the runs either side cancels a linear load drift
    rows.append(
        check(
            f"{probes} probes batched / {probes} x 1 probe",
            many / (probes * one),
            0.6,
            f"{short} Lanczos steps, hvp={op.hvp}: {probes} probes {many:.1f} s, 1 probe "
            f"{before:.1f} s before and {after:.1f} s after",
        )
    )
    return rows, single


def backend_rows(timings: Sequence[BackendTiming], device: str = "cpu") -> list[Row]:
    """One row per HVP backend, and how ``hvp="auto"`` compares with the fastest.

    Each backend's row checks the relative difference of its products from double
    backward's (<= 1e-6) and notes its block times; the last row is the block time of the
    backend ``"auto"`` picks on ``device`` over the fastest one's (1 when it is the fastest).
    """
    if not timings:
        return []
    base = timings[0].one
    rows = [
        check(
            f"hvp={t.name}: rel. difference from double-backward",
            t.agreement,
            1e-6,
            f"block of 1: {t.one * 1e3:.0f} ms, of {t.block}: {t.wide * 1e3:.0f} ms "
            f"({t.wide / t.block * 1e3:.0f} ms per vector, {t.wide / t.block / base:.2f} x "
            f"{timings[0].name} block of 1); {t.block} / {t.block} x 1: {t.lockstep:.2f}; "
            f"first calls {t.first:.1f} s",
        )
        for t in timings
    ]
    by_name = {t.name: t for t in timings}
    auto = by_name.get(AUTO_BACKEND[device])
    if auto is None:
        return rows
    fast_one = min(timings, key=lambda t: t.one)
    fast_wide = min(timings, key=lambda t: t.wide)
    rows.append(
        Row(
            f"hvp='auto' / fastest backend, block of {auto.block}",
            auto.wide / fast_wide.wide,
            note=f"auto = {auto.name} on {device}; fastest: {fast_one.name} (block of 1), "
            f"{fast_wide.name} (block of {auto.block})",
        )
    )
    return rows


def run_benchmark(config: CpuConfig, log: Callable[[str], None] = print) -> list[Row]:
    """Run every row of the benchmark and return the table's rows."""
    config.apply_threads()
    batches = digits_batches(config.n_examples, config.batch_size)
    model = digits_cnn(config.widths)
    op = HessianOperator(model, F.cross_entropy, batches)
    fresh = HessianOperator(model, F.cross_entropy, batches, graph_cache=False)
    log(
        f"timed CNN: {op.n_params:,} parameters, {op.n_examples} examples in "
        f"{len(batches)} batches of <= {config.batch_size}; torch {torch.__version__}, "
        f"{machine_name(torch.device('cpu'))}"
    )
    rows, seconds = _speed_rows(op, fresh, config)
    if config.backends:
        log(f"HVP backends next: {', '.join(config.backends)}")
        timings = compare_backends(
            model, batches, config.backends, block=config.slq.probes, repeats=config.repeats
        )
        rows += backend_rows(timings)
    if not config.accuracy:
        return rows
    log("speed rows done; accuracy and other libraries next")
    small = digits_cnn(config.small_widths, seed=1)
    fit(small, batches)
    accuracy, results = accuracy_rows(
        small,
        batches,
        config.slq.replace(probes=1),
        config.accuracy_seeds,
        (model, batches) if config.libraries else None,
    )
    settings = config.slq.replace(probes=1)
    again = timed(lambda: spectrum(op, settings=settings, progress=False))[1]
    results["hessnb"].seconds = (seconds + again) / 2
    timing = Row(
        f"hessnb SLQ {settings.lanczos_steps} steps, after / before the libraries",
        again / seconds,
        note=f"{seconds:.1f} s before, {again:.1f} s after; their mean is compared below",
    )
    return [*rows, *accuracy, timing, *comparison_rows(results)]


def _parse(argv: Sequence[str] | None) -> Any:
    parser = make_parser("bench.cpu", __doc__)
    parser.add_argument("--quick", action="store_true", help="tiny configuration (seconds)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of HVP / gradient")
    parser.add_argument(
        "--steps",
        dest="lanczos_steps",
        metavar="STEPS",
        type=int,
        help="Lanczos steps of the 1-probe rows (90)",
    )
    parser.add_argument("--batched-steps", type=int, help="Lanczos steps of the 8-probe row")
    parser.add_argument("--accuracy-seeds", type=int, help="probe seeds in accuracy rows")
    parser.add_argument(
        "--no-libraries", action="store_true", help="skip hessian-eigenthings and curvlinops"
    )
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only the HVP, Lanczos-overhead and batched-probe rows",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also time the parts of one HVP (forward, backwards)"
    )
    parser.add_argument(
        "--backends",
        nargs="*",
        choices=HVP_BACKENDS,
        help=f"HVP backends to time (default: all of {', '.join(HVP_BACKENDS)}; "
        "none: skip those rows)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the table and returns 0."""
    args = _parse(argv)
    config = override(
        CpuConfig.quick() if args.quick else CpuConfig(),
        repeats=args.repeats,
        lanczos_steps=args.lanczos_steps,
        batched_steps=args.batched_steps,
        accuracy_seeds=args.accuracy_seeds,
        threads=args.threads,
        libraries=not args.no_libraries,
        accuracy=not args.speed_only,
        backends=None if args.backends is None else tuple(args.backends),
    )
    rows = run_benchmark(config, lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(rows))
    if args.profile:
        parts = profile_hvp(
            digits_cnn(config.widths),
            digits_batches(config.n_examples, config.batch_size),
            config.repeats,
        )
        unit = parts["gradient (forward + backward)"]
        print("\nparts of one HVP by double backward (min per full pass):")
        for name, seconds in parts.items():
            print(f"  {name:32s} {seconds * 1e3:8.1f} ms  {seconds / unit:5.2f} gradients")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
