"""``HessianCallback`` inside a real Lightning ``Trainer.fit`` on the CPU: the schedule in
global steps, exact spectra at the recorded states, resuming from checkpoints, and DDP on
two gloo processes where only rank 0 writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.nn import functional as F

import hessnb
from hessnb import open_run

HERE = Path(__file__).parent
DDP_TIMEOUT_S = 240  # a fresh interpreter importing torch and lightning, on a loaded machine

#: In a fresh interpreter: which framework modules ``import hessnb`` (and the integrations
#: package) load.
IMPORTS = """
import json, sys
FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")
loaded = {}
import hessnb
loaded["hessnb"] = sorted(m for m in FRAMEWORKS if m in sys.modules)
import hessnb.integrations
loaded["integrations"] = sorted(m for m in FRAMEWORKS if m in sys.modules)
print(json.dumps(loaded))
"""


def test_import_hessnb_loads_no_training_framework():
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"hessnb": [], "integrations": []}


@pytest.fixture(scope="module")
def worker():
    """The shared problem (imports lightning; skipped where the extra is missing)."""
    pytest.importorskip("lightning")
    sys.path.insert(0, str(HERE))
    try:
        import lightning_worker
    finally:
        sys.path.remove(str(HERE))
    return lightning_worker


@pytest.fixture(scope="module")
def reference_fit(worker, tmp_path_factory):
    """7 steps, gradient accumulation over two micro-batches, validation every epoch;
    a logger that keeps what it is sent; snapshots of the network at the recorded steps."""
    from lightning.pytorch.loggers import Logger

    class KeepingLogger(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[int | None, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "keeping"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            self.calls.append((step, dict(metrics)))

    path = tmp_path_factory.mktemp("lightning") / "run.nc"
    logger = KeepingLogger()
    module = worker.Classifier(snapshot_at=worker.EVERY)
    hook = worker.callback(path)
    fit = worker.trainer(
        7, [hook], logger=logger, accumulate_grad_batches=2, num_sanity_val_steps=1
    )
    fit.fit(module, **worker.loaders())
    assert fit.global_step == 7
    return {"path": path, "module": module, "hook": hook, "logger": logger}


def test_records_on_the_schedule_in_global_steps_with_exact_spectra(worker, reference_fit):
    path, module, hook = reference_fit["path"], reference_fit["module"], reference_fit["hook"]
    run = open_run(path)
    assert list(run.step.values) == [0, 3, 6]  # once per global step; none in validation
    assert hook.tracker.steps == [0, 3, 6]
    # the rate of the step about to be taken (StepLR every step)
    np.testing.assert_allclose(run.lr.values, worker.LR * worker.GAMMA ** np.array([0, 3, 6]))
    np.testing.assert_array_equal(run.momentum.values, worker.MOMENTUM)
    batches = worker.ShardedBatches(worker.dataset(), worker.BATCH)()
    for step in (3, 6):
        op = hessnb.HessianOperator(module.snapshots[step], F.cross_entropy, batches)
        direct = hessnb.spectrum(op, **{**worker.SLQ, "progress": False})
        np.testing.assert_allclose(run.nodes.sel(step=step), direct.nodes, rtol=1e-9, atol=1e-12)
        assert float(run.loss.sel(step=step)) == pytest.approx(op.evaluate()["loss"], rel=1e-12)
    # the recorded top eigenvalue at the last step against the dense Hessian's
    dense = hessnb.HessianOperator(module.snapshots[6], F.cross_entropy, batches).dense()
    lam_max = float(torch.linalg.eigvalsh(torch.as_tensor(dense, dtype=torch.float64))[-1])
    top, residual = (
        float(run[name].sel(step=6, k=1)) for name in ("top_eigenvalues", "top_residuals")
    )
    assert residual < 1e-3 * lam_max
    assert lam_max - residual - 1e-10 <= top <= lam_max + 1e-10
    # the loggers got each record's summary at its step
    sent = {step: m for step, m in reference_fit["logger"].calls if "hessian/top_eigenvalue" in m}
    assert sorted(sent) == [0, 3, 6]
    assert sent[6]["hessian/top_eigenvalue"] == pytest.approx(top, rel=1e-12)
    assert sent[6]["hessian/trace"] == pytest.approx(float(run.trace.sel(step=6)), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_from_an_older_checkpoint_keeps_every_step_once(worker, reference_fit, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    path, ckpt_dir = tmp_path / "run.nc", tmp_path / "ckpt"

    def saving() -> ModelCheckpoint:
        return ModelCheckpoint(
            dirpath=ckpt_dir, filename="{step}", every_n_train_steps=2, save_top_k=-1
        )

    first = worker.trainer(
        5,
        [worker.callback(path, module="net"), saving()],
        enable_checkpointing=True,
        accumulate_grad_batches=2,
        limit_val_batches=0,
    )
    first.fit(worker.Classifier(), **worker.loaders())
    assert list(open_run(path).step.values) == [0, 3]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    state = torch.load(ckpt_dir / "step=4.ckpt", weights_only=False)["callbacks"]
    assert [s for k, s in state.items() if k.startswith("HessianCallback")] == [
        {"path": str(path), "steps": [0, 3]}
    ]

    # step 2's checkpoint is older than the file's last record (3): 3 is kept, not redone
    hook = worker.callback(path, module="net")
    again = worker.trainer(7, [hook], accumulate_grad_batches=2, limit_val_batches=0)
    again.fit(worker.Classifier(), ckpt_path=ckpt_dir / "step=2.ckpt", **worker.loaders())
    resumed = open_run(path)
    assert list(resumed.step.values) == [0, 3, 6]
    reference = open_run(reference_fit["path"])
    # same states, rates and spectra as the uninterrupted run (weights, momentum buffers,
    # scheduler and global step all came back)
    xr.testing.assert_allclose(resumed, reference, rtol=1e-9, atol=1e-12)

    # the file is gone: the checkpoint's callback state says what was lost; record_last
    # then records the one step trained (4 -> 5), which is not on the schedule
    path.unlink()
    hook = worker.callback(path, module="net", record_last=True)
    lost = worker.trainer(5, [hook], limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"steps \[0, 3\] had been recorded"):
        lost.fit(worker.Classifier(), ckpt_path=ckpt_dir / "step=4.ckpt", **worker.loaders())
    assert list(open_run(path).step.values) == [5]


def test_ddp_on_two_processes_writes_from_rank_zero_the_one_process_run(
    worker, reference_fit, tmp_path
):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "lightning_worker.py"), str(tmp_path), "ddp_fork"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Lightning's second rank joins this group: one kill ends both
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        output, _ = proc.communicate(timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"DDP fit did not finish in {DDP_TIMEOUT_S} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["writes"] for r in ranks] == [3, 0]  # one write per record, rank 0 only
    assert [r["steps"] for r in ranks] == [[0, 3, 6], [0, 3, 6]]
    assert [r["shard"] for r in ranks] == [100, 100]  # each rank its half of the data
    assert [r["n_examples"] for r in ranks] == [200, 200]  # and the Hessian is over all
    ddp, single = open_run(tmp_path / "run.nc"), open_run(reference_fit["path"])
    assert list(ddp.step.values) == [0, 3, 6]
    xr.testing.assert_allclose(ddp, single, rtol=1e-6, atol=1e-9)


def test_bad_arguments_fail_when_the_callback_is_made(worker, tmp_path):
    from hessnb.integrations.lightning import HessianCallback

    batches = [(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ValueError, match="sorted"):
        HessianCallback(tmp_path / "r.nc", F.cross_entropy, batches, every=[3, 1])
    with pytest.raises(TypeError, match="callable"):
        HessianCallback(tmp_path / "r.nc", "cross_entropy", batches)
    with pytest.raises(TypeError, match="argument of the callback"):
        HessianCallback(tmp_path / "r.nc", F.cross_entropy, batches, model=torch.nn.Linear(1, 1))
    hook = worker.callback(tmp_path / "r.nc", module="missing")
    with pytest.raises(ValueError, match="no submodule 'missing'"):
        hook.core.start(worker.Classifier())

    class NoForward(worker.L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(64, 10).double()

    with pytest.raises(NotImplementedError, match=r"pass module= .*\['net'\]"):
        worker.callback(tmp_path / "r.nc").core.start(NoForward())
