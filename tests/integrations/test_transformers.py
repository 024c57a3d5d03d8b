"""``HessianTrainerCallback`` inside a real Hugging Face ``Trainer.train`` on the CPU: the
schedule in global steps with gradient accumulation, exact spectra at the recorded states,
keyword-input models, and resuming from the Trainer's checkpoints."""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import hessnb
from hessnb import open_run
from hessnb.reference import data, models

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from transformers import Trainer, TrainerCallback, TrainingArguments

from hessnb.integrations.transformers import HessianTrainerCallback, KeywordInputs

N_EXAMPLES, BATCH, LR, GAMMA = 200, 100, 0.5, 0.9
EVERY = [0, 3, 6]
SLQ = {"lanczos_steps": 10, "top_k": 3, "probes": 1, "progress": False}


class Classifier(nn.Module):
    """A float64 MLP 64-4-10 with the Hugging Face calling convention (keyword inputs,
    a dict holding ``loss`` when given ``labels``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = models.mlp(hidden=(4,)).double()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class Examples(Dataset):
    """The digits as ``{"x": ..., "labels": ...}`` examples, as the Trainer takes them."""

    def __init__(self) -> None:
        self.x, self.y = data.digits(images=False, size=N_EXAMPLES, dtype=torch.float64).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


class Snapshots(TrainerCallback):
    """Copies of the network at the start of the chosen optimizer steps."""

    def __init__(self, steps: list[int]) -> None:
        self.steps, self.taken = set(steps), {}

    def on_step_begin(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step in self.steps and state.global_step not in self.taken:
            self.taken[state.global_step] = copy.deepcopy(model.net)


def hessian_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = Examples().x, Examples().y
    return [(x[:BATCH], y[:BATCH]), (x[BATCH:], y[BATCH:])]


def train(output_dir, max_steps: int, callbacks: list, save_steps: int | None = None, **kw):
    """SGD with the rate times 0.9 per step, full-batch gradient in two accumulated halves."""
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: GAMMA**step)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,  # no clipping: plain full-batch SGD
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        eval_strategy="no",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Examples(),
        optimizers=(optimizer, schedule),
        callbacks=callbacks,
    )
    trainer.train(**kw)
    return trainer


def callback(path, **options) -> HessianTrainerCallback:
    return HessianTrainerCallback(
        path, F.cross_entropy, hessian_batches(), every=EVERY, **{**SLQ, **options}
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """7 steps with two callbacks: the ``net`` submodule, and the whole model through
    :class:`KeywordInputs` with dict inputs."""
    out = tmp_path_factory.mktemp("hf")
    snapshots = Snapshots(EVERY)
    by_name = callback(out / "net.nc", module="net")
    keyword = HessianTrainerCallback(
        out / "keyword.nc",
        F.cross_entropy,
        [({"x": x}, y) for x, y in hessian_batches()],
        every=EVERY,
        module=functools.partial(KeywordInputs, output="logits"),
        **SLQ,
    )
    whole = HessianTrainerCallback(
        out / "whole.nc",
        lambda outputs, targets: F.cross_entropy(outputs["logits"], targets),
        [({"x": x}, y) for x, y in hessian_batches()],
        every=[6],
        module=KeywordInputs,
        **SLQ,
    )
    trainer = train(out / "trainer", 7, [by_name, keyword, whole, snapshots])
    assert trainer.state.global_step == 7
    return {
        "path": out / "net.nc",
        "keyword": out / "keyword.nc",
        "whole": out / "whole.nc",
        "snapshots": snapshots,
    }


def test_records_on_the_schedule_in_global_steps_with_exact_spectra(reference_run):
    run = open_run(reference_run["path"])
    assert list(run.step.values) == EVERY  # once per optimizer step, not per micro-batch
    np.testing.assert_allclose(run.lr.values, LR * GAMMA ** np.array(EVERY))
    np.testing.assert_array_equal(run.momentum.values, 0.0)  # plain SGD
    for step in (3, 6):
        net = reference_run["snapshots"].taken[step]
        op = hessnb.HessianOperator(net, F.cross_entropy, hessian_batches())
        direct = hessnb.spectrum(op, **SLQ)
        np.testing.assert_allclose(run.nodes.sel(step=step), direct.nodes, rtol=1e-9, atol=1e-12)
    dense = hessnb.HessianOperator(
        reference_run["snapshots"].taken[6], F.cross_entropy, hessian_batches()
    ).dense()
    lam_max = float(torch.linalg.eigvalsh(torch.as_tensor(dense, dtype=torch.float64))[-1])
    top = float(run.top_eigenvalues.sel(step=6, k=1))
    residual = float(run.top_residuals.sel(step=6, k=1))
    assert lam_max - residual - 1e-10 <= top <= lam_max + 1e-10


def test_keyword_inputs_give_the_same_spectra(reference_run):
    by_name, keyword = open_run(reference_run["path"]), open_run(reference_run["keyword"])
    xr.testing.assert_allclose(by_name, keyword, rtol=1e-10, atol=1e-13)
    # the whole output to a loss that picks the logits: the same, without accuracy
    whole = open_run(reference_run["whole"])
    assert np.isnan(whole.accuracy.values).all()
    xr.testing.assert_allclose(
        by_name.sel(step=[6]).drop_vars("accuracy"),
        whole.drop_vars("accuracy"),
        rtol=1e-10,
        atol=1e-13,
    )


def test_resume_from_an_older_checkpoint_keeps_every_step_once(reference_run, tmp_path):
    path = tmp_path / "run.nc"
    train(tmp_path / "trainer", 5, [callback(path, module="net")], save_steps=2)
    assert list(open_run(path).step.values) == [0, 3]
    # checkpoint-2 is older than the file's last record (3): 3 is kept, not redone
    train(
        tmp_path / "trainer",
        7,
        [callback(path, module="net")],
        resume_from_checkpoint=str(tmp_path / "trainer" / "checkpoint-2"),
    )
    resumed = open_run(path)
    assert list(resumed.step.values) == EVERY
    xr.testing.assert_allclose(resumed, open_run(reference_run["path"]), rtol=1e-9, atol=1e-12)
