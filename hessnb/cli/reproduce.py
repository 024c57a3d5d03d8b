"""``hessnb reproduce``: the paper's batch-norm experiments (E1-E5) and their verdicts."""

from __future__ import annotations

import argparse

from hessnb.cli.options import add_runtime_options, set_threads
from hessnb.reference.experiments import SCALES, run_experiments
from hessnb.reference.verdicts import evaluate
from hessnb.runfile import open_run

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run the paper's batch-norm experiments and print their verdicts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``hessnb reproduce`` to ``parser``."""
    parser.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="quick",
        help="quick (minutes on a CPU), shipped (the runs in notebooks/data/paper, under an "
        "hour on a 2-core CPU) or full (CIFAR-10 ResNet-32 on a GPU; not yet run)",
    )
    parser.add_argument(
        "--out", default="hessnb-paper", help="output folder (default: %(default)s)"
    )
    add_runtime_options(parser, threads=1)


def run(args: argparse.Namespace) -> int:
    """Train, track and judge; print one line per verdict. Returns 0."""
    set_threads(args)
    scale = SCALES[args.scale]
    print(
        f"hessnb reproduce: scale {scale.name}: {scale.model} on {scale.data}, {scale.steps} SGD "
        f"steps (lr {scale.lr} dropped tenfold at step {scale.lr_drop}), "
        f"{len(scale.record)} records of {scale.slq.lanczos_steps} Lanczos steps"
    )
    paths = run_experiments(args.out, scale, progress=not args.no_progress)
    runs = {name: open_run(path) for name, path in paths.items()}
    for verdict in evaluate(runs):
        print(verdict)
    return 0
