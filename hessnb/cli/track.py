"""``hessnb track``: train a reference (or your own) model and track its spectrum."""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from hessnb.cli.options import (
    add_batch_options,
    add_slq_options,
    hessian_batch_size,
    set_threads,
    tracker_options,
)
from hessnb.reference import data, models
from hessnb.reference.training import train
from hessnb.tracking import Tracker, make_schedule

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a reference model and track its spectrum"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``hessnb track`` to ``parser``."""
    parser.add_argument(
        "--model",
        default="cnn",
        help="mlp, cnn, resnet32, a torchvision name, or package.module:factory "
        "for your own model (default cnn)",
    )
    parser.add_argument("--bn", action="store_true", help="with batch normalisation")
    parser.add_argument("--data", default="digits", help="digits or cifar10:DIR")
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps (default 300)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--lr-drops", type=int, nargs="*", default=[], help="steps of lr x0.1")
    add_batch_options(parser, train_default=128, fallback=512)
    parser.add_argument("--every", default="log", help="N, log, or log:N (default log)")
    parser.add_argument(
        "--top-every",
        type=int,
        default=None,
        help="also record the top-k eigenvalues and gradient statistics every N steps "
        "between densities, warm-started (a few HVPs each; default: off)",
    )
    add_slq_options(parser)
    parser.add_argument("--name", default=None, help="label of the run")
    parser.add_argument("--checkpoint-dir", default=None, help="save/resume training state here")
    parser.add_argument("--out", default="run.nc", help="run file to write or resume")


def run(args: argparse.Namespace) -> int:
    """Train and track from parsed options. Returns 0."""
    set_threads(args)
    dataset = data.load(args.data)
    torch.manual_seed(args.seed)
    kwargs = {"bn": args.bn} if args.model in models.MODELS else {}
    model = models.build(args.model, **kwargs)
    every = int(args.every) if args.every.isdigit() else args.every
    tracker = Tracker(
        model,
        F.cross_entropy,
        data.fixed_batches(dataset, hessian_batch_size(args, model)),
        args.out,
        every=make_schedule(every),
        top_every=args.top_every,
        **tracker_options(args),
        name=args.name,
        progress=not args.no_progress,
    )
    train(
        model,
        dataset,
        steps=args.train_steps,
        lr=args.lr,
        batch_size=args.train_batch_size,
        lr_drops=args.lr_drops,
        tracker=tracker,
        checkpoint_dir=args.checkpoint_dir,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out} ({len(tracker.steps)} steps recorded)")
    return 0
