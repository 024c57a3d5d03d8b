"""GPU benchmark of hessnb at ImageNet scale: HVP against training throughput.

Run from the repository root::

    python -m bench.gpu                      # on a CUDA GPU: ResNet-18 and ResNet-50, 224 px
    python -m bench.gpu --precision fp32 tf32 bf16
    python -m bench.gpu --tiny               # a tiny CNN at 16 px (the default without CUDA)

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

Then it compares the HVP backends (``HessianOperator(hvp=...)``: double backward,
forward-over-reverse, ``torch.compile``) per model at fp32 without the graph cache (as over
ImageNet): images/s of a block of 1 and per vector of a block of 8, the block's cost over 8
single products, the first calls (compilation) and the relative difference from double
backward's products; this is what confirms or changes ``hvp="auto"`` on CUDA
(``hessnb.hessian.hvp.AUTO_BACKEND``). Last, it projects, from these figures, the hours of
a 90-step spectrum over the ImageNet training set (1,281,167 images) and per-class subsets
on 1 and 8 GPUs. On a GPU the whole script takes about 3-6 minutes (compilation included);
``--tiny`` takes seconds on a CPU.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.accuracy import density_effect
from bench.common import (
    BackendTiming,
    Batches,
    BenchConfig,
    check,
    compare_backends,
    interleaved_times,
    machine_name,
    make_parser,
    markdown_table,
    override,
    synchronize,
)
from bench.projection import CLASSES, format_projection
from hessnb.hessian.hvp import AUTO_BACKEND, HVP_BACKENDS
from hessnb.hessian.operator import HessianOperator
from hessnb.hessian.precision import PRECISIONS, configure_backends, prepare_model
from hessnb.linalg.lanczos import lanczos_block
from hessnb.reference import models
from hessnb.reference.synthetic import random_batches

__all__ = [
    "GpuConfig",
    "ModelRow",
    "backend_table",
    "format_table",
    "hvp_throughput",
    "lanczos_seconds",
    "main",
    "measure",
    "measure_backends",
    "synthetic_data",
    "train_throughput",
]

#: HVP throughput over training throughput that passes.
TARGET_RATIO = 0.4


@dataclass
class GpuConfig(BenchConfig):
    """What to measure; :meth:`tiny` is the CPU configuration.

    ``slq.lanczos_steps`` are the steps of the projected spectrum.

    Attributes
    ----------
    models : sequence of str
        ``"tiny"`` or torchvision model names.
    precisions : sequence of str
        HVP precisions (``hessnb.hessian.precision.PRECISIONS``).
    image_size, batch_size, batches : int
        Synthetic data: square images, examples per batch, batches.
    train_steps, hvp_repeats : int
        Timed SGD steps and timed HVPs.
    timed_lanczos_steps : int
        Lanczos steps timed to fit the per-step cost.
    device : str
        Where everything runs.
    backends : sequence of str
        HVP backends compared (``hessnb.hessian.hvp.HVP_BACKENDS``; empty: none).
    backend_block : int
        Columns of the wide block in the comparison.
    """

    models: Sequence[str] = ("resnet18", "resnet50")
    precisions: Sequence[str] = ("fp32",)
    image_size: int = 224
    batch_size: int = 64
    batches: int = 4
    train_steps: int = 10
    hvp_repeats: int = 2
    timed_lanczos_steps: int = 16
    device: str = "cuda"
    backends: Sequence[str] = HVP_BACKENDS
    backend_block: int = 8

    @classmethod
    def tiny(cls) -> GpuConfig:
        """A tiny CNN at 16 px on the CPU, seconds.

        One thread: on a loaded machine, spin-waiting threads make tiny products many
        times slower (pass ``--threads`` to measure a dedicated CPU).
        """
        return cls(
            threads=1,
            models=("tiny",),
            image_size=16,
            batch_size=8,
            batches=2,
            train_steps=3,
            hvp_repeats=1,
            timed_lanczos_steps=8,
            device="cpu",
            backends=("double-backward", "forward-over-reverse"),  # compile: minutes on a CPU
        )


@dataclass
class ModelRow:
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
        """HVP images/s over training images/s."""
        return self.hvp_ips / self.train_ips


def build_model(name: str) -> nn.Module:
    """``tiny`` (a ResNet-8 of width 8 from hessnb.reference.models) or a torchvision model."""
    if name == "tiny":
        return models.resnet32(bn=True, width=8, blocks=1, classes=CLASSES)
    return models.build(name)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float:
    """Peak bytes since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Total seconds of ``repeats`` calls after two warm-up calls."""
    return sum(interleaved_times({"fn": fn}, repeats, warmup=2, device=device)["fn"])


def train_throughput(
    model: nn.Module, batches: Batches, precision: str, steps: int, device: torch.device
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
    seconds = _seconds(step, steps, device)
    return steps * len(y) / seconds, _peak(device)


def hvp_throughput(
    model: nn.Module, batches: Batches, repeats: int, device: torch.device
) -> tuple[float, float]:
    """Images/s and peak memory of full-data HVPs over ``batches`` (eval-mode BN).

    No graph cache: over ImageNet the activations of every batch cannot be kept, so each
    HVP is a forward, a first and a second backward pass per batch.
    """
    op = HessianOperator(
        model, F.cross_entropy, batches, check_determinism=False, graph_cache=False
    )
    v = torch.randn(op.n_params, dtype=torch.float64, device=device)
    _reset_peak(device)
    seconds = _seconds(lambda: op.matvec(v), repeats, device)
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
        synchronize(device)
        stamps.append(time.perf_counter())

    tick(-1)
    lanczos_block(
        lambda q: diagonal * q,
        dim,
        steps,
        placement=placement,
        device=device,
        generator=torch.Generator().manual_seed(0),
        keep_basis=False,
        callback=tick,
    )
    per_step = np.diff(stamps)[1:]  # drop step 0 (allocation, first-call costs)
    index = np.arange(1, len(stamps) - 1)
    if len(index) < 2:
        return float(per_step.mean())
    slope, intercept = np.polyfit(index, per_step, 1)
    # noise can tilt the fit on tiny problems; never project below the fastest step
    return float(max(intercept + slope * (projected_steps - 1) / 2, per_step.min()))


def synthetic_data(config: GpuConfig, device: torch.device) -> Batches:
    """ImageNet-shaped random batches on ``device`` (channels-last on CUDA)."""
    data = random_batches(config.batches, config.batch_size, config.image_size, CLASSES, device)
    if device.type == "cuda":
        data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
    return data


def measure(config: GpuConfig) -> list[ModelRow]:
    """All rows of the table for ``config``."""
    device = torch.device(config.device)
    data = synthetic_data(config, device)
    rows = []
    for name in config.models:
        base = build_model(name)
        n_params = sum(p.numel() for p in base.parameters())
        lanczos_seconds(n_params, 3, "device", device)  # warm-up: kernels, allocator
        lanczos = {
            p: lanczos_seconds(
                n_params, config.timed_lanczos_steps, p, device, config.slq.lanczos_steps
            )
            for p in ("device", "cpu")
        }
        for precision in config.precisions:
            configure_backends(device, precision)
            trained, model = (
                prepare_model(copy.deepcopy(base), device, precision) for _ in range(2)
            )
            try:
                train_ips, train_peak = train_throughput(
                    trained, data, precision, config.train_steps, device
                )
                hvp_ips, hvp_peak = hvp_throughput(model, data, config.hvp_repeats, device)
            except torch.cuda.OutOfMemoryError:
                train_ips = train_peak = hvp_ips = hvp_peak = math.nan
            figures = (train_ips, hvp_ips, train_peak, hvp_peak, lanczos["device"], lanczos["cpu"])
            rows.append(ModelRow(name, n_params, precision, *figures))
            del trained, model
    return rows


def measure_backends(config: GpuConfig) -> dict[str, list[BackendTiming] | None]:
    """The HVP backends compared per model at fp32, without graph cache (None: out of memory)."""
    device = torch.device(config.device)
    data = synthetic_data(config, device)
    configure_backends(device, "fp32")
    results: dict[str, list[BackendTiming] | None] = {}
    for name in config.models:
        model = prepare_model(build_model(name), device, "fp32").eval()
        try:
            results[name] = compare_backends(
                model,
                data,
                config.backends,
                block=config.backend_block,
                repeats=config.hvp_repeats,
                graph_cache=False,
                device=device,
            )
        except torch.cuda.OutOfMemoryError:
            results[name] = None
        del model
        _reset_peak(device)
    return results


def backend_table(
    results: dict[str, list[BackendTiming] | None], images: int, device: torch.device
) -> str:
    """The backend comparison as a Markdown table, and what ``hvp="auto"`` picks here."""
    cells = []
    for model, timings in results.items():
        if timings is None:
            cells.append((model, "out of memory", *["n/a"] * 5))
            continue
        for t in timings:
            cells.append(
                (
                    model,
                    t.name,
                    _ips(images / t.one),
                    _ips(t.block * images / t.wide),
                    f"{t.lockstep:.2f}",
                    f"{t.first:.1f}",
                    f"{t.agreement:.1e}",
                )
            )
    block = next((t[0].block for t in results.values() if t), 8)
    header = (
        "model",
        "hvp",
        "img/s, block of 1",
        f"img/s per vector, block of {block}",
        f"block of {block} / {block} x 1",
        "first calls s",
        "rel. difference from double-backward",
    )
    auto = AUTO_BACKEND.get(device.type, "double-backward")
    return (
        markdown_table(header, cells, "llrrrrr")
        + f"\nhvp='auto' uses {auto} on {device.type}; the fastest rows above decide whether "
        "hessnb.hessian.hvp.AUTO_BACKEND should change for this device."
    )


def _ips(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _gib(nbytes: float) -> str:
    return "n/a" if math.isnan(nbytes) else f"{nbytes / 2**30:.2f}"


def format_table(rows: Sequence[ModelRow], device: torch.device) -> str:
    """The measurements as a Markdown table."""
    peak = "peak GiB" if device.type == "cuda" else "peak RSS GiB"
    header = (
        "model",
        "params",
        "precision",
        "train img/s",
        "HVP img/s",
        f"HVP / train (>= {100 * TARGET_RATIO:.0f} %)",
        f"train {peak}",
        f"HVP {peak}",
        "Lanczos s/step, placement=device",
        "placement=cpu",
    )
    cells = [
        (
            r.model,
            f"{r.n_params / 1e6:.2f} M",
            r.precision,
            _ips(r.train_ips),
            _ips(r.hvp_ips),
            f"{100 * r.ratio:.0f} % {_verdict(r.ratio)}",
            _gib(r.train_peak),
            _gib(r.hvp_peak),
            f"{r.lanczos_device:.4f}",
            f"{r.lanczos_cpu:.4f}",
        )
        for r in rows
    ]
    return markdown_table(header, cells, "lrlrrrrrrr")


def _verdict(ratio: float) -> str:
    """``pass`` / ``miss`` against :data:`TARGET_RATIO`, ``n/a`` when not measured."""
    if math.isnan(ratio):
        return "n/a"
    return check("HVP / train", ratio, TARGET_RATIO, at_least=True).status


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the projection."""
    parser = make_parser("bench.gpu", __doc__)
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
        "--backends",
        nargs="*",
        choices=HVP_BACKENDS,
        default=None,
        help="HVP backends to compare (default: all on CUDA, all but compile on the CPU; "
        "none: skip the comparison)",
    )
    parser.add_argument(
        "--density-effect",
        action="store_true",
        help="also measure the effect of reduced-precision HVPs on the "
        "density of a small CNN (against float64 HVPs)",
    )
    args = parser.parse_args(argv)
    config = override(
        GpuConfig.tiny() if (args.tiny or not torch.cuda.is_available()) else GpuConfig(),
        models=args.models and tuple(args.models),
        precisions=args.precision and tuple(args.precision),
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        backends=None if args.backends is None else tuple(args.backends),
    )
    config.apply_threads()
    device = torch.device(config.device)
    name = machine_name(device)
    print(
        f"hessnb GPU benchmark on {name}; torch {torch.__version__}; "
        f"{config.image_size} px, batch {config.batch_size} x {config.batches} batches, "
        "synthetic data"
    )
    start = time.perf_counter()
    rows = measure(config)
    print(format_table(rows, device))
    if config.backends:
        images = config.batches * config.batch_size
        print(f"\nHVP backends (fp32, no graph cache, {images} images per pass):")
        print(backend_table(measure_backends(config), images, device))
    steps = config.slq.lanczos_steps
    print(f"\nprojected hours of a {steps}-step spectrum (from the HVP img/s above; {name}):")
    unit = "GPU" if device.type == "cuda" else "CPU process"
    print(format_projection(rows, unit, steps=steps))
    if args.density_effect:
        reduced = [p for p in PRECISIONS if device.type == "cuda" or p != "tf32"]
        print("\neffect of the HVP precision on the density, " + density_effect(device, reduced))
    print(f"\nbenchmark took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
