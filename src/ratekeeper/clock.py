"""Clocks: the system's wall clock, and a manual one for exact, sleep-free tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Clock", "ManualClock", "system_clock"]

Clock: TypeAlias = Callable[[], float]
"""A zero-argument callable returning epoch seconds."""

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to; pass it wherever a ``clock`` is accepted."""

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward (or back, with a negative value) and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``."""
        with self._lock:
            self._now = float(now)

    def __repr__(self) -> str:
        return f"<ManualClock now={self._now:.6f}>"
