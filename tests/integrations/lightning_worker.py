"""A tiny float64 Lightning fit tracked by ``HessianCallback`` (shared by the tests), and
the DDP worker when run as a script.

Usage: ``python lightning_worker.py OUT_DIR [STRATEGY]``: fits with ``strategy="ddp"``
(Lightning launches the second rank by re-running this script) or ``"ddp_fork"`` (both
ranks forked from this process, without a second interpreter start) on two CPU processes
(gloo), tracking into ``OUT_DIR/run.nc``; each rank writes ``OUT_DIR/rank<R>.json`` saying
how often it wrote the run file and what it saw.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torch.optim import SGD
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

from hessnb.integrations import ShardedBatches
from hessnb.integrations.lightning import HessianCallback
from hessnb.reference import data, models
from hessnb.tracking import tracker as tracker_module

N_EXAMPLES, HIDDEN, LR, MOMENTUM, GAMMA, BATCH = 200, 4, 0.5, 0.5, 0.9, 100
EVERY = [0, 3, 6]
SLQ = {"lanczos_steps": 10, "top_k": 3, "probes": 1, "progress": False}


def dataset() -> TensorDataset:
    """The first 200 digits as flat float64 vectors."""
    return data.digits(images=False, size=N_EXAMPLES, dtype=torch.float64)


class Classifier(L.LightningModule):
    """A float64 MLP 64-4-10 (310 parameters), SGD with momentum, the rate decayed every step.

    ``snapshot_at``: steps at which ``on_train_batch_start`` keeps a copy of the network
    (the parameters the callback records, which run before this hook).
    """

    def __init__(self, snapshot_at: Sequence[int] = ()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = models.mlp(hidden=(HIDDEN,)).double()
        self.snapshot_at = set(snapshot_at)
        self.snapshots: dict[int, torch.nn.Module] = {}
        self.requires = [p.requires_grad for p in self.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step in self.snapshot_at and step not in self.snapshots:
            self.snapshots[step] = copy.deepcopy(self.net)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # a record just before must leave train mode and requires_grad as they were
        assert self.training and all(m.training for m in self.modules())
        assert [p.requires_grad for p in self.parameters()] == self.requires
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = SGD(self.parameters(), lr=LR, momentum=MOMENTUM)
        scheduler = StepLR(optimizer, step_size=1, gamma=GAMMA)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def callback(path: str | Path, **options: Any) -> HessianCallback:
    """The callback every test uses: records at 0, 3, 6 over this rank's shard."""
    return HessianCallback(
        path,
        F.cross_entropy,
        ShardedBatches(dataset(), BATCH),
        every=EVERY,
        **{**SLQ, **options},
    )


def trainer(max_steps: int, callbacks: list[Any], **options: Any) -> L.Trainer:
    """A quiet CPU Trainer (no logger, checkpoints, bar or summary unless asked)."""
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "callbacks": callbacks,
        **options,
    }
    return L.Trainer(**settings)


def loaders(validation: bool = True) -> dict[str, DataLoader]:
    """Training batches of 100 in order (full-batch gradient over two micro-batches or
    two ranks), and a validation loader."""
    found = {"train_dataloaders": DataLoader(dataset(), batch_size=BATCH, shuffle=False)}
    if validation:
        found["val_dataloaders"] = DataLoader(dataset(), batch_size=BATCH)
    return found


def ddp_main(out_dir: Path, strategy: str = "ddp") -> None:
    """Fit on two gloo ranks for 7 steps (one batch of 100 per rank per step)."""
    torch.set_num_threads(1)
    writes: list[str] = []
    original = tracker_module.write_run

    def counting_write(ds: Any, path: Any) -> None:
        writes.append(str(path))
        original(ds, path)

    tracker_module.write_run = counting_write  # count which ranks write the run file
    hook = callback(out_dir / "run.nc")

    class Report(L.Callback):
        """Each rank (a fresh or forked process) says what it saw when the fit ends."""

        def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            report = {
                "rank": trainer.global_rank,
                "world": trainer.world_size,
                "writes": len(writes),
                "steps": hook.tracker.steps,
                "n_examples": hook.tracker.operator.n_examples,
                "shard": sum(len(y) for _, y in hook.tracker.operator.batches),
            }
            (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))

    fit = trainer(
        7,
        [hook, Report()],
        strategy=strategy,
        devices=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    fit.fit(Classifier(), **loaders(validation=False))


if __name__ == "__main__":
    ddp_main(Path(sys.argv[1]), *sys.argv[2:])
