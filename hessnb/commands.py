"""``hessnb spectrum``: the spectrum of one model checkpoint, or of several as a run.

Each checkpoint becomes one ``step`` of the run file (the number in its file name, e.g.
``ckpt_1200.pt`` -> step 1200, else its position). A checkpoint whose step is already in
the run file is not recomputed, so an interrupted command resumes where it stopped (at
checkpoint granularity: a spectrum interrupted half-way is computed again).

Scale (ImageNet-size networks)
------------------------------
- ``torchrun --nproc-per-node=G -m hessnb spectrum ...`` splits the data into contiguous
  shards, one per process, all-reduces every pass, and writes the run file from rank 0.
- Before any data is read the command states the memory it needs: the float64 Krylov basis
  (``probes x steps x n_params x 8`` bytes per process) on the GPU, in pinned CPU memory or
  in a memory-mapped file (``--basis``; ``auto`` picks the first that fits), plus float64
  work vectors on the device. It refuses, naming the options that would fit, when the
  chosen placement cannot hold it.
- ``--precision``: ``fp32`` (default; TF32 switched *off* on CUDA, so the HVPs are true
  float32), ``tf32`` (TF32 matmuls and convolutions on Ampere or newer GPUs) or ``bf16``
  (autocast of the forward pass; the double backward follows its dtypes). Lanczos always
  runs in float64. On CUDA the model is converted to channels-last and cuDNN's autotuner
  is on. Measured effect of ``bf16`` HVPs against float64 ones (small CNN with BN on
  digits, 60 Lanczos steps): Wasserstein-1 distance 1e-4 of the spectral range, top
  eigenvalue off by 3 %, trace by 0.3 % (``fp32``: 1e-8, 2e-6, 3e-8); see BENCHMARKS.md,
  section "GPU (issue 6)". TF32 could not be measured (no GPU when this was written).
"""

from __future__ import annotations

import argparse
import glob
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hessnb import data, distributed, models
from hessnb.basis import PLACEMENTS, _human, available_bytes, basis_bytes
from hessnb.tracking import Tracker
from hessnb.training import load_checkpoint

__all__ = [
    "PRECISIONS",
    "MemoryPlan",
    "add_spectrum_arguments",
    "checkpoint_steps",
    "configure_backends",
    "load_weights",
    "plan_memory",
    "prepare_model",
    "spectrum_command",
]

PRECISIONS = ("fp32", "tf32", "bf16")
#: Data passes per spectrum besides the Lanczos steps: the operator's first pass and its
#: determinism check, then the tracker's loss, gradient and H g passes.
EXTRA_PASSES = 5
#: Datasets up to this many bytes (as tensors) are decoded once and kept in memory.
MATERIALISE_BYTES = 2 * 2**30
_HEADROOM = 1.25  # "auto" wants this much more free memory than it needs


def add_spectrum_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hessnb spectrum`` (the SLQ options are added by the CLI)."""
    parser.add_argument(
        "--model",
        required=True,
        help="mlp, cnn, resnet32, a torchvision name such as resnet18, or "
        "package.module:factory for your own model",
    )
    parser.add_argument("--bn", action="store_true", help="reference models: with batch norm")
    parser.add_argument("--weights", default=None, help="one checkpoint (.pt state dict)")
    parser.add_argument(
        "--checkpoints", default=None, help="glob of checkpoints, e.g. 'ckpt_*.pt' (one step each)"
    )
    parser.add_argument("--data", default="digits", help="digits, cifar10:DIR or imagenet:DIR")
    parser.add_argument(
        "--subset-per-class", type=int, default=None, help="use the first N images of every class"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="imagenet: centre crop in pixels after resizing to 8/7 of it (default 224)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--basis",
        default="auto",
        choices=PLACEMENTS,
        help="where the float64 Krylov basis lives: device (GPU), cpu (pinned "
        "RAM), mmap (a file in $TMPDIR) or auto (the first that fits; "
        "default)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="HVP arithmetic: fp32 (default, TF32 off), tf32 (CUDA, Ampere+) or "
        "bf16 (autocast; top eigenvalue off by ~3 %% in our test, see "
        "BENCHMARKS.md); Lanczos is float64 regardless",
    )
    parser.add_argument(
        "--no-channels-last", action="store_true", help="CUDA: keep the default memory format"
    )
    parser.add_argument("--out", default="run.nc", help="run file to write or resume")


def slq_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Tracker settings shared by every command (``--lanczos-steps`` and friends)."""
    return {
        "lanczos_steps": args.lanczos_steps,
        "probes": args.probes,
        "top_k": args.top_k,
        "bn_mode": args.bn_mode,
        "seed": args.seed,
    }


