"""Back-to-back 90-step, one-probe SLQ wall times: hessnb, hessian-eigenthings, curvlinops.

Run on a quiet machine: ``python bench/compare_libraries.py`` (needs both libraries
installed, e.g. ``pip install --no-deps hessian-eigenthings curvlinops-for-pytorch``; they
are never dependencies of hessnb). Same model, data and set-up as ``python -m hessnb.bench``.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch.nn import functional as F

from hessnb import HessianOperator, spectrum
from hessnb.bench import BenchConfig, _curvlinops, _eigenthings, digits_batches, digits_cnn

STEPS = 90


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    config = BenchConfig()
    batches = digits_batches(config.n_examples, config.batch_size)
    model = digits_cnn(config.widths)
    eigenthings = _eigenthings(model, batches, STEPS)
    curvlinops = _curvlinops(model, batches, STEPS)

    def hessnb_run(seed: int) -> None:
        op = HessianOperator(model, F.cross_entropy, batches)
        spectrum(op, lanczos_steps=STEPS, probes=1, seed=seed, top_k=1, progress=False)

    runs = [
        ("hessnb", hessnb_run),
        (eigenthings.name, eigenthings.run),
        (curvlinops.name, curvlinops.run),
        ("hessnb", hessnb_run),
    ]
    for name, run in runs:
        start = time.perf_counter()
        run(0)
        print(f"{name:20s} {time.perf_counter() - start:7.1f} s", flush=True)


if __name__ == "__main__":
    main()
