"""``hessnb spectrum``: the spectrum of one model checkpoint, or of several as a run.

Each checkpoint becomes one ``step`` of the run file (the number in its file name, e.g.
``ckpt_1200.pt`` -> step 1200, else its position). A checkpoint whose step is already in
the run file is not recomputed, so an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import re
from pathlib import Path

import torch
from torch.nn import functional as F

from hessnb import data, models
from hessnb.tracking import Tracker
from hessnb.training import load_checkpoint

__all__ = ["add_spectrum_arguments", "checkpoint_steps", "load_weights", "spectrum_command"]


def add_spectrum_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hessnb spectrum`` (the SLQ options are added by the CLI)."""
    parser.add_argument("--model", required=True,
                        help="mlp, cnn, resnet32 or a torchvision name such as resnet18")
    parser.add_argument("--bn", action="store_true", help="reference models: with batch norm")
    parser.add_argument("--weights", default=None, help="one checkpoint (.pt state dict)")
    parser.add_argument("--checkpoints", default=None,
                        help="glob of checkpoints, e.g. 'ckpt_*.pt' (one step each)")
    parser.add_argument("--data", default="digits", help="digits, cifar10:DIR or imagenet:DIR")
    parser.add_argument("--subset-per-class", type=int, default=None,
                        help="use the first N images of every class")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--basis", default="auto", choices=("device", "cpu", "mmap", "auto"),
                        help="where the Krylov basis lives (default auto)")
    parser.add_argument("--out", default="run.nc", help="run file to write or resume")


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


def _dataset_kwargs(args: argparse.Namespace) -> dict:
    name = args.data.partition(":")[0]
    if name == "imagenet":
        return {"subset_per_class": args.subset_per_class}
    if name == "cifar10":
        return {"subset": None if args.subset_per_class is None else 10 * args.subset_per_class}
    return {}


def spectrum_command(args: argparse.Namespace) -> int:
    """Run ``hessnb spectrum`` from parsed arguments."""
    if (args.weights is None) == (args.checkpoints is None):
        raise ValueError("pass exactly one of --weights CHECKPOINT or --checkpoints 'GLOB'")
    items = ([(0, Path(args.weights))] if args.weights is not None
             else checkpoint_steps(args.checkpoints))
    for _, path in items:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs = {"bn": args.bn} if args.model in models.MODELS else {}
    model = models.build(args.model, **kwargs).to(device)
    dataset = data.load(args.data, **_dataset_kwargs(args))
    batches = data.fixed_batches(dataset, args.batch_size, num_workers=args.workers,
                                 materialise=len(dataset) <= 20_000)
    tracker = Tracker(
        model, F.cross_entropy, batches, args.out, every=[s for s, _ in items],
        lanczos_steps=args.lanczos_steps, probes=args.probes, top_k=args.top_k,
        bn_mode=args.bn_mode, seed=args.seed, basis=args.basis, transfer=True,
        progress=not args.no_progress,
    )
    for step, path in items:
        if not tracker.due(step):
            print(f"step {step} ({path.name}) already in {args.out}; skipped")
            continue
        load_weights(model, path)
        tracker.record(step)
        top = tracker.dataset.sel(step=step)
        print(f"step {step} ({path.name}): top eigenvalue "
              f"{float(top.top_eigenvalues[0]):.6g}, trace {float(top.trace):.6g}")
    print(f"wrote {args.out}")
    return 0
