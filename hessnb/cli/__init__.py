"""The ``hessnb`` command: ``demo``, ``track``, ``spectrum`` and ``report``.

Each subcommand is one module of this package with a one-line ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; the options they share are in
:mod:`hessnb.cli.options`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hessnb.cli import demo, report, reproduce, spectrum, track

__all__ = ["build_parser", "main"]

SUBCOMMANDS = {
    "demo": demo,
    "track": track,
    "spectrum": spectrum,
    "reproduce": reproduce,
    "report": report,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``hessnb`` parser with one subparser per module in :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="hessnb", description="Hessian eigenvalue densities through training."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hessnb`` command; returns the exit status.

    Errors in the arguments' values (``ValueError``), missing files and runs that do not
    fit in memory are printed as ``hessnb <command>: error: ...`` and return 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, MemoryError) as exc:
        print(f"hessnb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
