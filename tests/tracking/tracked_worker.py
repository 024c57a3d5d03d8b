"""A tracked training run, used by the crash-safety tests (run as a subprocess).

Usage: ``python tracked_worker.py RUN_FILE CHECKPOINT_DIR``. Prints ``recorded STEP``
after each record is on disk, and resumes from the checkpoint folder when restarted.
"""

from __future__ import annotations

import sys

import torch
from torch.nn import functional as F

from hessnb import Tracker
from hessnb.reference import data, models, train

STEPS, EVERY = 24, 2


def main(run_file: str, checkpoint_dir: str) -> None:
    torch.set_num_threads(1)  # one thread: bitwise-reproducible sums
    dataset = data.digits(images=False, size=300)
    torch.manual_seed(0)
    model = models.mlp(hidden=(8,))
    tracker = Tracker(
        model,
        F.cross_entropy,
        data.fixed_batches(dataset, 128),
        run_file,
        every=EVERY,
        lanczos_steps=12,
        top_k=3,
        progress=False,
    )
    record = tracker.record

    def announce(step: int, **scalars: float):
        result = record(step, **scalars)
        print(f"recorded {step}", flush=True)
        return result

    tracker.record = announce
    train(
        model,
        dataset,
        steps=STEPS,
        batch_size=32,
        lr=0.1,
        tracker=tracker,
        checkpoint_dir=checkpoint_dir,
        progress=False,
    )
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
