"""``bench.projection``: hours of a spectrum at ImageNet scale."""

from __future__ import annotations

import math

import pytest

from bench import gpu, projection


def test_projection_formula() -> None:
    # 95 passes of 1.28 M images at 1000 img/s on 8 GPUs, plus 90 Lanczos steps of 2 s
    hours = projection.projected_hours(1000.0, 1_281_167, 8, 2.0)
    assert hours == pytest.approx((95 * 1_281_167 / 8000 + 180) / 3600)
    assert projection.projected_hours(1000.0, 1000, 1, 0.0, steps=1) == pytest.approx(6 / 3600)


def test_format_projection_rows() -> None:
    rows = [
        gpu.ModelRow("m", 1, "fp32", 100.0, 1000.0, 0, 0, 2.0, 3.0),
        gpu.ModelRow("skipped", 1, "fp32", math.nan, math.nan, 0, 0, 0, 0),
    ]
    lines = projection.format_projection(rows, "GPU", subsets=(10,)).splitlines()
    assert lines[0] == "| model | precision | images | hours, 1 x GPU | hours, 8 x GPU |"
    assert len(lines) == 4  # header, rule, full set and one subset of the measured row
    full = [c.strip() for c in lines[2].strip("|").split("|")]
    assert full[:3] == ["m", "fp32", "1,281,167 (full train set)"]
    # the faster Lanczos placement (2 s per step) is used
    assert float(full[3]) == pytest.approx(
        projection.projected_hours(1000.0, 1_281_167, 1, 2.0), abs=0.01
    )
    assert lines[3].split("|")[3].strip() == "10,000 (10 per class)"