def checkpoint_steps(pattern: str) -> list[tuple[int, Path]]:
    """Checkpoints matching ``pattern`` with their steps, sorted by step."""
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no checkpoint matches {pattern!r}")
    numbers = [re.findall(r"\d+", p.stem) for p in paths]
    if all(numbers):
        steps = [int(n[-1]) for n in numbers]
        if len(set(steps)) == len(steps):
            return sorted(zip(steps, paths, strict=True))
    return list(enumerate(paths))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict (or ``{"model": state_dict}``) saved with torch.save.

    Uses ``torch.load(..., weights_only=True)``: checkpoints cannot run code.
    """
    state = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state)


# ---------------------------------------------------------------------- precision
def configure_backends(device: torch.device, precision: str) -> None:
    """Set cuDNN autotuning and the TF32 flags for ``precision`` on CUDA.

    ``fp32`` switches TF32 off explicitly (PyTorch allows it in cuDNN convolutions by
    default); ``tf32`` switches it on for matmuls and convolutions.

    Raises
    ------
    ValueError
        For an unknown precision, or ``tf32`` on a device other than CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision == "tf32":
            raise ValueError(
                "--precision tf32 needs a CUDA GPU (Ampere or newer); use fp32 or bf16"
            )
        return
    torch.backends.cudnn.benchmark = True
    mode = "tf32" if precision == "tf32" else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:  # pragma: no cover - older PyTorch
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"


def _autocast_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's forward under bf16 autocast, floating outputs cast back to float32."""
    with torch.autocast(module._hessnb_autocast, dtype=torch.bfloat16):
        out = type(module).forward(module, *args, **kwargs)
    return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def prepare_model(
    model: torch.nn.Module,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = True,
) -> torch.nn.Module:
    """Move ``model`` to ``device``, channels-last on CUDA, bf16 autocast if asked.

    The model keeps its class and parameter names (``bf16`` wraps the instance's
    ``forward``), so state dicts load into it unchanged and run files name the model.
    """
    model = model.to(device)
    if device.type == "cuda" and channels_last:
        model = model.to(memory_format=torch.channels_last)
    if precision == "bf16":
        # a method bound to the instance: copy.deepcopy rebinds it to the copy
        model._hessnb_autocast = device.type
        model.forward = types.MethodType(_autocast_forward, model)
    return model


# ---------------------------------------------------------------------- memory
def _free_disk(folder: str) -> int:
    return shutil.disk_usage(folder).free


