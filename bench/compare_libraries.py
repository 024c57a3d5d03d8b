"""Back-to-back one-probe SLQ wall times: hessnb, hessian-eigenthings, curvlinops.

Run on a quiet machine, from the repository root: ``python -m bench.compare_libraries``
(needs both libraries installed, e.g. ``pip install --no-deps hessian-eigenthings
curvlinops-for-pytorch``; they are never dependencies of hessnb). Same model, data and
set-up as ``python -m bench.cpu``; each hessnb run includes building its operator.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch.nn import functional as F

from bench.common import digits_batches, digits_cnn, make_parser, override, timed
from bench.cpu import CpuConfig
from bench.libraries import curvlinops_slq, eigenthings_slq
from hessnb import HessianOperator, spectrum

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Time hessnb, hessian-eigenthings, curvlinops and hessnb again; print the seconds."""
    parser = make_parser("bench.compare_libraries", __doc__)
    parser.add_argument(
        "--steps", dest="lanczos_steps", metavar="STEPS", type=int, help="Lanczos steps (90)"
    )
    args = parser.parse_args(argv)
    config = override(CpuConfig(threads=1), threads=args.threads, lanczos_steps=args.lanczos_steps)
    config.apply_threads()
    warnings.simplefilter("ignore")
    settings = config.slq.replace(probes=1)
    batches = digits_batches(config.n_examples, config.batch_size)
    model = digits_cnn(config.widths)
    eigenthings = eigenthings_slq(model, batches, settings.lanczos_steps)
    curvlinops = curvlinops_slq(model, batches, settings.lanczos_steps)

    def hessnb_run(seed: int) -> None:
        op = HessianOperator(model, F.cross_entropy, batches)
        spectrum(op, settings=settings.replace(seed=seed), progress=False)

    runs = [
        ("hessnb", hessnb_run),
        (eigenthings.name, eigenthings.run),
        (curvlinops.name, curvlinops.run),
        ("hessnb", hessnb_run),
    ]
    for name, run in runs:
        print(f"{name:20s} {timed(lambda run=run: run(0))[1]:7.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
