"""Dense top-k records between full densities (``Tracker(top_every=N)``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import hessnb
from hessnb import Tracker, combine_runs, open_run
from hessnb.hessian.operator import HessianOperator
from hessnb.reference import data, models
from hessnb.viz.runs import select_run


def train_with(tracker: Tracker | None, steps: int, seed: int = 0, exact: dict | None = None):
    """SGD on a digits MLP; records through ``tracker``; exact top-3 eigenvalues per step."""
    dataset = data.digits(images=False, size=300)
    batches = data.fixed_batches(dataset, 100)
    torch.manual_seed(seed)
    model = models.mlp(hidden=(8,)).double()
    batches = [(x.double(), y) for x, y in batches]
    if tracker is not None:
        tracker = tracker(model, batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = (torch.cat(t) for t in zip(*batches, strict=True))
    for step in range(steps):
        if tracker is not None:
            tracker.maybe_record(step, lr=0.3)
        if exact is not None:
            dense = HessianOperator(model, F.cross_entropy, batches).dense().numpy()
            exact[step] = np.linalg.eigvalsh(dense)[::-1][:3]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return tracker


def tracker_at(path, **settings):
    """A factory ``(model, batches) -> Tracker`` writing to ``path`` without progress bars."""
    return lambda model, batches: Tracker(
        model, F.cross_entropy, batches, path, progress=False, **settings
    )


def test_top_k_records_match_the_exact_top_eigenvalues_and_cost_less(tmp_path):
    exact: dict[int, np.ndarray] = {}
    path = tmp_path / "dense.nc"
    tracker = train_with(
        tracker_at(path, every=[0, 12], top_every=2, lanczos_steps=40, top_k=3),
        steps=13,
        exact=exact,
    )
    ds = open_run(path)
    assert ds.step.values.tolist() == list(range(0, 13, 2))
    assert ds.has_density.values.tolist() == [1, 0, 0, 0, 0, 0, 1]
    for step in ds.step.values:
        np.testing.assert_allclose(ds.top_eigenvalues.sel(step=step), exact[int(step)], rtol=1e-3)
    dense = ds.where(ds.has_density == 0, drop=True)
    assert np.isnan(dense.nodes).all()
    assert np.isfinite(dense.grad_fraction).all() and np.isfinite(dense.grad_overlap).all()
    # warm-started records cost a fraction of a full record's HVPs
    full = ds.hvps.where(ds.has_density == 1, drop=True)
    assert float(dense.hvps.max()) < 0.5 * float(full.min())
    assert ds.attrs["top_every"] == 2
    assert tracker.dataset.sizes["step"] == 7


def test_a_run_with_top_k_records_opens_in_every_view(tmp_path):
    path = tmp_path / "dense.nc"
    train_with(tracker_at(path, every=[0, 4], top_every=1, lanczos_steps=20, top_k=2), steps=5)
    ds = open_run(path)
    assert ds.hess.density().sizes["step"] == 5  # NaN densities at top-k steps
    assert select_run(ds).step.values.tolist() == [0, 4]
    both = combine_runs({"a": ds, "b": path})
    assert both.sizes["run"] == 2
    explorer = hessnb.Explorer(ds)
    assert [s for _, s in explorer.step_slider.options] == [0, 4]
    report = hessnb.viz.write_report(ds, tmp_path / "report.html")
    assert report.exists()


def test_resume_starts_top_k_records_cold(tmp_path):
    path = tmp_path / "r.nc"

    make = tracker_at(path, every=[0], top_every=1, lanczos_steps=20, top_k=2)
    train_with(make, steps=2)
    tracker = train_with(make, steps=3)  # resumes: steps 0 and 1 are skipped
    assert tracker.steps == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_every": 0}, ValueError, "top_every"),
        ({"top_every": 1.5}, TypeError, "top_every"),
        ({"top_every": 1, "top_tol": 0.0}, ValueError, "top_tol"),
    ],
)
def test_bad_top_every(tmp_path, kwargs, error, match):
    model = models.mlp(hidden=(4,))
    batches = data.fixed_batches(data.digits(images=False, size=50), 50)
    with pytest.raises(error, match=match):
        Tracker(model, F.cross_entropy, batches, tmp_path / "x.nc", progress=False, **kwargs)


def test_a_top_k_record_never_costs_more_than_one_probe_run(tmp_path):
    path = tmp_path / "capped.nc"
    # top_tol 1e-12 cannot be met in 6 HVPs: the record stops at lanczos_steps
    train_with(
        tracker_at(path, every=[0], top_every=1, lanczos_steps=6, top_k=2, top_tol=1e-12),
        steps=2,
    )
    ds = open_run(path)
    top = ds.sel(step=1)
    assert int(top.has_density) == 0
    assert int(top.hvps) == 6 + 1  # the budget, plus the H g product of grad_hg_cosine
    assert float(top.top_residuals.max()) > 1e-12 * abs(float(top.top_eigenvalues[0]))
