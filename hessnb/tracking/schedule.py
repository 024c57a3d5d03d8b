"""When to record a spectrum during training: every N steps, log-spaced, or a fixed list."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Schedule", "make_schedule"]


@dataclass(frozen=True)
class Schedule:
    """A set of training steps at which to record.

    Build with :func:`make_schedule`; ``step in schedule`` tells whether a step is due.
    """

    kind: str
    every: int = 1
    per_decade: int = 0
    steps: tuple[int, ...] = ()

    def __contains__(self, step: int) -> bool:
        step = int(step)
        if step < 0:
            return False
        if self.kind == "every":
            return step % self.every == 0
        if self.kind == "list":
            return step in self._set
        return step in _log_steps(self.per_decade, step)

    @property
    def _set(self) -> frozenset[int]:
        return frozenset(self.steps)

    def upto(self, last: int) -> list[int]:
        """Scheduled steps from 0 to ``last`` inclusive."""
        if self.kind == "list":
            return [s for s in self.steps if s <= last]
        if self.kind == "every":
            return list(range(0, last + 1, self.every))
        return sorted(_log_steps(self.per_decade, last))

    def describe(self) -> str:
        """A short text for file attributes and messages."""
        if self.kind == "every":
            return f"every {self.every}"
        if self.kind == "log":
            return f"log, {self.per_decade} per decade"
        return "list: " + ",".join(map(str, self.steps))


def _log_steps(per_decade: int, last: int) -> set[int]:
    """``{0} | {round(10**(i / per_decade))}`` up to ``last`` (dense early, sparse late)."""
    if last < 1:
        return {0} if last >= 0 else set()
    top = int(np.ceil(np.log10(last + 1) * per_decade)) + 1
    values = np.unique(np.round(10 ** (np.arange(top) / per_decade)).astype(np.int64))
    return {0, *(int(v) for v in values if v <= last)}


def make_schedule(every: int | str | Iterable[int] | Schedule) -> Schedule:
    """Turn the ``every=`` argument of :class:`~hessnb.Tracker` into a :class:`Schedule`.

    Parameters
    ----------
    every : int, "log", "log:N", iterable of int, or Schedule
        ``N`` (> 0): steps 0, N, 2N, ...; ``"log"``: about 10 log-spaced steps per decade
        (``"log:N"`` for N per decade), plus step 0; a list: exactly those steps (sorted,
        no duplicates, >= 0).
    """
    if isinstance(every, Schedule):
        return every
    if isinstance(every, bool):
        raise TypeError("every must be an int, 'log', or a list of steps, not a bool")
    if isinstance(every, (int, np.integer)):
        if every <= 0:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        return Schedule("every", every=int(every))
    if isinstance(every, str):
        name, _, count = every.partition(":")
        if name != "log" or (count and not count.isdigit()) or (count and int(count) == 0):
            raise ValueError(f"every={every!r}: use 'log' or 'log:N' with N > 0 per decade")
        return Schedule("log", per_decade=int(count or 10))
    steps = [int(s) for s in every]
    if not steps:
        raise ValueError("the list of steps to record is empty")
    if any(s < 0 for s in steps):
        raise ValueError(f"steps must be >= 0, got {min(steps)}")
    if steps != sorted(steps):
        raise ValueError(f"explicit steps must be sorted ascending, got {steps[:10]}")
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise ValueError(f"explicit steps contain duplicates: {dup}")
    return Schedule("list", steps=tuple(steps))
