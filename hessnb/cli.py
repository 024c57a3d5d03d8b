"""The ``hessnb`` command: ``demo``, ``track``, ``spectrum`` and ``report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from hessnb.demo import DemoSettings, run_demo, summarise
    from hessnb.runfile import combine_runs

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.steps is not None:
        settings = DemoSettings(**{**settings.__dict__, "steps": args.steps})
    print(
        f"hessnb demo: small CNN on {settings.examples} scikit-learn digits, "
        f"{settings.steps} SGD steps, with and without batch norm (Hessian in BN train "
        f"mode); {settings.lanczos_steps} Lanczos steps per spectrum"
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


def _track(args: argparse.Namespace) -> int:
    import torch
    from torch.nn import functional as F

    from hessnb import data, models
    from hessnb.commands import slq_options
    from hessnb.schedule import make_schedule
    from hessnb.tracking import Tracker
    from hessnb.training import train

    dataset = data.load(args.data)
    torch.manual_seed(args.seed)
    model = (
        models.build(args.model, bn=args.bn)
        if args.model in models.MODELS
        else models.build(args.model)
    )
    every = int(args.every) if args.every.isdigit() else args.every
    tracker = Tracker(
        model,
        F.cross_entropy,
        data.fixed_batches(dataset, args.batch_size),
        args.out,
        every=make_schedule(every),
        **slq_options(args),
        name=args.name,
        progress=not args.no_progress,
    )
    train(
        model,
        dataset,
        steps=args.steps,
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


def _spectrum(args: argparse.Namespace) -> int:
    from hessnb.commands import spectrum_command

    return spectrum_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hessnb", description="Hessian eigenvalue densities through training."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a digits CNN with and without BN, track both")
    demo.add_argument("--out", default="hessnb-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=None, help="SGD steps (default 200; 40 quick)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--no-report", action="store_true", help="write only the run files")
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: fastest for these tiny models)",
    )
    demo.set_defaults(func=_demo)

    track = sub.add_parser("track", help="train a reference model and track its spectrum")
    track.add_argument(
        "--model",
        default="cnn",
        help="mlp, cnn, resnet32, a torchvision name, or package.module:factory "
        "for your own model (default cnn)",
    )
    track.add_argument("--bn", action="store_true", help="with batch normalisation")
    track.add_argument("--data", default="digits", help="digits or cifar10:DIR")
    track.add_argument("--steps", type=int, default=300, help="SGD steps")
    track.add_argument("--lr", type=float, default=0.05)
    track.add_argument("--lr-drops", type=int, nargs="*", default=[], help="steps of lr x0.1")
    track.add_argument("--train-batch-size", type=int, default=64)
    track.add_argument("--batch-size", type=int, default=512, help="batch size of Hessian passes")
    track.add_argument("--every", default="log", help="N, log, or log:N (default log)")
    _add_slq_options(track)
    track.add_argument("--name", default=None, help="label of the run")
    track.add_argument("--checkpoint-dir", default=None, help="save/resume training state here")
    track.add_argument("--out", default="run.nc")
    track.set_defaults(func=_track)

    spec = sub.add_parser("spectrum", help="spectrum of a model checkpoint (or several)")
    from hessnb.commands import add_spectrum_arguments

    add_spectrum_arguments(spec)
    _add_slq_options(spec, "--steps", "--lanczos-steps")
    spec.set_defaults(func=_spectrum)

    from hessnb.viz.report import add_arguments, report_command

    report = sub.add_parser("report", help="write the interactive HTML report of runs")
    add_arguments(report)
    report.set_defaults(func=report_command)
    return parser


def _add_slq_options(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument(
        *(flags or ("--lanczos-steps",)),
        type=int,
        default=90,
        dest="lanczos_steps",
        help="Lanczos steps per probe (default 90)",
    )
    parser.add_argument("--probes", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--bn-mode",
        choices=("eval", "train"),
        default=None,
        help="batch statistics (train, the paper's setting for BN networks) "
        "or running statistics (eval); default train with --bn, else eval",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hessnb`` command."""
    args = _parser().parse_args(argv)
    if getattr(args, "bn_mode", "unset") is None:
        args.bn_mode = "train" if getattr(args, "bn", False) else "eval"
    if getattr(args, "threads", None) is not None:
        import torch

        if args.threads < 1:
            print(f"hessnb {args.command}: error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, MemoryError) as exc:
        print(f"hessnb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