@dataclass
class MemoryPlan:
    """Where the Krylov basis goes, what the run needs and what is free.

    Attributes
    ----------
    placement : {"device", "cpu", "mmap"}
        The chosen placement of the basis.
    basis : int
        Bytes of one process's basis (``probes x steps x n_params x 8``).
    working : int
        Approximate bytes of float64 work vectors (and model copies) per process on
        ``device``, activations of a batch not included.
    processes : int
        Processes on this machine (they share its RAM and disk).
    needs, free : dict
        Bytes needed and free per resource (``"device"``, ``"cpu"``, ``"disk"``) for
        ``placement``.
    """

    placement: str
    basis: int
    working: int
    processes: int
    device: torch.device
    needs: dict[str, int] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One paragraph for the user: what goes where, needed vs free."""
        gpu = self.device.type == "cuda"
        where = {
            "device": f"{self.device} memory" if gpu else "RAM",
            "cpu": "pinned RAM" if gpu else "RAM",
            "mmap": f"a memory-mapped file in {tempfile.gettempdir()}",
        }[self.placement]
        each = f" per process, {self.processes} processes" if self.processes > 1 else ""
        parts = [
            f"Krylov basis {_human(self.basis)} in {where}{each}",
            f"about {_human(self.working)} of work vectors on {self.device}",
        ]
        totals = ", ".join(
            f"{_RESOURCE[k]} {_human(v)} needed / {_human(self.free[k])} free"
            for k, v in self.needs.items()
        )
        return f"memory: {'; '.join(parts)} (+ activations of one batch). {totals}"


_RESOURCE = {"device": "GPU", "cpu": "RAM", "disk": "disk"}


def _requirements(
    placement: str, basis: int, working: int, processes: int, device: torch.device
) -> dict[str, int]:
    """Bytes per resource; GPU figures are per process (one GPU each)."""
    gpu = device.type == "cuda"
    needs = {"device": working} if gpu else {"cpu": working * processes}
    if placement == "device" and gpu:
        needs["device"] += basis
    elif placement in ("device", "cpu"):
        needs["cpu"] = needs.get("cpu", 0) + basis * processes
    else:
        needs["disk"] = basis * processes
    return needs


def plan_memory(
    n_params: int,
    steps: int,
    probes: int,
    top_k: int,
    basis: str,
    device: torch.device,
    processes: int = 1,
    param_bytes: int = 4,
) -> MemoryPlan:
    """Choose the basis placement and check that the run fits, before it starts.

    Parameters
    ----------
    n_params, steps, probes, top_k : int
        Size of the problem.
    basis : {"device", "cpu", "mmap", "auto"}
        Requested placement; ``auto`` takes the first of device, cpu, mmap with 25 %
        headroom.
    device : torch.device
        Where the model runs.
    processes : int
        Processes on this machine (torchrun's local world size), which share RAM and disk.
    param_bytes : int
        Bytes per model parameter (4 for float32).

    Raises
    ------
    MemoryError
        When the requested placement (or, for ``auto``, every placement) does not fit; the
        message names the needed and free sizes and the options that would fit.
    """
    if basis not in PLACEMENTS:
        raise ValueError(f"basis must be one of {PLACEMENTS}, got {basis!r}")
    nbytes = basis_bytes(probes, steps, n_params)
    # Lanczos q, w and Gram-Schmidt temporaries, products, tangents, Ritz vectors, g, Hg,
    # in float64; the model's parameters, gradients and first-backward graph.
    working = 8 * n_params * (6 * probes + top_k + 4) + 4 * param_bytes * n_params
    free = {
        "device": available_bytes("device", device) if device.type == "cuda" else 0,
        "cpu": available_bytes("cpu"),
        "disk": _free_disk(tempfile.gettempdir()),
    }
    options = {
        p: _requirements(p, nbytes, working, processes, device) for p in ("device", "cpu", "mmap")
    }

    def fits(placement: str, headroom: float) -> bool:
        return all(headroom * v <= free[k] for k, v in options[placement].items())

    if basis == "auto":
        chosen = next((p for p in ("device", "cpu", "mmap") if fits(p, _HEADROOM)), None)
    else:
        chosen = basis if fits(basis, 1.0) else None
    if chosen is None:
        raise MemoryError(_refusal(basis, options, free, nbytes, n_params, steps, probes))
    return MemoryPlan(
        chosen,
        nbytes,
        working,
        processes,
        device,
        options[chosen],
        {k: free[k] for k in options[chosen]},
    )


def _refusal(
    basis: str,
    options: dict[str, dict[str, int]],
    free: dict[str, int],
    nbytes: int,
    n_params: int,
    steps: int,
    probes: int,
) -> str:
    def need(placement: str) -> str:
        return ", ".join(
            f"{_RESOURCE[k]} {_human(v)} needed / {_human(free[k])} free"
            for k, v in options[placement].items()
        )

    head = (
        f"the run does not fit in memory: the float64 Krylov basis is {_human(nbytes)} "
        f"per process ({probes} probe(s) x {steps} steps x {n_params:,} parameters x 8 "
        "bytes)"
    )
    others = "; ".join(f"--basis {p}: {need(p)}" for p in options if p != basis)
    if basis != "auto":
        return (
            f"{head}, and --basis {basis} needs {need(basis)}. Change the option: "
            f"{others}; or lower --steps / --probes"
        )
    return (
        f"{head}, and no placement has room ({others}). Free memory or disk (--basis "
        "mmap writes to $TMPDIR: point it at a larger disk), or lower --steps / --probes"
    )


# ---------------------------------------------------------------------- progress
class _Metered:
    """Re-iterable batches that advance a progress bar by images and time each pass.

    Rates are of the whole job: this rank's images times the number of ranks (the ranks
    hold shards of equal size, to one image).
    """

    def __init__(self, batches: Iterable[tuple[Any, Any]], ranks: int) -> None:
        self.batches, self.ranks = batches, ranks
        self.bar: Any = None
        self.total_passes = 0
        self.rates: list[float] = []

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        start, seen = time.perf_counter(), 0
        for batch in self.batches:
            yield batch
            size = len(batch[1]) if isinstance(batch[1], torch.Tensor) else 1
            seen += size
            if self.bar is not None:
                self.bar.update(size * self.ranks)
        self.rates.append(seen * self.ranks / max(time.perf_counter() - start, 1e-9))
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"pass {len(self.rates)}/{self.total_passes}, {_rate(self.rates[-1])} img/s",
                refresh=False,
            )


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _say(*args: Any) -> None:
    if distributed.is_main():
        print(*args, flush=True)


# ---------------------------------------------------------------------- data
def _dataset_kwargs(args: argparse.Namespace) -> dict:
    name = args.data.partition(":")[0]
    if name == "imagenet":
        return {"subset_per_class": args.subset_per_class, "image_size": args.image_size}
    if name == "cifar10":
        return {"subset": None if args.subset_per_class is None else 10 * args.subset_per_class}
    return {}


def _batches(part: Dataset, args: argparse.Namespace, device: torch.device) -> Iterable:
    """Fixed batches of this rank's shard: in memory when small, else a DataLoader."""
    first = part[0][0]
    size = first.numel() * first.element_size() if isinstance(first, torch.Tensor) else 0
    if size * len(part) <= MATERIALISE_BYTES:
        return data.fixed_batches(part, args.batch_size, num_workers=args.workers)
    return DataLoader(
        part,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )


