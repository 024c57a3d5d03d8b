"""Per-layer spectra: the cost of one Lanczos step for every layer against the whole Hessian.

``hessnb.spectrum(op, blocks="layers")`` runs one Lanczos per layer in lockstep: each step
is one pass over the data for all of them (each batch's forward and first backward shared,
then one backward of the gradient per layer). This benchmark times Lanczos steps of

- the whole Hessian, one probe (one column per step);
- every layer at once (``blocks="layers"``, one probe per layer: as many columns as
  layers);
- every layer as its own run (``HessianOperator(params=layer)`` per layer, one probe each,
  one after the other),

with the graph cache (data in memory: forward and first backward are kept across steps,
built before the timed runs) and without it (``graph_cache=False``, as for data that does
not fit in memory), as interleaved minima. Model: the timed CNN of ``bench.cpu`` (281,674
parameters, 4 layers) on the 1,797 digits.

Run from the repository root: ``python -m bench.blocks [--steps 4] [--repeats 3]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn import functional as F

from bench.common import (
    Row,
    digits_batches,
    digits_cnn,
    format_table,
    interleaved_times,
    make_parser,
)
from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.slq import estimate, estimate_blocks

__all__ = ["main"]


def _cases(
    cache: bool, steps: int
) -> tuple[dict[str, Callable[[], object]], list[HessianOperator], int]:
    """Callables for the three ways, their operators, and the number of layers."""
    batches = digits_batches()
    model = digits_cnn((32, 64, 64))
    graph_cache = "auto" if cache else False
    whole = HessianOperator(model, F.cross_entropy, batches, graph_cache=graph_cache)
    blocks = whole.space.blocks("layers")
    layers = [
        HessianOperator(
            model,
            F.cross_entropy,
            batches,
            params=[n for n in whole.names if n.rpartition(".")[0] == label],
            graph_cache=graph_cache,
        )
        for label in blocks.labels
    ]
    settings = SLQSettings(lanczos_steps=steps, probes=1, top_k=1, deflate=False)
    return (
        {
            "whole Hessian": lambda: estimate(whole, settings),
            "every layer at once": lambda: estimate_blocks(whole, blocks, settings),
            "every layer as its own run": lambda: [estimate(op, settings) for op in layers],
        },
        [whole, *layers],
        len(blocks.labels),
    )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = make_parser("bench.blocks", __doc__ or "")
    parser.add_argument("--steps", type=int, default=4, help="Lanczos steps per timed run (4)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (3)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for cache in (True, False):
        fns, operators, layers = _cases(cache, args.steps)
        with contextlib.ExitStack() as stack:
            for op in operators:  # with a cache: graphs kept across runs, built in the warm-up
                stack.enter_context(op.reuse_graphs())
            times = interleaved_times(fns, args.repeats, warmup=1)
        best = {name: min(t) / args.steps for name, t in times.items()}
        where = "graph cache" if cache else "no graph cache"
        base = best["whole Hessian"]
        for name, seconds in best.items():
            rows.append(
                Row(
                    f"{name}, {where}: s per Lanczos step / whole Hessian",
                    seconds / base,
                    note=f"{seconds:.3g} s per step ({layers} layers, min of {args.repeats}, "
                    f"{args.steps} steps per run)",
                )
            )
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
