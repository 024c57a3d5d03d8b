"""Options shared by the subcommands and what they mean, in one place.

``hessnb track`` and ``hessnb spectrum`` take the same SLQ options
(:func:`add_slq_options`); :func:`slq_settings` and :func:`tracker_options` turn them into
an :class:`~hessnb.SLQSettings` and :class:`~hessnb.Tracker` keywords.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from hessnb.hessian.curvature import CURVATURES
from hessnb.hessian.datapass import BN_MODES, BN_TYPES
from hessnb.hessian.params import BLOCK_CHOICES
from hessnb.linalg.memory import PLACEMENTS
from hessnb.settings import SLQSettings

__all__ = [
    "add_batch_options",
    "add_runtime_options",
    "add_slq_options",
    "bn_mode",
    "hessian_batch_size",
    "set_threads",
    "slq_settings",
    "tracker_options",
]

_DEFAULTS = SLQSettings()


def add_runtime_options(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    """Add ``--no-progress`` and ``--threads`` (CPU threads; ``threads`` is the default)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    default = "torch's choice" if threads is None else threads
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"CPU threads for torch (default: {default})",
    )


def add_slq_options(parser: argparse.ArgumentParser) -> None:
    """Add the SLQ options: ``--lanczos-steps``, ``--probes``, ``--top-k``, ``--seed``,
    ``--no-deflate``, ``--bn-mode``, ``--curvature``, ``--blocks``, ``--placement``, and the
    runtime options (:func:`add_runtime_options`)."""
    parser.add_argument(
        "--lanczos-steps",
        type=int,
        default=_DEFAULTS.lanczos_steps,
        help="Lanczos steps per probe (default %(default)s)",
    )
    parser.add_argument(
        "--probes", type=int, default=_DEFAULTS.probes, help="probe vectors (default %(default)s)"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=_DEFAULTS.top_k,
        help="top eigenvalues (and their vectors) kept (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=_DEFAULTS.seed, help="random seed (default %(default)s)"
    )
    parser.add_argument(
        "--no-deflate",
        dest="deflate",
        action="store_false",
        help="plain SLQ: do not give converged top Ritz values their exact weight 1/n "
        "(deflated SLQ is the default)",
    )
    parser.add_argument(
        "--bn-mode",
        choices=BN_MODES,
        default=None,
        help="batch norm in the Hessian: batch statistics (train, the paper's setting; "
        "default) or running statistics (eval)",
    )
    parser.add_argument(
        "--curvature",
        nargs="+",
        choices=CURVATURES,
        default=["hessian"],
        help="curvature matrices recorded: hessian (default), ggn (Gauss-Newton), fisher "
        "(empirical Fisher); several give a curvature dimension in the run file",
    )
    parser.add_argument(
        "--blocks",
        choices=BLOCK_CHOICES,
        default=None,
        help="spectra of the diagonal blocks instead of the whole: one per layer or per "
        "parameter tensor (a block dimension in the run file)",
    )
    parser.add_argument(
        "--placement",
        default="auto",
        choices=PLACEMENTS,
        help="where the float64 Krylov basis lives: device (GPU), cpu (pinned RAM), mmap "
        "(a file in $TMPDIR) or auto (the first that fits; default)",
    )
    add_runtime_options(parser)


def slq_settings(args: argparse.Namespace) -> SLQSettings:
    """The :class:`~hessnb.SLQSettings` of parsed :func:`add_slq_options` options."""
    return SLQSettings(
        lanczos_steps=args.lanczos_steps,
        probes=args.probes,
        top_k=args.top_k,
        seed=args.seed,
        deflate=args.deflate,
    )


def bn_mode(args: argparse.Namespace) -> str:
    """``--bn-mode``: ``train`` (batch statistics, the paper's setting) unless given."""
    return args.bn_mode or "train"


def add_batch_options(parser: argparse.ArgumentParser, train_default: int, fallback: int) -> None:
    """Add ``--train-batch-size`` and ``--batch-size`` (the Hessian's batches).

    In BN train mode the Hessian's batch norm uses each batch's statistics, so
    ``--batch-size`` defaults to the training batch size for models with batch norm
    (else to ``fallback``, a size chosen for speed).
    """
    parser.add_argument(
        "--train-batch-size",
        type=int,
        default=train_default,
        help="training batch size (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size of the Hessian's passes (default: the training batch size for "
        f"models with batch norm in BN train mode, else {fallback})",
    )
    parser.set_defaults(hessian_batch_fallback=fallback)


def hessian_batch_size(args: argparse.Namespace, model: torch.nn.Module) -> int:
    """The Hessian's batch size of parsed :func:`add_batch_options` options for ``model``."""
    if args.batch_size is not None:
        return args.batch_size
    has_bn = any(isinstance(m, BN_TYPES) for m in model.modules())
    if has_bn and bn_mode(args) == "train":
        return args.train_batch_size
    return args.hessian_batch_fallback


def tracker_options(args: argparse.Namespace, placement: str | None = None) -> dict[str, Any]:
    """:class:`~hessnb.Tracker` keywords of parsed :func:`add_slq_options` options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options (with ``--bn``).
    placement : str, optional
        Placement of the Krylov basis instead of ``--placement`` (e.g. the one a memory
        plan chose).

    Returns
    -------
    dict
        ``settings``, ``bn_mode``, ``curvature`` (one name, or a list of several),
        ``blocks``, ``placement`` and ``train_batch_size``.
    """
    curvature = args.curvature
    return {
        "settings": slq_settings(args),
        "bn_mode": bn_mode(args),
        "curvature": curvature[0] if len(curvature) == 1 else list(curvature),
        "blocks": args.blocks,
        "placement": args.placement if placement is None else placement,
        "train_batch_size": getattr(args, "train_batch_size", None),
    }


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` to torch (nothing when it was not given).

    Raises
    ------
    ValueError
        When ``--threads`` is below 1.
    """
    if args.threads is None:
        return
    if args.threads < 1:
        raise ValueError("--threads must be >= 1")
    torch.set_num_threads(args.threads)