def _device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------------- the command
def spectrum_command(args: argparse.Namespace) -> int:
    """Run ``hessnb spectrum`` from parsed arguments (also under torchrun)."""
    if (args.weights is None) == (args.checkpoints is None):
        raise ValueError("pass exactly one of --weights CHECKPOINT or --checkpoints 'GLOB'")
    started = distributed.init_from_env(
        None if args.device is None else torch.device(args.device).type
    )
    try:
        return _run(args)
    finally:
        if started:
            distributed.shutdown()


def _run(args: argparse.Namespace) -> int:
    items = distributed.from_main(
        lambda: (
            [(0, Path(args.weights))]
            if args.weights is not None
            else checkpoint_steps(args.checkpoints)
        )
    )
    for _, path in items:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
    device = _device(args)
    configure_backends(device, args.precision)
    kwargs = {"bn": args.bn} if args.model in models.MODELS else {}
    model = models.build(args.model, **kwargs)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ranks = distributed.world_size()
    plan = plan_memory(
        n_params,
        args.lanczos_steps,
        args.probes,
        args.top_k,
        args.basis,
        device,
        distributed.local_world_size(),
    )
    _say(
        f"hessnb spectrum: {args.model} ({n_params:,} parameters) on {device}"
        f"{f' x {ranks} processes' if ranks > 1 else ''}, precision {args.precision}"
    )
    _say(plan.describe())
    if args.bn_mode == "train" and ranks > 1:
        _say(
            "note: --bn-mode train uses the statistics of each batch, and each process "
            "batches its own shard, so the Hessian depends on the number of processes"
        )
    model = prepare_model(model, device, args.precision, not args.no_channels_last)
    dataset = data.load(args.data, **_dataset_kwargs(args))
    part = distributed.shard(dataset)
    metered = _Metered(_batches(part, args, device), ranks)
    tracker = Tracker(
        model,
        F.cross_entropy,
        metered,
        args.out,
        every=[s for s, _ in items],
        **slq_options(args),
        basis=plan.placement,
        transfer=True,
        progress=False,
        attrs={"precision": args.precision, "data": args.data},
    )
    todo = [(s, p) for s, p in items if tracker.due(s)]
    passes = args.lanczos_steps + EXTRA_PASSES
    _say(
        f"data: {len(dataset):,} images{f' in {ranks} shards' if ranks > 1 else ''}; "
        f"{len(todo)} of {len(items)} checkpoint(s) to compute, {passes} passes over the "
        "data each"
    )
    metered.total_passes = passes * len(todo)
    metered.bar = tqdm(
        total=metered.total_passes * len(dataset),
        unit="img",
        unit_scale=True,
        desc="hessnb spectrum",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 60.0,
        disable=args.no_progress or not distributed.is_main(),
    )
    try:
        for step, path in items:
            if (step, path) not in todo:
                _say(f"step {step} ({path.name}) already in {args.out}; skipped")
                continue
            _record(tracker, metered, model, step, path, args.out)
    finally:
        metered.bar.close()
    _say(f"wrote {args.out}")
    return 0


def _record(
    tracker: Tracker, metered: _Metered, model: torch.nn.Module, step: int, path: Path, out: str
) -> None:
    load_weights(model, path)
    first, start = len(metered.rates), time.perf_counter()
    tracker.record(step)
    seconds = time.perf_counter() - start
    rates = metered.rates[first:]
    rate = statistics.median(rates) if rates else math.nan  # most passes are HVPs
    top = tracker.dataset.sel(step=step)
    _say(
        f"step {step} ({path.name}): top eigenvalue {float(top.top_eigenvalues[0]):.6g}, "
        f"trace {float(top.trace):.6g}; {seconds:.1f} s, HVP {_rate(rate)} img/s; "
        f"written to {out}"
    )
