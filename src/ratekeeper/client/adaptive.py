"""Picard's adaptive slowdown as plain state: how long to wait between requests to a host and
how many may be in flight, from its failures and successes."""

from __future__ import annotations

__all__ = ["Adaptive"]


class Adaptive:
    """Picard's controller: repeated failures double the delay (up to a ceiling) and cut the
    in-flight window to 1; successes halve the delay back to the floor and grow the window
    (slow start, then additive increase)."""

    __slots__ = (
        "base_s",
        "ceiling_s",
        "delay_s",
        "exp",
        "floor_s",
        "max_window",
        "streak",
        "threshold",
        "window",
    )

    def __init__(
        self, *, floor_s: float, ceiling_s: float, base_s: float, window: float, max_window: int
    ) -> None:
        self.floor_s = floor_s
        self.ceiling_s = max(ceiling_s, floor_s)
        self.base_s = base_s
        self.delay_s = floor_s
        self.exp = 0
        self.streak = 0
        self.window = window
        self.threshold = float(max_window)
        self.max_window = max_window

    def failure(self, *, hinted: bool) -> None:
        """A 429, 503 or other 5xx. One that says when to come back is obeyed by waiting, so
        only a repeated or unexplained one slows the host down."""
        self.streak += 1
        self.threshold = max(self.window / 2.0, 1.0)
        self.window = 1.0
        if not hinted or self.streak >= 2:
            self.exp = min(self.exp + 1, 6)
            self.delay_s = min(
                max(self.base_s * 2.0 ** (self.exp - 1), self.floor_s), self.ceiling_s
            )

    def success(self) -> None:
        """An answer that is not a failure."""
        self.streak = 0
        self.exp = 0
        half = self.delay_s / 2.0
        self.delay_s = half if half > max(self.floor_s, 0.001) else self.floor_s
        if self.window < self.threshold:
            self.window += 1.0
        else:
            self.window += 1.0 / self.window
        self.window = min(self.window, float(self.max_window))

    def __repr__(self) -> str:
        return f"<Adaptive delay={self.delay_s:.3f}s window={self.window:.2f}>"
