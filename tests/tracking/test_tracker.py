import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

import hessnb
from hessnb import RunFileError, Tracker, open_run
from hessnb.reference import data, models

HERE = Path(__file__).parent


class Quadratic(nn.Module):
    """``loss = 0.5 (theta - c)^T A (theta - c)``: Hessian A, gradient A (theta - c)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, _inputs: torch.Tensor) -> torch.Tensor:
        return self.theta


def quadratic_problem(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = np.concatenate([[20.0, 11.0, 7.0], rng.uniform(-0.5, 1.0, n - 3)])
    a = torch.tensor((q * eigenvalues) @ q.T, dtype=torch.float64)
    a = 0.5 * (a + a.T)
    center = torch.tensor(rng.standard_normal(n))
    model = Quadratic(torch.tensor(rng.standard_normal(n)))

    def loss_fn(theta, _targets):
        d = theta - center
        return 0.5 * d @ a @ d

    batches = [(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]
    return model, loss_fn, batches, a, center


def test_gradient_statistics_match_closed_form_on_a_quadratic(tmp_path):
    model, loss_fn, batches, a, center = quadratic_problem()
    tracker = Tracker(
        model, loss_fn, batches, tmp_path / "q.nc", lanczos_steps=12, top_k=3, progress=False
    )
    rec = tracker.record(0)
    eigenvalues, eigenvectors = np.linalg.eigh(a.numpy())
    top = eigenvectors[:, ::-1][:, :3]
    g = a.numpy() @ (model.theta.detach().numpy() - center.numpy())
    overlaps = (top.T @ g) ** 2 / (g @ g)
    np.testing.assert_allclose(rec.top_eigenvalues, eigenvalues[::-1][:3], rtol=1e-10)
    np.testing.assert_allclose(rec.grad_overlap, overlaps, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(float(rec.grad_fraction), overlaps.sum(), rtol=1e-8)
    hg = a.numpy() @ g
    np.testing.assert_allclose(
        float(rec.grad_hg_cosine), g @ hg / np.linalg.norm(g) / np.linalg.norm(hg), rtol=1e-10
    )
    np.testing.assert_allclose(float(rec.grad_norm), np.linalg.norm(g), rtol=1e-12)
    # the gradient's spectral measure: sum_i (u_i . g)^2 / |g|^2 delta(lambda_i), exactly
    shares = (eigenvectors.T @ g) ** 2 / (g @ g)
    np.testing.assert_allclose(np.sort(rec.grad_nodes.values), eigenvalues, rtol=1e-10)
    order = np.argsort(rec.grad_nodes.values)
    np.testing.assert_allclose(rec.grad_weights.values[order], shares, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(float(rec.grad_weights.sum()), 1.0, rtol=1e-12)
    assert int(rec.hvps) == 24  # 12 Lanczos steps for the probe and 12 for the gradient


def test_update_direction_statistics(tmp_path):
    model, loss_fn, batches, a, _ = quadratic_problem()
    tracker = Tracker(
        model, loss_fn, batches, tmp_path / "q.nc", lanczos_steps=12, top_k=3, progress=False
    )
    eigenvectors = np.linalg.eigh(a.numpy())[1][:, ::-1]
    update = torch.tensor(eigenvectors[:, 0] + eigenvectors[:, 5])  # half in the top space
    rec = tracker.record(0, update=update)
    assert float(rec.update_fraction) == pytest.approx(0.5, rel=1e-8)
    np.testing.assert_allclose(rec.update_overlap, [0.5, 0.0, 0.0], atol=1e-10)
    with pytest.raises(ValueError, match="update has"):
        tracker.record(1, update=torch.zeros(3))


def digits_problem(size: int = 200, hidden: int = 6, seed: int = 0):
    dataset = data.digits(images=False, size=size)
    torch.manual_seed(seed)
    model = models.mlp(hidden=(hidden,))
    return model, dataset, data.fixed_batches(dataset, 64)


SLQ = {"lanczos_steps": 10, "top_k": 3, "probes": 2, "progress": False}


def test_tracked_run_round_trips_and_matches_direct_spectra(tmp_path):
    model, dataset, batches = digits_problem()
    path = tmp_path / "run.nc"
    tracker = Tracker(model, F.cross_entropy, batches, path, every=[0, 3, 6], name="mlp", **SLQ)
    snapshots = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = dataset.tensors
    for step in range(7):
        if tracker.maybe_record(step, lr=0.5, train_loss=1.0 + step):
            snapshots[step] = copy.deepcopy(model)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    ds = open_run(path)
    assert list(ds.step.values) == [0, 3, 6]
    assert ds.attrs["run"] == "mlp" and ds.attrs["n_params"] == 64 * 6 + 6 + 6 * 10 + 10
    np.testing.assert_array_equal(ds.train_loss.values, [1.0, 4.0, 7.0])
    xr.testing.assert_identical(ds, tracker.dataset)
    density = ds.hess.density()
    sigma, grid = density.attrs["sigma"], density.eigenvalue.values
    for step, snapshot in snapshots.items():
        op = hessnb.HessianOperator(snapshot, F.cross_entropy, batches)
        direct = hessnb.spectrum(op, lanczos_steps=10, probes=2, top_k=3, progress=False)
        np.testing.assert_allclose(ds.nodes.sel(step=step), direct.nodes, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            density.sel(step=step),
            direct.hess.density(sigma=sigma, grid=grid),
            rtol=1e-7,
            atol=1e-9,
        )
        assert float(ds.loss.sel(step=step)) == pytest.approx(op.evaluate()["loss"], rel=1e-6)


def test_resume_skips_recorded_steps_and_refuses_other_settings(tmp_path):
    model, _, batches = digits_problem()
    path = tmp_path / "run.nc"
    first = Tracker(model, F.cross_entropy, batches, path, every=2, **SLQ)
    assert first.maybe_record(0) and not first.maybe_record(1) and first.maybe_record(2)
    again = Tracker(model, F.cross_entropy, batches, path, every=2, **SLQ)
    assert again.steps == [0, 2]
    assert not again.maybe_record(2)  # already there: not recomputed, not duplicated
    assert again.maybe_record(4)
    assert list(open_run(path).step.values) == [0, 2, 4]
    before = path.read_bytes()
    for change in ({"lanczos_steps": 8}, {"probes": 1}, {"seed": 1}, {"bn_mode": "eval"}):
        with pytest.raises(RunFileError, match="different settings"):
            Tracker(model, F.cross_entropy, batches, path, **{**SLQ, **change})
    bigger = models.mlp(hidden=(7,))
    with pytest.raises(RunFileError, match="n_params"):
        Tracker(bigger, F.cross_entropy, batches, path, **SLQ)
    assert path.read_bytes() == before


def test_bad_input_leaves_the_file_alone(tmp_path):
    model, _, batches = digits_problem()
    path = tmp_path / "run.nc"
    tracker = Tracker(model, F.cross_entropy, batches, path, **SLQ)
    tracker.record(0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="already recorded"):
        tracker.record(0)
    with pytest.raises(ValueError, match="computed by the tracker"):
        tracker.record(1, loss=0.3)
    with pytest.raises(TypeError, match="must be a number"):
        tracker.record(1, note="hello")
    with pytest.raises(ValueError, match=">= 0"):
        tracker.record(-1)
    with pytest.raises(TypeError, match="int"):
        tracker.record(1.5)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="does not exist"):
        Tracker(model, F.cross_entropy, batches, tmp_path / "missing" / "run.nc", **SLQ)
    with pytest.raises(ValueError, match="positive"):
        Tracker(model, F.cross_entropy, batches, tmp_path / "b.nc", every=0, **SLQ)
    with pytest.raises(ValueError, match="sorted"):
        Tracker(model, F.cross_entropy, batches, tmp_path / "b.nc", every=[4, 2], **SLQ)
    with pytest.raises(ValueError, match="duplicates"):
        Tracker(model, F.cross_entropy, batches, tmp_path / "b.nc", every=[2, 2], **SLQ)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_reported_and_kept(tmp_path, damage):
    model, _, batches = digits_problem()
    path = tmp_path / "run.nc"
    Tracker(model, F.cross_entropy, batches, path, **SLQ).record(0)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a netcdf" * 50)
    damaged = path.read_bytes()
    with pytest.raises(RunFileError, match="truncated or corrupt"):
        Tracker(model, F.cross_entropy, batches, path, **SLQ)
    with pytest.raises(RunFileError, match="truncated or corrupt"):
        open_run(path)
    assert path.read_bytes() == damaged  # never overwritten silently


def _run_worker(run_file: Path, ckpt: Path, kill_after: int | None, delay: float):
    """Start the worker; SIGKILL it ``delay`` s after its ``kill_after``-th record."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tracked_worker.py"), str(run_file), str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    finished = []
    try:
        for line in proc.stdout:
            if line.startswith("recorded"):
                finished.append(int(line.split()[1]))
                if kill_after is not None and len(finished) == kill_after:
                    time.sleep(delay)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=120)
    if kill_after is None:
        assert proc.returncode == 0, proc.stderr.read()
    return finished


