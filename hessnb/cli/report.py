"""``hessnb report RUN... --html out.html``: the self-contained interactive HTML report."""

from __future__ import annotations

import argparse

from hessnb.viz.report import MAX_STEPS, REPORT_POINTS, load_runs, write_report

__all__ = ["HELP", "add_arguments", "run"]

HELP = "write the interactive HTML report of runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``hessnb report`` to ``parser``."""
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run files (netCDF)")
    parser.add_argument("--html", required=True, metavar="OUT", help="the HTML file to write")
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="one kernel width in eigenvalue units for every step (default: each step's own "
        "paper width, sigma^2 = 1e-5 max(1, range))",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=REPORT_POINTS,
        help="most grid points per step's density; the kernel is widened (and the chart says "
        "so) only when they cannot resolve it (default %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=MAX_STEPS,
        help="embed at most this many steps (default %(default)s)",
    )
    parser.add_argument(
        "--block",
        default=None,
        help="for runs recorded with blocks (per-layer spectra): the block the density views "
        "show (default: the first); the layer heat map shows every block",
    )
    parser.add_argument("--title", default="hessnb report", help="page heading")


def run(args: argparse.Namespace) -> int:
    """Write the report from parsed options. Returns 0."""
    path = write_report(
        load_runs(args.runs),
        args.html,
        sigma=args.sigma,
        points=args.points,
        max_steps=args.max_steps,
        title=args.title,
        block=args.block,
    )
    print(f"wrote {path}")
    return 0
