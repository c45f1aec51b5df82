"""How far a server's clock is from ours, from the ``Date`` headers of many answers.

``Date`` has one-second resolution and common servers cache it (uvicorn renews it once a
second), so one answer only says the server's clock was somewhere in ``[date, date + 2)`` when
it was read, at some moment between the request leaving and its answer arriving: a slow answer
(a server warming up, a loaded machine) widens the interval by its round trip, it does not shift
it. Each answer narrows the interval; a skew is acted on only when the interval excludes 0,
i.e. when neither whole-second rounding nor the round trip can explain it.
"""

from __future__ import annotations

import collections

from ratekeeper.client.hints import parse_http_date

__all__ = ["SkewEstimate"]

# One second of resolution plus up to one second of a cached Date.
_DATE_SPAN_S = 2.0
# Enough answers to narrow the interval to its floor, few enough to follow a clock that moves.
_SAMPLES = 32


class SkewEstimate:
    """The server's clock minus ours, from the ``Date`` of the answers seen (not thread-safe:
    the caller holds the host's lock)."""

    __slots__ = ("_last_text", "_last_value", "_samples", "skew_s")

    def __init__(self) -> None:
        # Per answer: the lowest and the highest skew it allows (Date read at its answer, at
        # its send).
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=_SAMPLES)
        self._last_text = ""
        self._last_value: float | None = None
        self.skew_s = 0.0

    def observe(self, date: str | None, now: float, sent: float | None = None) -> float:
        """Take one answer's ``Date``, arrived at local time ``now`` for a request sent at
        ``sent`` (default ``now``); returns the skew to act on."""
        if not date:
            return self.skew_s
        if date != self._last_text:
            # A Date changes once a second: most answers repeat the previous one.
            self._last_text = date
            self._last_value = parse_http_date(date)
        value = self._last_value
        if value is None:
            return self.skew_s
        sample = (value - now, value - (now if sent is None else min(sent, now)) + _DATE_SPAN_S)
        samples = self._samples
        samples.append(sample)
        low = max(lowest for lowest, _ in samples)
        high = min(highest for _, highest in samples)
        if low > high:
            # The server's clock jumped: only the newest answer describes it.
            samples.clear()
            samples.append(sample)
            low, high = sample
        self.skew_s = min(max(0.0, low), high)
        return self.skew_s

    def __repr__(self) -> str:
        return f"<SkewEstimate {self.skew_s:+.3f}s from {len(self._samples)} answers>"