@pytest.mark.slow
def test_killed_runs_keep_finished_steps_and_resume_identically(tmp_path):
    reference = tmp_path / "reference.nc"
    _run_worker(reference, tmp_path / "ckpt-ref", None, 0.0)
    path, ckpt = tmp_path / "run.nc", tmp_path / "ckpt"
    seen: set[int] = set()
    for kill_after, delay in ((1, 0.0), (3, 0.01), (5, 0.03), (6, 0.002)):
        seen |= set(_run_worker(path, ckpt, kill_after, delay))
        ds = open_run(path)  # readable after every kill
        assert seen <= set(ds.step.values.tolist())
        assert int(ds.step.size) == len(set(ds.step.values.tolist()))  # no duplicates
    _run_worker(path, ckpt, None, 0.0)
    xr.testing.assert_identical(open_run(path), open_run(reference))


def test_one_operator_serves_the_whole_run_with_one_data_pass_per_record(tmp_path):
    model, _, batches = digits_problem()
    tracker = Tracker(
        model,
        F.cross_entropy,
        batches,
        tmp_path / "run.nc",
        every=2,
        lanczos_steps=6,
        top_k=2,
        progress=False,
    )
    op = tracker.operator
    assert op.data_passes() == 2  # validation and the determinism check
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = batches[0]
    for step in range(5):
        tracker.maybe_record(step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert tracker.steps == [0, 2, 4] and tracker.operator is op
    # each record: one fresh pass builds the graphs; Lanczos, loss, gradient and Hg reuse them
    assert op.data_passes() == 2 + 3
