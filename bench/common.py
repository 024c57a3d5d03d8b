"""What the benchmarks share: configuration, result rows and tables, timing, digits, W1.

- :class:`BenchConfig`: the SLQ settings (a :class:`hessnb.SLQSettings`) and thread count
  every benchmark has; :func:`override` applies command-line values to a config.
- :class:`Row`, :func:`check`, :func:`format_table`, :func:`markdown_table`: result tables.
- :func:`timed`, :func:`interleaved_times`, :func:`synchronize`: wall-clock timing that
  waits for CUDA kernels; :class:`CountingOperator` times each product an SLQ run makes.
- :func:`compare_backends`: block products of each HVP backend (``HessianOperator(hvp=)``),
  timed side by side and checked against the double-backward result.
- :func:`digits_cnn`, :func:`digits_batches`, :func:`split_batches`, :func:`fit`: the
  digits models and data of the CPU benchmark and the precision study.
- :func:`spectral_errors`: Wasserstein-1 and lambda_max errors of a quadrature against a
  reference spectrum.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.linalg.quadrature import spectral_measure, wasserstein_distance

__all__ = [
    "BackendTiming",
    "Batches",
    "BenchConfig",
    "CountingOperator",
    "Quadrature",
    "Row",
    "check",
    "compare_backends",
    "digits_batches",
    "digits_cnn",
    "fit",
    "format_table",
    "interleaved_times",
    "machine_name",
    "make_parser",
    "markdown_table",
    "override",
    "spectral_errors",
    "split_batches",
    "synchronize",
    "timed",
]

Batches = list[tuple[torch.Tensor, torch.Tensor]]
#: Nodes and weights of one or more probes, each ``(probes, m)`` or ``(m,)`` (NaN / 0
#: padding allowed).
Quadrature = tuple[np.ndarray, np.ndarray]
Config = TypeVar("Config", bound="BenchConfig")

_SLQ_FIELDS = tuple(f.name for f in dataclasses.fields(SLQSettings))


# ----------------------------------------------------------------------------- configuration
@dataclass
class BenchConfig:
    """Settings every benchmark has.

    Attributes
    ----------
    slq : SLQSettings
        Lanczos steps, probes, top_k and seed of the SLQ runs that are timed or projected.
    threads : int or None
        ``torch.set_num_threads`` (None: leave torch's default).
    """

    slq: SLQSettings = field(default_factory=lambda: SLQSettings(top_k=1))
    threads: int | None = None

    def apply_threads(self) -> None:
        """Set torch's thread count when ``threads`` is given."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)


def override(config: Config, **values: Any) -> Config:
    """A copy of ``config`` with every value that is not None set.

    Names of :class:`hessnb.SLQSettings` fields (``lanczos_steps``, ``probes``, ``top_k``,
    ``seed``) change ``config.slq``; the others are attributes of ``config``.
    """
    given = {k: v for k, v in values.items() if v is not None}
    slq = {k: given.pop(k) for k in _SLQ_FIELDS if k in given}
    return dataclasses.replace(config, slq=config.slq.replace(**slq), **given)


def make_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser for ``python -m module`` with ``--threads``.

    The description is the first paragraph of ``doc`` (the module docstring).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    return parser


def machine_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU's with torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- tables
@dataclass
class Row:
    """One line of a result table.

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


def check(name: str, value: float, limit: float, note: str = "", at_least: bool = False) -> Row:
    """A row that passes when ``value <= limit`` (``value >= limit`` with ``at_least``)."""
    passed = value >= limit if at_least else value <= limit
    sign = ">=" if at_least else "<="
    return Row(name, value, f"{sign} {limit:g}", "pass" if passed else "miss", note)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table under a header and a rule."""
    header = ("row", "measured", "target", "status", "note")
    cells = [header] + [
        (r.name, "—" if math.isnan(r.value) else f"{r.value:.4g}", r.target, r.status, r.note)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells]
    lines.insert(1, "-" * (sum(widths) + 8 + len(header[4])))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : sequence of sequences of str
        Cells, one sequence per row, as many as ``header``.
    align : str
        One letter per column: ``"l"`` (left) or ``"r"`` (right).
    """
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l' / 'r' per column, got {align!r}")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device | None) -> None:
    """Wait for the kernels queued on a CUDA device (nothing on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[Any, float]:
    """``(fn(), seconds)``, waiting for ``device``'s kernels before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, list[float]]:
    """Wall times of several callables, run round-robin ``repeats`` times.

    On a shared machine the minimum of interleaved calls is the least disturbed run, and
    interleaving exposes numerator and denominator of a ratio to the same conditions.

    Parameters
    ----------
    fns : mapping of name to callable
        Functions of no arguments.
    repeats : int
        Rounds; each round calls every function once, in order.
    warmup : int
        Untimed rounds first (first-call costs, allocator, cuDNN autotuning).
    device : torch.device, optional
        Synchronised around each timed call when it is a CUDA device.

    Returns
    -------
    dict of name to list of float
        Seconds of each call, ``repeats`` per name.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[1])
    return times


class CountingOperator:
    """An operator that records the seconds of each of its ``matmat`` calls.

    Passes ``shape``, ``device``, ``dtype``, ``reuse_graphs`` and ``provenance`` through to
    the wrapped operator, so :func:`hessnb.spectrum` treats it as that operator.

    Attributes
    ----------
    calls : list of float
        Seconds of each ``matmat`` call so far.
    """

    def __init__(self, op: HessianOperator) -> None:
        self.op = op
        self.calls: list[float] = []

    @property
    def shape(self) -> tuple[int, int]:
        """The wrapped operator's ``(n, n)``."""
        return self.op.shape

    @property
    def device(self) -> torch.device:
        """Where the wrapped operator computes."""
        return self.op.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the wrapped operator computes in."""
        return self.op.dtype

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V``, timed."""
        out, seconds = timed(lambda: self.op.matmat(vectors), self.device)
        self.calls.append(seconds)
        return out

    def reuse_graphs(self) -> Any:
        """The wrapped operator's ``reuse_graphs()`` context."""
        return self.op.reuse_graphs()

    def provenance(self) -> dict[str, Any]:
        """The wrapped operator's dataset attributes."""
        return self.op.provenance()


@dataclass
class BackendTiming:
    """Block products of one HVP backend on one model and data set.

    Attributes
    ----------
    name : str
        The backend (``HessianOperator(hvp=name)``).
    block : int
        Columns ``k`` of the wide block.
    one, wide : float
        Seconds of ``op.matmat`` on a block of 1 and of ``block`` columns (minima over
        interleaved repeats, after the first calls).
    first : float
        Seconds of the first block-of-1 and block-of-``k`` calls together (graph cache
        filling; compilation for ``"compile"``).
    agreement : float
        ``||H V - H V_db|| / ||H V_db||`` on the wide block, against the double-backward
        operator's result (0 for double backward itself).
    """

    name: str
    block: int
    one: float
    wide: float
    first: float
    agreement: float

    @property
    def lockstep(self) -> float:
        """Seconds of the wide block over ``block`` blocks of one."""
        return self.wide / (self.block * self.one)


def compare_backends(
    model: nn.Module,
    batches: Batches,
    backends: Sequence[str],
    *,
    block: int = 8,
    repeats: int = 2,
    graph_cache: bool | str = "auto",
    device: torch.device | None = None,
) -> list[BackendTiming]:
    """Time ``op.matmat`` on blocks of 1 and ``block`` columns for each HVP backend.

    Every operator is inside ``reuse_graphs()``, as in an SLQ run; ``graph_cache=False``
    times double backward as over a data set too large to keep graphs for. Products are
    compared with a double-backward operator's, computed once.

    Parameters
    ----------
    model : nn.Module
        The network (cross-entropy loss).
    batches : list of (inputs, targets)
        Its data, on the model's device.
    backends : sequence of str
        Values of ``HessianOperator(hvp=...)`` to time, in table order.
    block : int
        Columns of the wide block.
    repeats : int
        Interleaved timed rounds after the first calls.
    graph_cache : bool or "auto"
        ``HessianOperator(graph_cache=...)``.
    device : torch.device, optional
        Synchronised around each timed call when it is a CUDA device.

    Returns
    -------
    list of BackendTiming
        One per backend, in the order of ``backends``.
    """

    def operator(name: str) -> HessianOperator:
        return HessianOperator(
            model,
            F.cross_entropy,
            batches,
            check_determinism=False,
            graph_cache=graph_cache,
            hvp=name,
        )

    ops = {name: operator(name) for name in backends}
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(next(iter(ops.values())).n_params, block, generator=generator)
    vectors = vectors.to(dtype=torch.float64, device=device)
    reference = operator("double-backward").matmat(vectors)
    calls: dict[str, Callable[[], object]] = {}
    for name, op in ops.items():
        calls[f"{name}/1"] = lambda op=op: op.matmat(vectors[:, :1])
        calls[f"{name}/{block}"] = lambda op=op: op.matmat(vectors)
    with contextlib.ExitStack() as stack:
        for op in ops.values():
            stack.enter_context(op.reuse_graphs())
        first = {name: timed(calls[f"{name}/1"], device)[1] for name in ops}
        products = {}
        for name in ops:
            products[name], seconds = timed(calls[f"{name}/{block}"], device)
            first[name] += seconds
        times = interleaved_times(calls, repeats, warmup=0, device=device)
    return [
        BackendTiming(
            name,
            block,
            min(times[f"{name}/1"]),
            min(times[f"{name}/{block}"]),
            first[name],
            float((products[name] - reference).norm() / reference.norm()),
        )
        for name in ops
    ]


# ----------------------------------------------------------------------------- model and data
def digits_cnn(widths: Sequence[int], seed: int = 0) -> nn.Module:
    """Conv-ReLU-Conv-ReLU-Linear-ReLU-Linear for 8x8 digits, float32.

    ``widths = (conv1 channels, conv2 channels, hidden units)``: ``(32, 64, 64)`` gives
    281,674 parameters, ``(4, 8, 9)`` gives 5,053.
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


def split_batches(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Batches:
    """``(inputs, targets)`` cut into fixed, ordered batches of at most ``batch_size``."""
    return list(zip(inputs.split(batch_size), targets.split(batch_size), strict=True))


def digits_batches(n_examples: int | None = None, batch_size: int = 512) -> Batches:
    """scikit-learn's digits scaled to [0, 1] as fixed float32 batches ``(B, 1, 8, 8)``.

    The first ``n_examples`` images (None: all 1,797), in order.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:n_examples], dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target[:n_examples], dtype=torch.int64)
    return split_batches(images, labels, batch_size)


