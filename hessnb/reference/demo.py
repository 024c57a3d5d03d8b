"""The main job: train a small CNN on digits with and without batch norm, track both.

``hessnb demo`` writes ``bn.nc``, ``no-bn.nc`` and ``report.html`` into ``--out`` and
prints what they show (top eigenvalue and ``grad_fraction`` at the last step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import xarray as xr
from torch.nn import functional as F

from hessnb.reference import data, models
from hessnb.reference.training import train
from hessnb.runfile import combine_runs
from hessnb.settings import SLQSettings
from hessnb.tracking import Tracker
from hessnb.tracking.schedule import make_schedule

__all__ = ["DemoSettings", "run_demo", "summarise"]


@dataclass(frozen=True)
class DemoSettings:
    """Settings of the demo; ``quick()`` is the CI-sized variant.

    ``steps`` are SGD steps; ``slq`` the estimator's settings (its seed also seeds the
    initialisation and the minibatch order).
    """

    steps: int = 200
    slq: SLQSettings = field(default_factory=lambda: SLQSettings(lanczos_steps=40))
    batch_size: int = 64
    lr: float = 0.05
    channels: tuple[int, ...] = (4, 8)
    records_per_decade: int = 3
    examples: int = 1797

    @classmethod
    def quick(cls) -> DemoSettings:
        """About a minute on a laptop CPU: fewer steps, records and examples."""
        return cls(steps=40, slq=SLQSettings(lanczos_steps=20), records_per_decade=2, examples=600)


def run_demo(
    out: str | Path,
    settings: DemoSettings = DemoSettings(),
    progress: bool = True,
    report: bool = True,
) -> dict[str, Path]:
    """Train and track the digits CNN with and without batch norm.

    Returns
    -------
    dict
        Paths of the run files (``"bn"``, ``"no-bn"``) and, with ``report``, the HTML
        report (``"report"``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.digits(size=settings.examples)
    batches = data.fixed_batches(dataset, batch_size=512)
    paths: dict[str, Path] = {}
    schedule = make_schedule(f"log:{settings.records_per_decade}")
    for name, bn in (("no-bn", False), ("bn", True)):
        torch.manual_seed(settings.slq.seed)
        model = models.small_cnn(channels=settings.channels, bn=bn)
        path = out / f"{name}.nc"
        tracker = Tracker(
            model,
            F.cross_entropy,
            batches,
            path,
            every=schedule,
            settings=settings.slq,
            bn_mode="train" if bn else "eval",
            name=name,
            overwrite=True,
            progress=progress,
        )
        train(
            model,
            dataset,
            steps=settings.steps,
            batch_size=settings.batch_size,
            lr=settings.lr,
            lr_drops=(int(0.75 * settings.steps),),
            tracker=tracker,
            seed=settings.slq.seed,
            progress=progress,
        )
        paths[name] = path
    if report:
        combined = combine_runs({name: paths[name] for name in ("no-bn", "bn")})
        paths["report"] = _write_report(combined, out / "report.html")
    return paths


def _write_report(combined: xr.Dataset, path: Path) -> Path:
    from hessnb.viz.report import write_report

    write_report(combined, path)
    return path


def summarise(combined: xr.Dataset) -> str:
    """Per run: top eigenvalue and grad_fraction at the last step, and the largest top
    eigenvalue over training (outliers can rise and fall again)."""
    lines = []
    for name in combined["run"].values:
        run = combined.sel(run=name).dropna("step", subset=["grad_fraction"])
        last = run.isel(step=-1)
        top = run["top_eigenvalues"].isel(k=0)
        peak = int(top.argmax("step"))
        lines.append(
            f"  {name:>6}: step {int(last.step)}: top eigenvalue "
            f"{float(last.top_eigenvalues[0]):.4g}, grad_fraction "
            f"{float(last.grad_fraction):.3f}, loss {float(last.loss):.3f}, "
            f"accuracy {float(last.accuracy):.3f}; largest top eigenvalue "
            f"{float(top[peak]):.4g} at step {int(run.step[peak])}"
        )
    return "\n".join(lines)
