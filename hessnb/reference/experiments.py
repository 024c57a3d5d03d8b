"""The paper's batch-norm experiments at three scales, and the runs they produce.

One training run per network serves several experiments (``shared/PAPER.md``, E1-E5):

- ``no-bn``: a CNN without batch norm (E1, E3: it has a learning-rate drop);
- ``bn``: the same CNN with batch norm, its Hessian taken in BN train mode (batch
  statistics of training-size batches, the paper's setting) (E1, E2, E3);
- ``bn-eval``: the same checkpoints of ``bn``, Hessian with population statistics (E4);
- ``bn-population``: a network whose batch norm normalises with population statistics
  during training, the paper's test of its hypothesis (E5).

The verdicts are in :mod:`hessnb.reference.verdicts`. Scales: ``quick`` (CI and Binder:
minutes on 2 CPU cores), ``shipped`` (the runs in ``notebooks/data/paper/``, made by
``hessnb reproduce --scale shipped``), ``full`` (CIFAR-10 with the reference ResNet-32 on a
GPU; not run yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from hessnb.reference import data, models
from hessnb.reference.training import train
from hessnb.settings import SLQSettings
from hessnb.tracking import Tracker

__all__ = ["RUNS", "SCALES", "Scale", "run_experiments"]

#: Run names, in the order they are trained.
RUNS = ("no-bn", "bn", "bn-eval", "bn-population")


@dataclass(frozen=True)
class Scale:
    """One size of the experiments.

    Attributes
    ----------
    name : str
    data : str
        ``"digits"`` or ``"cifar10:DIR"`` (see :func:`hessnb.reference.data.load`).
    model : {"cnn", "resnet32"}
        ``cnn``: :func:`~hessnb.reference.models.small_cnn` with a global-average-pooling
        head and ``channels``; ``resnet32``: the reference ResNet-32 (see its docstring for
        how it differs from the authors').
    steps, batch_size, lr, momentum : SGD settings (batches of ``batch_size`` are also the
        Hessian's batches, so BN train mode uses the training batch statistics).
    lr_drop : int
        Step at which the learning rate drops tenfold (E3).
    record : tuple of int
        Steps at which every tracker records: dense early (E2), just before and after the
        drop (E3), log-spaced otherwise.
    slq : SLQSettings
    """

    name: str
    steps: int
    lr_drop: int
    record: tuple[int, ...]
    slq: SLQSettings
    data: str = "digits"
    model: str = "cnn"
    channels: tuple[int, ...] = (8, 16)
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    device: str = "cpu"
    notes: tuple[str, ...] = field(default=())


SCALES = {
    "quick": Scale(
        name="quick",
        steps=150,
        lr_drop=100,
        record=(0, 2, 5, 10, 20, 60, 95, 100, 105, 150),
        slq=SLQSettings(lanczos_steps=20),
    ),
    "shipped": Scale(
        name="shipped",
        steps=600,
        lr_drop=400,
        record=(
            *(0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20),
            *(30, 50, 80, 130, 200, 300, 380),
            *(395, 400, 401, 402, 405, 410, 420, 450, 500, 600),
        ),
        slq=SLQSettings(lanczos_steps=80),
    ),
    "full": Scale(
        name="full",
        data="cifar10:data/cifar10",
        model="resnet32",
        steps=20_000,
        lr_drop=15_000,
        record=(
            *(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000),
            *(14_900, 15_000, 15_010, 15_100, 16_000, 20_000),
        ),
        slq=SLQSettings(lanczos_steps=90),
        lr=0.1,
        device="cuda",
        notes=("not yet run: needs a GPU and CIFAR-10",),
    ),
}


def _network(scale: Scale, bn: bool | str) -> nn.Module:
    if scale.model == "resnet32":
        if bn == "population":
            raise ValueError("the population-statistics variant exists for the CNN only")
        return models.resnet32(bn=bool(bn))
    return models.small_cnn(channels=scale.channels, bn=bn, pool=True)


def run_experiments(
    out: str | Path,
    scale: str | Scale = "quick",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Train the three networks of the experiments and track four Hessians.

    Parameters
    ----------
    out : path
        Folder for the run files ``<run>.nc`` (one per name in :data:`RUNS`); existing
        files are replaced.
    scale : {"quick", "shipped", "full"} or Scale
    progress : bool
        Progress bars.
    log : callable
        Receives one line per finished network.

    Returns
    -------
    dict
        Run name -> path.
    """
    scale = SCALES[scale] if isinstance(scale, str) else scale
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.load(scale.data)
    batches = data.fixed_batches(dataset, batch_size=scale.batch_size)
    device = torch.device(scale.device)
    if device.type == "cuda":
        batches = [(x.to(device), y.to(device)) for x, y in batches]
    plan = {"no-bn": (False, ["no-bn"]), "bn": (True, ["bn", "bn-eval"])}
    plan["bn-population"] = ("population", ["bn-population"])
    paths: dict[str, Path] = {}
    for network, (bn, names) in plan.items():
        torch.manual_seed(scale.seed)
        model = _network(scale, bn).to(device)
        trackers = []
        for name in names:
            paths[name] = out / f"{name}.nc"
            trackers.append(
                Tracker(
                    model,
                    F.cross_entropy,
                    batches,
                    paths[name],
                    every=list(scale.record),
                    settings=scale.slq,
                    bn_mode="eval" if name == "bn-eval" else "train",
                    name=name,
                    attrs={"scale": scale.name, "data": scale.data, "lr_drop": scale.lr_drop},
                    overwrite=True,
                    progress=False,
                )
            )
        train(
            model,
            dataset,
            steps=scale.steps,
            batch_size=scale.batch_size,
            lr=scale.lr,
            momentum=scale.momentum,
            lr_drops=(scale.lr_drop,),
            tracker=trackers,
            seed=scale.seed,
            progress=progress,
        )
        log(f"{network}: {len(trackers[0].steps)} steps recorded in {', '.join(names)}")
    return paths
