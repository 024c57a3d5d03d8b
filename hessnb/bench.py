"""Benchmark of hessnb's Hessian-vector products and SLQ against their targets (issue 2).

Run ``python -m hessnb.bench`` (about 5-10 minutes on a 2-core CPU) or
``python -m hessnb.bench --quick`` (a tiny configuration, seconds). Everything is measured in
one process, side by side on the same model and data, and printed as one table whose rows
carry the measured value, the target and pass / miss:

- one full-dataset HVP (``op.matvec``) in units of one full-dataset gradient;
- Lanczos overhead: wall time of a 90-step, one-probe ``hessnb.spectrum`` over the time its
  own 90 operator calls took;
- 8 probes batched (``spectrum(probes=8)``) over 8 single-probe runs;
- accuracy against the exact spectrum of a ~5k-parameter network (``op.dense()`` in float64
  and ``eigvalsh``): Wasserstein-1 distance and lambda_max error;
- the same 90-step, one-probe density with ``hessian-eigenthings`` and ``curvlinops`` (only
  when they are installed; they are never dependencies of hessnb), time and accuracy.

Timings are minima over interleaved repeats: on a shared machine the minimum is the run
least disturbed by other processes, and interleaving exposes numerator and denominator of a
ratio to the same conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import nn
from torch.nn import functional as F

from hessnb.operators import HessianOperator
from hessnb.quadrature import wasserstein_bound
from hessnb.spectrum import spectrum

__all__ = [
    "BenchConfig",
    "Row",
    "digits_batches",
    "digits_cnn",
    "format_table",
    "interleaved_times",
    "main",
    "profile_hvp",
    "run_benchmark",
    "spectral_errors",
]

Batches = list[tuple[torch.Tensor, torch.Tensor]]
#: Nodes and weights of one or more probes, each ``(probes, m)`` (NaN / 0 padding allowed).
Quadrature = tuple[np.ndarray, np.ndarray]

#: lambda_max relative errors below this (float32 HVP rounding) count as equal.
LAMBDA_FLOOR = 1e-5
LIBRARIES = {"hessian-eigenthings": "hessian_eigenthings", "curvlinops": "curvlinops"}


# ----------------------------------------------------------------------------- configuration
@dataclass
class BenchConfig:
    """Sizes and settings of one benchmark run.

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
    steps : int
        Lanczos steps of the timed single-probe runs and of the accuracy runs.
    batched_steps : int
        Lanczos steps of the 8-probe row (kept short to bound the run time).
    probes : int
        Probes of the batched row.
    repeats : int
        Interleaved repeats of the HVP and gradient timings.
    accuracy_seeds : int
        Probe seeds averaged in the accuracy rows.
    accuracy : bool
        Run the accuracy and library rows (False: speed rows only).
    libraries : bool
        Include hessian-eigenthings and curvlinops when installed.
    threads : int or None
        ``torch.set_num_threads`` (None: leave torch's default).
    """

    widths: tuple[int, int, int] = (32, 64, 64)
    small_widths: tuple[int, int, int] = (4, 8, 9)
    n_examples: int | None = None
    batch_size: int = 512
    steps: int = 90
    batched_steps: int = 20
    probes: int = 8
    repeats: int = 5
    accuracy_seeds: int = 8
    libraries: bool = True
    accuracy: bool = True
    threads: int | None = None

    @classmethod
    def quick(cls) -> BenchConfig:
        """A tiny configuration that runs in seconds (smoke tests, not figures).

        One thread: on a loaded machine, tiny problems spend most of their time in
        OpenMP spin-waiting with more.
        """
        return cls(
            widths=(4, 8, 16),
            small_widths=(2, 4, 4),
            n_examples=160,
            batch_size=64,
            steps=10,
            batched_steps=4,
            probes=8,
            repeats=2,
            accuracy_seeds=2,
            threads=1,
        )


@dataclass
class Row:
    """One line of the result table.

    Attributes
    ----------
    name : str
        What is measured.
    value : float
        The measurement (NaN when skipped).
    target : str
        The target as text, e.g. ``"<= 2.2"`` (empty for information rows).
    status : str
        ``"pass"``, ``"miss"``, ``"info"`` or ``"skip"``.
    note : str
        How it was measured, or why it was skipped.
    """

    name: str
    value: float
    target: str = ""
    status: str = "info"
    note: str = ""


def _check(name: str, value: float, limit: float, note: str = "") -> Row:
    """A row that passes when ``value <= limit``."""
    status = "pass" if value <= limit else "miss"
    return Row(name, value, f"<= {limit:g}", status, note)


# ----------------------------------------------------------------------------- model and data
def digits_cnn(widths: Sequence[int], seed: int = 0) -> nn.Module:
    """Conv-ReLU-Conv-ReLU-Linear-ReLU-Linear for 8x8 digits, float32.

    ``widths=(32, 64, 64)`` gives 281,674 parameters, ``(4, 8, 9)`` gives 5,053.
    """
    c1, c2, hidden = widths
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def digits_batches(n_examples: int | None = None, batch_size: int = 512) -> Batches:
    """scikit-learn's bundled digits as fixed float32 batches ``(N, 1, 8, 8)``, in order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:n_examples], dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target[:n_examples], dtype=torch.int64)
    return list(zip(images.split(batch_size), labels.split(batch_size), strict=True))


def _fit(model: nn.Module, batches: Batches, steps: int = 150, lr: float = 1e-2) -> None:
    """A few full-batch Adam steps, so the spectrum has the outliers of a trained net."""
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()


# ----------------------------------------------------------------------------- timing helpers
def interleaved_times(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: bool = True
) -> dict[str, list[float]]:
    """Wall times of several callables, run round-robin ``repeats`` times.

    Parameters
    ----------
    fns : mapping of name to callable
        Functions of no arguments.
    repeats : int
        Rounds; each round calls every function once, in order.
    warmup : bool
        Call every function once, untimed, first.

    Returns
    -------
    dict of name to list of float
        Seconds of each call, ``repeats`` per name.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn)[1])
    return times


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@contextlib.contextmanager
def _count_matmat(op: HessianOperator) -> Iterator[list[float]]:
    """Record the seconds of each ``op.matmat`` call made inside the block."""
    calls: list[float] = []
    original = op.matmat

    def timed_matmat(vectors: torch.Tensor) -> torch.Tensor:
        out, seconds = _timed(lambda: original(vectors))
        calls.append(seconds)
        return out

    op.matmat = timed_matmat  # instance attribute shadows the method
    try:
        yield calls
    finally:
        del op.matmat


# ----------------------------------------------------------------------------- accuracy
def spectral_errors(quadrature: Quadrature, exact: np.ndarray) -> tuple[float, float]:
    """Wasserstein-1 distance and lambda_max error of SLQ quadrature against an exact spectrum.

    Parameters
    ----------
    quadrature : (nodes, weights)
        Arrays of shape ``(probes, m)``; the weights of each probe sum to one and are
        averaged over probes. NaN nodes (past a breakdown) are dropped.
    exact : array, shape (n,)
        Exact eigenvalues, each with weight ``1/n``.

    Returns
    -------
    w1 : float
        ``W1`` divided by the exact spectral range ``lambda_max - lambda_min``.
    lambda_max_error : float
        ``|max node - lambda_max| / |lambda_max|``.
    """
    nodes, weights = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in quadrature)
    keep = np.isfinite(nodes) & (weights > 0)
    flat_nodes, flat_weights = nodes[keep], weights[keep] / nodes.shape[0]
    spread = float(exact.max() - exact.min())
    w1 = scipy.stats.wasserstein_distance(flat_nodes, exact, u_weights=flat_weights)
    top = float(exact.max())
    return w1 / spread, abs(float(flat_nodes.max()) - top) / abs(top)


def _hessnb_quadrature(op: HessianOperator, steps: int, seed: int) -> Quadrature:
    ds = spectrum(op, lanczos_steps=steps, probes=1, seed=seed, top_k=1, progress=False)
    return ds.nodes.values, ds.weights.values


# ----------------------------------------------------------------------------- other libraries
@dataclass
class _Library:
    """A third-party SLQ, set up on one model and data set.

    ``run(seed)`` performs the timed ``steps``-step, one-probe density and returns its
    quadrature.
    """

    name: str
    run: Callable[[int], Quadrature]
    note: str = ""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _eigenthings(model: nn.Module, batches: Batches, steps: int) -> _Library:
    """hessian-eigenthings' ``spectral_density`` (Rademacher probe, full re-orth, model dtype).

    Its full-dataset HVP averages batches with equal weights; the loss is rescaled by
    ``batch size x batches / N`` so that it too is the Hessian of the mean loss.
    """
    import hessian_eigenthings as he

    n_examples = sum(len(y) for _, y in batches)
    scale = {id(x): len(y) * len(batches) / n_examples for x, y in batches}

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(net(x), y) * scale[id(x)]

    op = he.HessianOperator(model, batches, loss_fn)

    def run(seed: int) -> Quadrature:
        result = he.spectral_density(op, num_runs=1, lanczos_steps=steps, seed=seed)
        return result.raw_eigenvalues.double().numpy(), result.raw_weights.double().numpy()

    return _Library("hessian-eigenthings", run, "spectral_density(num_runs=1)")


def _curvlinops(model: nn.Module, batches: Batches, steps: int) -> _Library:
    """curvlinops' Papyan (2020) Lanczos (no re-orthogonalisation, model dtype).

    ``lanczos_approximate_spectrum`` would first estimate the spectral boundaries with ARPACK
    (extra HVPs) and returns only a gridded density; its Lanczos kernel ``fast_lanczos`` is
    what is timed here, and its Ritz values / squared first components are the quadrature.
    """
    from curvlinops import HessianLinearOperator
    from curvlinops.papyan2020traces.spectrum import fast_lanczos

    params = [p for p in model.parameters() if p.requires_grad]
    op = HessianLinearOperator(
        model, nn.CrossEntropyLoss(), params, batches, check_deterministic=False
    )

    def run(seed: int) -> Quadrature:
        torch.manual_seed(seed)
        evals, evecs = fast_lanczos(op, steps)
        weights = evecs[0, :] ** 2
        return evals.double().numpy()[None], weights.double().numpy()[None]

    return _Library("curvlinops", run, "fast_lanczos (no re-orth)")


_LIBRARY_SETUP: dict[str, Callable[[nn.Module, Batches, int], _Library]] = {
    "hessian-eigenthings": _eigenthings,
    "curvlinops": _curvlinops,
}


def _libraries(model: nn.Module, batches: Batches, steps: int) -> tuple[list[_Library], list[str]]:
    """Set up every installed library; names of the missing ones."""
    found, missing = [], []
    for name, module in LIBRARIES.items():
        if not _installed(module):
            missing.append(name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found.append(_LIBRARY_SETUP[name](model, batches, steps))
    return found, missing


# ----------------------------------------------------------------------------- profile
def profile_hvp(model: nn.Module, batches: Batches, repeats: int = 3) -> dict[str, float]:
    """Seconds of the parts of one full-dataset HVP by double backward, per pass.

    Returns forward, first backward with ``create_graph=True``, second backward, and a plain
    gradient (forward + backward) for reference; minima over ``repeats`` rounds.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    tangent = [torch.randn_like(p) for p in params]
    parts = {"forward": 0.0, "first backward (create_graph)": 0.0, "second backward": 0.0}
    best = dict.fromkeys(parts, math.inf)
    for _ in range(repeats):
        totals = dict.fromkeys(parts, 0.0)
        for x, y in batches:
            loss, totals["forward"] = _add(
                totals["forward"], lambda x=x, y=y: F.cross_entropy(model(x), y)
            )
            grads, totals["first backward (create_graph)"] = _add(
                totals["first backward (create_graph)"],
                lambda loss=loss: torch.autograd.grad(loss, params, create_graph=True),
            )
            _, totals["second backward"] = _add(
                totals["second backward"],
                lambda grads=grads: torch.autograd.grad(grads, params, tangent),
            )
        best = {k: min(best[k], totals[k]) for k in parts}

    def gradient() -> None:
        for x, y in batches:
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

    best["gradient (forward + backward)"] = min(interleaved_times({"g": gradient}, repeats)["g"])
    return best


def _cache_state(op: HessianOperator) -> str:
    cache = getattr(op, "_cache", None)
    if cache is None:
        return "off"
    return "gave up" if cache.gave_up else f"{cache.saved_bytes / 2**20:.0f} MiB"


def _add(total: float, fn: Callable[[], Any]) -> tuple[Any, float]:
    out, seconds = _timed(fn)
    return out, total + seconds


# ----------------------------------------------------------------------------- the benchmark
def _speed_rows(
    op: HessianOperator, fresh: HessianOperator, config: BenchConfig
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
        cache_state = _cache_state(op)
    hvp, grad, cold = (min(times[k]) for k in ("hvp", "grad", "cold"))
    how = f"min of {config.repeats} interleaved"
    rows = [
        _check(
            "HVP / gradient",
            hvp / grad,
            2.2,
            f"op.matvec {hvp * 1e3:.0f} ms (graph cache: {cache_state}), "
            f"gradient {grad * 1e3:.0f} ms ({how})",
        ),
        Row(
            "HVP without graph cache / gradient",
            cold / grad,
            note=f"op.matvec {cold * 1e3:.0f} ms with graph_cache=False",
        ),
    ]

    def slq(steps: int, probes: int) -> tuple[float, list[float]]:
        with _count_matmat(op) as calls:
            _, seconds = _timed(
                lambda: spectrum(op, lanczos_steps=steps, probes=probes, top_k=1, progress=False)
            )
        return seconds, calls

    single, calls = slq(config.steps, 1)
    rows.append(
        _check(
            f"SLQ {config.steps} steps / {config.steps} HVPs",
            single / sum(calls),
            1.03,
            f"wall {single:.1f} s over its own {len(calls)} op.matmat calls "
            f"({sum(calls):.1f} s); {single / (config.steps * hvp):.3f} against "
            f"{config.steps} x the min HVP",
        )
    )
    one, _ = slq(config.batched_steps, 1)
    many, _ = slq(config.batched_steps, config.probes)
    rows.append(
        _check(
            f"{config.probes} probes batched / {config.probes} x 1 probe",
            many / (config.probes * one),
            0.6,
            f"{config.batched_steps} Lanczos steps: {config.probes} probes {many:.1f} s, "
            f"1 probe {one:.1f} s",
        )
    )
    return rows, single


def _accuracy_rows(
    config: BenchConfig, batches: Batches, timed: tuple[nn.Module, Batches]
) -> tuple[list[Row], dict[str, _Result]]:
    """Accuracy rows on the small net; library timings on the timed CNN.

    Returns the rows and a :class:`_Result` per method (hessnb's seconds are filled in by
    the caller).
    """
    small = digits_cnn(config.small_widths, seed=1)
    _fit(small, batches)
    op = HessianOperator(small, F.cross_entropy, batches)
    exact = np.linalg.eigvalsh(
        HessianOperator(small, F.cross_entropy, batches, dtype=torch.float64).dense().numpy()
    )
    methods: dict[str, Callable[[int], Quadrature]] = {
        "hessnb": lambda seed: _hessnb_quadrature(op, config.steps, seed)
    }
    small_libs, missing = (
        _libraries(small, batches, config.steps) if config.libraries else ([], list(LIBRARIES))
    )
    methods.update({lib.name: lib.run for lib in small_libs})
    errors = {
        name: np.array([spectral_errors(run(s), exact) for s in range(config.accuracy_seeds)])
        for name, run in methods.items()
    }
    results = {name: _Result(math.nan, e) for name, e in errors.items()}

    bound = wasserstein_bound(config.steps, 1, op.n_params, 0.95)
    where = (
        f"{op.n_params:,}-param net, {config.steps} steps, 1 probe, {config.accuracy_seeds} seeds"
    )
    rows = [
        _check(
            "hessnb W1 / spectral range",
            results["hessnb"].w1,
            round(bound, 3),
            f"{results['hessnb'].describe(0)}; {where}; target: a-priori bound (95 %)",
        ),
        _check(
            "hessnb lambda_max rel. error",
            results["hessnb"].top,
            1e-3,
            f"{results['hessnb'].describe(1)}; {where}",
        ),
    ]
    timed_libs = _libraries(*timed, config.steps)[0] if config.libraries else []
    for lib in timed_libs:
        result = results[lib.name]
        result.seconds = _timed(lambda lib=lib: lib.run(0))[1]
        rows.append(
            Row(
                f"{lib.name} W1 / spectral range",
                result.w1,
                note=f"{result.describe(0)}; {lib.note}",
            )
        )
        rows.append(Row(f"{lib.name} lambda_max rel. error", result.top, note=result.describe(1)))
    for name in missing:
        why = (
            "not installed: pip install it to include it (never a hessnb dependency)"
            if config.libraries
            else "left out (--no-libraries)"
        )
        rows.append(Row(f"{name} (skipped)", math.nan, status="skip", note=why))
    return rows, results


@dataclass
class _Result:
    """Seconds of the timed SLQ and per-seed ``(W1, lambda_max error)`` of one method."""

    seconds: float
    errors: np.ndarray  # (seeds, 2)

    @property
    def w1(self) -> float:
        return float(self.errors[:, 0].mean())

    @property
    def top(self) -> float:
        return float(self.errors[:, 1].mean())

    def stderr(self, column: int) -> float:
        seeds = self.errors.shape[0]
        return float(self.errors[:, column].std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0

    def describe(self, column: int) -> str:
        return f"mean {self.errors[:, column].mean():.3g} ± {self.stderr(column):.2g} (se)"

    def as_accurate_as(self, other: _Result) -> bool:
        """Mean errors no worse than ``other``'s beyond two standard errors.

        lambda_max errors below ``LAMBDA_FLOOR`` (the float32 HVP rounding level) count as
        equal.
        """
        for column, floor in ((0, 0.0), (1, LAMBDA_FLOOR)):
            mine, theirs = self.errors[:, column].mean(), other.errors[:, column].mean()
            slack = 2 * math.hypot(self.stderr(column), other.stderr(column))
            if mine > max(theirs + slack, floor):
                return False
        return True


def _comparison_rows(results: dict[str, _Result]) -> list[Row]:
    """hessnb's SLQ time over each library's, and the verdict against the fastest."""
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
    if not others:
        return [
            *rows,
            Row(
                "hessnb / fastest library SLQ time",
                math.nan,
                "<= 0.75",
                "skip",
                "no other library installed",
            ),
        ]
    fastest = min(others, key=lambda k: others[k].seconds)
    accurate = ours.as_accurate_as(others[fastest])
    row = _check(
        "hessnb / fastest library SLQ time",
        ours.seconds / others[fastest].seconds,
        0.75,
        f"fastest: {fastest}; accuracy equal or better: {'yes' if accurate else 'no'}",
    )
    if not accurate:
        row.status = "miss"
    return [*rows, row]


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> list[Row]:
    """Run every row of the benchmark and return the table's rows."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    batches = digits_batches(config.n_examples, config.batch_size)
    model = digits_cnn(config.widths)
    op = HessianOperator(model, F.cross_entropy, batches)
    fresh = HessianOperator(model, F.cross_entropy, batches, graph_cache=False)
    log(
        f"timed CNN: {op.n_params:,} parameters, {op.n_examples} examples in "
        f"{len(batches)} batches of <= {config.batch_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    rows, seconds = _speed_rows(op, fresh, config)
    if not config.accuracy:
        return rows
    log("speed rows done; accuracy and other libraries next")
    accuracy, results = _accuracy_rows(config, batches, (model, batches))
    results["hessnb"].seconds = seconds
    return rows + accuracy + _comparison_rows(results)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = ("row", "measured", "target", "status", "note")
    cells = [header] + [
        (r.name, "—" if math.isnan(r.value) else f"{r.value:.4g}", r.target, r.status, r.note)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells]
    lines.insert(1, "-" * (sum(widths) + 8 + len(header[4])))
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hessnb.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny configuration (seconds)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of HVP / gradient")
    parser.add_argument("--steps", type=int, help="Lanczos steps of the 1-probe rows (90)")
    parser.add_argument("--batched-steps", type=int, help="Lanczos steps of the 8-probe row")
    parser.add_argument("--accuracy-seeds", type=int, help="probe seeds in accuracy rows")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the table and returns 0."""
    args = _parse(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    overrides = {
        "repeats": args.repeats,
        "steps": args.steps,
        "batched_steps": args.batched_steps,
        "accuracy_seeds": args.accuracy_seeds,
        "threads": args.threads,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    config.libraries = not args.no_libraries
    config.accuracy = not args.speed_only
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    rows = run_benchmark(config, log)
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
