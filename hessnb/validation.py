"""Argument checks shared by every layer; each error names the argument and what to pass."""

from __future__ import annotations

import numpy as np

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