def fit(model: nn.Module, batches: Batches, steps: int = 150, lr: float = 1e-2) -> None:
    """Full-batch Adam steps on cross-entropy, so the spectrum has a trained net's outliers."""
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()


# ----------------------------------------------------------------------------- accuracy
def spectral_errors(
    quadrature: Quadrature, reference: Quadrature | np.ndarray
) -> tuple[float, float]:
    """Wasserstein-1 and lambda_max errors of an SLQ quadrature against a reference.

    Parameters
    ----------
    quadrature : (nodes, weights)
        Arrays of shape ``(probes, m)`` or ``(m,)``; probes are averaged, NaN nodes and
        zero weights dropped (:func:`hessnb.linalg.quadrature.spectral_measure`).
    reference : (nodes, weights) or array, shape (n,)
        Another quadrature, or exact eigenvalues each of mass ``1 / n``.

    Returns
    -------
    w1 : float
        ``W1(quadrature, reference)`` divided by the reference's spectral range
        ``lambda_max - lambda_min``.
    lambda_max_error : float
        ``|largest node - lambda_max| / |lambda_max|``.

    Raises
    ------
    ValueError
        If the reference spectrum has zero range or a zero largest value.
    """
    atoms = spectral_measure(*quadrature)[0]
    exact = (
        spectral_measure(*reference)[0]
        if isinstance(reference, tuple)
        else np.asarray(reference, dtype=np.float64).ravel()
    )
    spread, top = float(exact.max() - exact.min()), float(exact.max())
    if spread == 0 or top == 0:
        raise ValueError(
            f"the reference spectrum spans [{exact.min():g}, {top:g}]: relative errors need "
            "a non-zero range and a non-zero largest eigenvalue"
        )
    w1 = wasserstein_distance(quadrature, reference if isinstance(reference, tuple) else exact)
    return w1 / spread, abs(float(atoms.max()) - top) / abs(top)
