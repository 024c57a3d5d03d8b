"""Hours of a spectrum at ImageNet scale, projected from measured throughput.

A ``steps``-step spectrum costs ``steps + 5`` passes over the data (:data:`EXTRA_PASSES`)
and ``steps`` re-orthogonalisations; :func:`projected_hours` turns an HVP throughput and
a Lanczos cost per step into hours, :func:`format_projection` tabulates them for the full
ImageNet training set and per-class subsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bench.common import markdown_table
from hessnb import SLQSettings

if TYPE_CHECKING:
    from bench.gpu import ModelRow

__all__ = ["CLASSES", "EXTRA_PASSES", "IMAGENET_TRAIN", "format_projection", "projected_hours"]

IMAGENET_TRAIN = 1_281_167
CLASSES = 1000
#: Data passes of one tracked spectrum besides the Lanczos steps: the two of the
#: determinism check, loss, gradient and ``H g``.
EXTRA_PASSES = 5


def projected_hours(
    hvp_ips: float,
    images: int,
    gpus: int,
    lanczos_s: float,
    steps: int = SLQSettings().lanczos_steps,
) -> float:
    """Hours of one spectrum: ``(steps + 5)`` data passes shared by ``gpus``, plus Lanczos.

    ``hours = (steps + 5) * images / (hvp_ips * gpus) / 3600 + steps * lanczos_s / 3600``
    (the 5 extra passes are cheaper than HVPs, so this is an upper bound; the Lanczos
    arithmetic is repeated on every rank, so it does not shrink with ``gpus``).
    """
    return ((steps + EXTRA_PASSES) * images / (hvp_ips * gpus) + steps * lanczos_s) / 3600


def format_projection(
    rows: Sequence[ModelRow],
    unit: str = "GPU",
    subsets: Sequence[int] = (100, 10),
    steps: int = SLQSettings().lanczos_steps,
) -> str:
    """Projected hours of a ``steps``-step spectrum on ImageNet from each row's HVP img/s.

    ``unit`` names what the throughput was measured on (one GPU, or one CPU process).
    """
    sizes = [("full train set", IMAGENET_TRAIN)] + [
        (f"{k} per class", k * CLASSES) for k in subsets
    ]
    cells = []
    for r in rows:
        if math.isnan(r.hvp_ips):
            continue
        lanczos = min(r.lanczos_device, r.lanczos_cpu)
        for label, n in sizes:
            hours = (projected_hours(r.hvp_ips, n, gpus, lanczos, steps) for gpus in (1, 8))
            cells.append((r.model, r.precision, f"{n:,} ({label})", *(f"{h:.2f}" for h in hours)))
    header = ("model", "precision", "images", f"hours, 1 x {unit}", f"hours, 8 x {unit}")
    return markdown_table(header, cells, "llrrr")
