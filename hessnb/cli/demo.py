"""``hessnb demo``: train a digits CNN with and without batch norm and track both."""

from __future__ import annotations

import argparse
import dataclasses

from hessnb.cli.options import add_runtime_options, set_threads
from hessnb.reference.demo import DemoSettings, run_demo, summarise
from hessnb.runfile import combine_runs

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a digits CNN with and without BN, track both"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``hessnb demo`` to ``parser``."""
    parser.add_argument("--out", default="hessnb-demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="SGD steps (default 300; 150 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--no-report", action="store_true", help="write only the run files")
    add_runtime_options(parser, threads=1)


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed options; print what the runs show. Returns 0."""
    set_threads(args)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.train_steps is not None:
        settings = dataclasses.replace(settings, steps=args.train_steps)
    print(
        f"hessnb demo: CNN ({'/'.join(map(str, settings.channels))} channels) on "
        f"{settings.examples} scikit-learn digits, {settings.steps} SGD steps, with and without "
        f"batch norm (Hessian in BN train mode over batches of {settings.batch_size}); "
        f"{settings.slq.lanczos_steps} Lanczos steps per spectrum"
    )
    paths = run_demo(args.out, settings, progress=not args.no_progress, report=not args.no_report)
    combined = combine_runs({k: paths[k] for k in ("no-bn", "bn")})
    print("\nwrote")
    for key, path in paths.items():
        print(f"  {key:>7}: {path}")
    print("\nat the last recorded step:")
    print(summarise(combined))
    if "report" in paths:
        print(f"\nopen {paths['report']} in a browser.")
    print(
        "In Jupyter:\n"
        f"  import hessnb; ds = hessnb.open_run('{paths['no-bn']}'); hessnb.explore(ds)"
    )
    return 0
