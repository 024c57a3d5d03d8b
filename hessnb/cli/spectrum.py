"""``hessnb spectrum``: the spectrum of one model checkpoint, or of several as a run.

Each checkpoint becomes one ``step`` of the run file (the number in its file name, e.g.
``ckpt_1200.pt`` -> step 1200, else its position). A checkpoint whose step is already in
the run file is not recomputed, so an interrupted command resumes where it stopped (at
checkpoint granularity: a spectrum interrupted half-way is computed again).

Scale
-----
- ``torchrun --nproc-per-node=G -m hessnb spectrum ...`` splits the data into contiguous
  shards, one per process, all-reduces every pass, and writes the run file from rank 0.
- Before any data is read the command states the memory it needs
  (:func:`hessnb.linalg.memory.plan_memory`): the float64 Krylov basis (``probes x steps x
  n_params x 8`` bytes per process) on the GPU, in pinned CPU memory or in a memory-mapped
  file (``--placement``; ``auto`` picks the first that fits), plus float64 work vectors on
  the device. It refuses, naming the options that would fit, when the chosen placement
  cannot hold it.
- ``--precision`` (:mod:`hessnb.hessian.precision`): ``fp32`` (default; TF32 off on CUDA),
  ``tf32`` (CUDA, Ampere or newer) or ``bf16`` (autocast of the forward pass). Lanczos
  always runs in float64. On CUDA the model is channels-last and cuDNN's autotuner is on.
  The accuracy of each precision: see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import glob
import math
import re
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hessnb import distributed
from hessnb.cli.options import (
    add_batch_options,
    add_slq_options,
    bn_mode,
    hessian_batch_size,
    set_threads,
    tracker_options,
)
from hessnb.hessian.params import ParameterSpace
from hessnb.hessian.precision import PRECISIONS, configure_backends, prepare_model
from hessnb.linalg.memory import plan_memory
from hessnb.reference import data, models
from hessnb.reference.training import load_checkpoint
from hessnb.tracking import Tracker

__all__ = ["HELP", "add_arguments", "checkpoint_steps", "load_weights", "run"]

HELP = "spectrum of a model checkpoint (or several)"
#: Data passes per spectrum besides the Lanczos steps: the operator's first pass and its
#: determinism check, then the tracker's loss, gradient and H g passes.
EXTRA_PASSES = 5
#: Datasets up to this many bytes (as tensors) are decoded once and kept in memory.
MATERIALISE_BYTES = 2 * 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``hessnb spectrum`` (with the SLQ options) to ``parser``."""
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
    add_batch_options(parser, train_default=256, fallback=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="HVP arithmetic: fp32 (default, TF32 off), tf32 (CUDA, Ampere+) or bf16 "
        "(autocast; less accurate, see BENCHMARKS.md); Lanczos is float64 regardless",
    )
    parser.add_argument(
        "--no-channels-last", action="store_true", help="CUDA: keep the default memory format"
    )
    add_slq_options(parser)
    parser.add_argument("--out", default="run.nc", help="run file to write or resume")


def checkpoint_steps(pattern: str) -> list[tuple[int, Path]]:
    """Checkpoints matching ``pattern`` with their steps, sorted by step.

    The step of a checkpoint is the last number in its file name when every name has one
    and they are distinct, else its position in the sorted names.
    """
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


def _batches(
    part: Dataset, args: argparse.Namespace, device: torch.device, batch_size: int
) -> Iterable:
    """Fixed batches of this rank's shard: in memory when small, else a DataLoader."""
    first = part[0][0]
    size = first.numel() * first.element_size() if isinstance(first, torch.Tensor) else 0
    if size * len(part) <= MATERIALISE_BYTES:
        return data.fixed_batches(part, batch_size, num_workers=args.workers)
    return DataLoader(
        part,
        batch_size=batch_size,
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
def run(args: argparse.Namespace) -> int:
    """Run ``hessnb spectrum`` from parsed options (also under torchrun). Returns 0."""
    set_threads(args)
    if (args.weights is None) == (args.checkpoints is None):
        raise ValueError("pass exactly one of --weights CHECKPOINT or --checkpoints 'GLOB'")
    started = distributed.init_from_env(
        None if args.device is None else torch.device(args.device).type
    )
    try:
        return _compute(args)
    finally:
        if started:
            distributed.shutdown()


def _compute(args: argparse.Namespace) -> int:
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
    # blocks run one Lanczos per block and probe, each with a full-length basis
    blocks = 1 if args.blocks is None else len(ParameterSpace(model).blocks(args.blocks).labels)
    plan = plan_memory(
        n_params,
        args.lanczos_steps,
        args.probes * blocks,
        args.top_k,
        args.placement,
        device,
        distributed.local_world_size(),
    )
    _say(
        f"hessnb spectrum: {args.model} ({n_params:,} parameters) on {device}"
        f"{f' x {ranks} processes' if ranks > 1 else ''}, precision {args.precision}"
    )
    _say(plan.describe())
    if bn_mode(args) == "train" and ranks > 1:
        _say(
            "note: --bn-mode train uses the statistics of each batch, and each process "
            "batches its own shard, so the Hessian depends on the number of processes"
        )
    model = prepare_model(model, device, args.precision, not args.no_channels_last)
    dataset = data.load(args.data, **_dataset_kwargs(args))
    part = distributed.shard(dataset)
    batches = _batches(part, args, device, hessian_batch_size(args, model))
    metered = _Metered(batches, ranks)
    tracker = Tracker(
        model,
        F.cross_entropy,
        metered,
        args.out,
        every=[s for s, _ in items],
        **tracker_options(args, placement=plan.placement),
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
