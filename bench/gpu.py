"""GPU benchmark of hessnb at ImageNet scale (issue 6): HVP vs training throughput.

Usage::

    python bench/gpu.py                      # on a CUDA GPU: ResNet-18 and ResNet-50, 224 px
    python bench/gpu.py --precision fp32 tf32 bf16
    python bench/gpu.py --tiny               # a tiny CNN at 16 px (the default without CUDA)

For each model and precision, on synthetic ImageNet-shaped data held on the device:

- images/s of one SGD training step (forward + backward + update, train-mode BN);
- images/s of one full-data Hessian-vector product (``HessianOperator.matvec``, eval-mode
  BN, batch-size-weighted float64 sums, no graph cache: forward, first and second backward
  of every batch, as over ImageNet), and its ratio to training (target >= 40 %);
- peak device memory of each;
- seconds per Lanczos step (orthogonalisation against the float64 basis, a cheap operator
  standing in for the HVP) with the basis on the GPU and in pinned CPU memory. The cost of
  step ``j`` grows linearly with ``j``; the table gives the mean over a 90-step run
  projected from a linear fit to the steps measured.

Then it projects, from these figures, the hours of a 90-step spectrum over the ImageNet
training set (1,281,167 images) and per-class subsets on 1 and 8 GPUs. On a GPU the whole
script takes about 2-4 minutes; ``--tiny`` takes seconds on a CPU (CI runs it).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hessnb import models
from hessnb.commands import PRECISIONS, configure_backends, prepare_model
from hessnb.lanczos import lanczos_block
from hessnb.operators import HessianOperator
from hessnb.synthetic import random_batches

IMAGENET_TRAIN = 1_281_167
CLASSES = 1000
#: Data passes of one spectrum besides the Lanczos steps (see hessnb.commands).
EXTRA_PASSES = 5


@dataclass
class Config:
    """What to measure; :meth:`tiny` is the CPU configuration."""

    models: Sequence[str] = ("resnet18", "resnet50")
    precisions: Sequence[str] = ("fp32",)
    image_size: int = 224
    batch_size: int = 64
    batches: int = 4
    train_steps: int = 10
    hvp_repeats: int = 2
    lanczos_steps: int = 16
    device: str = "cuda"

    @classmethod
    def tiny(cls) -> Config:
        return cls(
            models=("tiny",),
            image_size=16,
            batch_size=8,
            batches=2,
            train_steps=3,
            hvp_repeats=1,
            lanczos_steps=8,
            device="cpu",
        )


@dataclass
class Row:
    """Measured figures of one model at one precision (NaN: not measured)."""

    model: str
    n_params: int
    precision: str
    train_ips: float
    hvp_ips: float
    train_peak: float
    hvp_peak: float
    lanczos_device: float
    lanczos_cpu: float

    @property
    def ratio(self) -> float:
        return self.hvp_ips / self.train_ips


def build_model(name: str) -> nn.Module:
    """``tiny`` (a ResNet-8 of width 8 from hessnb.models) or a torchvision model."""
    if name == "tiny":
        return models.resnet32(bn=True, width=8, blocks=1, classes=CLASSES)
    return models.build(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    """Peak bytes since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _timed(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds of ``repeats`` calls after ``warmup`` calls (cuDNN autotuning, allocator)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return time.perf_counter() - start


def train_throughput(
    model: nn.Module, batches: list, precision: str, steps: int, device: torch.device
) -> tuple[float, float]:
    """Images/s and peak memory of SGD steps (train mode) on the first batch."""
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = batches[0]

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()

    _reset_peak(device)
    seconds = _timed(step, steps, device)
    return steps * len(y) / seconds, _peak(device)


def hvp_throughput(
    model: nn.Module, batches: list, repeats: int, device: torch.device
) -> tuple[float, float]:
    """Images/s and peak memory of full-data HVPs over ``batches`` (eval-mode BN)."""
    # no graph cache: over ImageNet the activations of every batch cannot be kept, so
    # each HVP is a forward, a first and a second backward pass per batch
    op = HessianOperator(
        model, F.cross_entropy, batches, check_determinism=False, graph_cache=False
    )
    v = torch.randn(op.n_params, dtype=torch.float64, device=device)
    _reset_peak(device)
    seconds = _timed(lambda: op.matvec(v), repeats, device)
    images = sum(len(y) for _, y in batches)
    return repeats * images / seconds, _peak(device)


def lanczos_seconds(
    dim: int, steps: int, placement: str, device: torch.device, projected_steps: int = 90
) -> float:
    """Mean seconds per Lanczos step of a ``projected_steps`` run, excluding the HVP.

    Runs ``steps`` steps with a diagonal operator (negligible cost) and fits the linear
    growth of the per-step time with the step index.
    """
    diagonal = torch.linspace(0.0, 1.0, dim, dtype=torch.float64, device=device)[:, None]
    stamps: list[float] = []

    def tick(_j: int) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    _sync(device)
    stamps.append(time.perf_counter())
    result = lanczos_block(
        lambda q: diagonal * q,
        dim,
        steps,
        basis=placement,
        device=device,
        generator=torch.Generator().manual_seed(0),
        keep_basis=False,
        callback=tick,
    )
    del result
    per_step = np.diff(stamps)[1:]  # drop step 0 (allocation, first-call costs)
    index = np.arange(1, len(stamps) - 1)
    if len(index) < 2:
        return float(per_step.mean())
    slope, intercept = np.polyfit(index, per_step, 1)
    # noise can tilt the fit on tiny problems; never project below the fastest step
    return float(max(intercept + slope * (projected_steps - 1) / 2, per_step.min()))


def measure(config: Config) -> list[Row]:
    """All rows of the table for ``config``."""
    device = torch.device(config.device)
    data = random_batches(config.batches, config.batch_size, config.image_size, CLASSES, device)
    rows = []
    for name in config.models:
        base = build_model(name)
        n_params = sum(p.numel() for p in base.parameters())
        lanczos_seconds(n_params, 3, "device", device)  # warm-up: kernels, allocator
        lanczos = {
            p: lanczos_seconds(n_params, config.lanczos_steps, p, device) for p in ("device", "cpu")
        }
        for precision in config.precisions:
            configure_backends(device, precision)
            trained, model = (
                prepare_model(copy.deepcopy(base), device, precision) for _ in range(2)
            )
            batches = (
                [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
                if device.type == "cuda"
                else data
            )
            try:
                train_ips, train_peak = train_throughput(
                    trained, batches, precision, config.train_steps, device
                )
                hvp_ips, hvp_peak = hvp_throughput(model, batches, config.hvp_repeats, device)
            except torch.cuda.OutOfMemoryError:
                train_ips = train_peak = hvp_ips = hvp_peak = math.nan
            rows.append(
                Row(
                    name,
                    n_params,
                    precision,
                    train_ips,
                    hvp_ips,
                    train_peak,
                    hvp_peak,
                    lanczos["device"],
                    lanczos["cpu"],
                )
            )
            del trained, model
    return rows


def _ips(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _gib(nbytes: float) -> str:
    return "n/a" if math.isnan(nbytes) else f"{nbytes / 2**30:.2f}"


def format_table(rows: Sequence[Row], device: torch.device) -> str:
    """The measurements as a Markdown table."""
    peak = "peak GiB" if device.type == "cuda" else "peak RSS GiB"
    lines = [
        f"| model | params | precision | train img/s | HVP img/s | HVP / train (>= 40 %) | "
        f"train {peak} | HVP {peak} | Lanczos s/step, basis=device | basis=cpu |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        verdict = "n/a" if math.isnan(r.ratio) else ("pass" if r.ratio >= 0.4 else "miss")
        lines.append(
            f"| {r.model} | {r.n_params / 1e6:.2f} M | {r.precision} | {_ips(r.train_ips)} | "
            f"{_ips(r.hvp_ips)} | {100 * r.ratio:.0f} % {verdict} | {_gib(r.train_peak)} | "
            f"{_gib(r.hvp_peak)} | {r.lanczos_device:.4f} | {r.lanczos_cpu:.4f} |"
        )
    return "\n".join(lines)


def projected_hours(
    hvp_ips: float, images: int, gpus: int, lanczos_s: float, steps: int = 90
) -> float:
    """Hours of one spectrum: ``(steps + 5)`` data passes shared by ``gpus``, plus Lanczos.

    ``hours = (steps + 5) * images / (hvp_ips * gpus) / 3600 + steps * lanczos_s / 3600``
    (the 5 extra passes are cheaper than HVPs, so this is an upper bound; the Lanczos
    arithmetic is repeated on every rank, so it does not shrink with ``gpus``).
    """
    return ((steps + EXTRA_PASSES) * images / (hvp_ips * gpus) + steps * lanczos_s) / 3600


def format_projection(
    rows: Sequence[Row], unit: str = "GPU", subsets: Sequence[int] = (100, 10)
) -> str:
    """Projected hours of a 90-step spectrum on ImageNet from each row's HVP throughput.

    ``unit`` names what the throughput was measured on (one GPU, or one CPU process).
    """
    sizes = [("full train set", IMAGENET_TRAIN)] + [
        (f"{k} per class", k * CLASSES) for k in subsets
    ]
    lines = [
        f"| model | precision | images | hours, 1 x {unit} | hours, 8 x {unit} |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if math.isnan(r.hvp_ips):
            continue
        lanczos = min(r.lanczos_device, r.lanczos_cpu)
        for label, n in sizes:
            lines.append(
                f"| {r.model} | {r.precision} | {n:,} ({label}) | "
                f"{projected_hours(r.hvp_ips, n, 1, lanczos):.2f} | "
                f"{projected_hours(r.hvp_ips, n, 8, lanczos):.2f} |"
            )
    return "\n".join(lines)


def _quadrature_w1(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Wasserstein-1 distance between two quadrature measures (probes averaged)."""
    import scipy.stats

    def flat(q: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        nodes, weights = q
        keep = np.isfinite(nodes) & (weights > 0)
        return nodes[keep], weights[keep]

    (na, wa), (nb, wb) = flat(a), flat(b)
    return float(scipy.stats.wasserstein_distance(na, nb, u_weights=wa, v_weights=wb))


def density_effect(
    device: torch.device, precisions: Sequence[str], steps: int = 60, train_steps: int = 300
) -> str:
    """Effect of reduced-precision HVPs on the SLQ density, against float64 HVPs.

    A small CNN with batch norm (hessnb.models.small_cnn, 34k parameters) trained for
    ``train_steps`` full-batch Adam steps on the 1,797 digits; one probe, ``steps`` Lanczos
    steps, the same seed for every precision. Reports the Wasserstein-1 distance between
    the quadrature measures relative to the spectral range, and the relative errors of the
    top Ritz value and of the trace estimate.
    """
    from hessnb import data, spectrum

    dataset = data.digits()
    x, y = dataset.tensors
    torch.manual_seed(0)
    model = models.small_cnn(bn=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(train_steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    batches = [
        (xb.to(device), yb.to(device)) for xb, yb in zip(x.split(512), y.split(512), strict=True)
    ]
    results = {}
    for precision in ("fp64", *precisions):
        configure_backends(device, "fp32" if precision == "fp64" else precision)
        prepared = prepare_model(
            copy.deepcopy(model), device, "fp32" if precision == "fp64" else precision, False
        )
        op = HessianOperator(
            prepared, F.cross_entropy, batches, dtype=torch.float64 if precision == "fp64" else None
        )
        start = time.perf_counter()
        ds = spectrum(op, lanczos_steps=steps, probes=1, seed=0, top_k=1, progress=False)
        results[precision] = (ds, time.perf_counter() - start)
    exact, _ = results["fp64"]
    span = float(np.nanmax(exact.nodes) - np.nanmin(exact.nodes))
    lines = [
        "| HVP precision | W1 / range vs fp64 | top eigenvalue rel. error | "
        "trace rel. error | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for precision, (ds, seconds) in results.items():
        w1 = (
            _quadrature_w1(
                (ds.nodes.values, ds.weights.values), (exact.nodes.values, exact.weights.values)
            )
            / span
        )
        top = abs(float(ds.top_eigenvalues[0] / exact.top_eigenvalues[0]) - 1)
        trace = abs(float(ds.trace / exact.trace) - 1)
        lines.append(f"| {precision} | {w1:.1e} | {top:.1e} | {trace:.1e} | {seconds:.1f} |")
    return (
        f"small CNN with BN on digits ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters), {steps} Lanczos steps, 1 probe, top eigenvalue "
        f"{float(exact.top_eigenvalues[0]):.4g}, trace {float(exact.trace):.4g}:\n"
        + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the projection."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny CNN at 16 px on the CPU (default when CUDA is absent)",
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default on the CPU: 1)"
    )
    parser.add_argument(
        "--density-effect",
        action="store_true",
        help="also measure the effect of reduced-precision HVPs on the "
        "density of a small CNN (against float64 HVPs)",
    )
    args = parser.parse_args(argv)
    config = Config.tiny() if (args.tiny or not torch.cuda.is_available()) else Config()
    for key, value in (
        ("models", args.models),
        ("precisions", args.precision),
        ("batch_size", args.batch_size),
        ("image_size", args.image_size),
    ):
        if value is not None:
            setattr(config, key, value)
    device = torch.device(config.device)
    if device.type == "cpu" and args.threads is None:
        # one thread: on a shared 2-core CI machine, spin-waiting threads made tiny
        # products 100x slower; pass --threads to measure a dedicated CPU
        torch.set_num_threads(1)
    elif args.threads is not None:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(
        f"hessnb GPU benchmark on {name}; torch {torch.__version__}; "
        f"{config.image_size} px, batch {config.batch_size} x {config.batches} batches, "
        "synthetic data"
    )
    start = time.perf_counter()
    rows = measure(config)
    print(format_table(rows, device))
    print(f"\nprojected hours of a 90-step spectrum (from the HVP img/s above; {name}):")
    print(format_projection(rows, "GPU" if device.type == "cuda" else "CPU process"))
    if args.density_effect:
        reduced = [p for p in PRECISIONS if device.type == "cuda" or p != "tf32"]
        print("\neffect of the HVP precision on the density, " + density_effect(device, reduced))
    print(f"\nbenchmark took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
