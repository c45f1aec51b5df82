"""The four window algorithms as pure state transitions.

Each ``step(state, now, limit, cost)`` returns ``(allowed, new_state, remaining, reset_at,
retry_after_s)``: no clock reads, no I/O, no locks. ``state`` is ``None`` for a fresh key, else
the tuple of numbers the same algorithm returned before (counts stay ints when costs are ints);
stores persist it opaquely. ``remaining`` may be a float for fractional estimates: readers take
its floor (:class:`~ratekeeper.decision.LimitState` does). A rejected
step returns the old state (nothing is charged); ``retry_after_s`` is ``math.inf`` when the cost
can never pass (cost above the limit, or above the burst for GCRA).

A clock that goes backwards never admits more: a ``now`` older than the stored window is treated
as the stored window's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

from ratekeeper.errors import LimitConfigError

if TYPE_CHECKING:
    from ratekeeper.limit import Limit

__all__ = [
    "Algorithm",
    "State",
    "Step",
    "StepFn",
    "first_hit_window",
    "fixed_window",
    "gcra",
    "sliding_window",
]

State: TypeAlias = tuple[float, ...]
Step: TypeAlias = tuple[bool, State | None, float, float, float]
StepFn: TypeAlias = Callable[[State | None, float, "Limit", int], Step]

_INF = math.inf
# Float slack so that exact edges (5 x 0.2 s == 1 s) are not lost to rounding. Epoch-scale
# times (~1.8e9 s) carry about 2.4e-7 s of rounding per operation, so the slack is 1 us in time
# and a millionth of a request in counts: far above the rounding, far below anything real.
_EPS = 1e-6
# A rejected request always waits a little: "retry now" would be a busy loop.
_MIN_RETRY_S = 1e-6


class Algorithm(StrEnum):
    """How a limit counts: the window kinds of ``../reference/algorithms.md``."""

    FIXED_WINDOW = "fixed_window"
    FIRST_HIT_WINDOW = "first_hit_window"
    SLIDING_WINDOW = "sliding_window"
    GCRA = "gcra"

    @classmethod
    def parse(cls, text: str | Algorithm) -> Algorithm:
        """Read an algorithm name; accepts ``-`` or ``_`` and a few common aliases."""
        if isinstance(text, Algorithm):
            return text
        name = str(text).strip().lower().replace("-", "_").replace(" ", "_")
        found = _ALIASES.get(name)
        if found is None:
            known = ", ".join(a.value for a in cls)
            raise LimitConfigError(f"unknown algorithm {text!r}: expected one of {known}")
        return found


_ALIASES = {a.value: a for a in Algorithm} | {
    "fixed": Algorithm.FIXED_WINDOW,
    "aligned": Algorithm.FIXED_WINDOW,
    "first_hit": Algorithm.FIRST_HIT_WINDOW,
    "sliding": Algorithm.SLIDING_WINDOW,
    "rolling": Algorithm.SLIDING_WINDOW,
    "rolling_window": Algorithm.SLIDING_WINDOW,
    "token_bucket": Algorithm.GCRA,
}


def fixed_window(state: State | None, now: float, limit: Limit, cost: int) -> Step:
    """Fixed window aligned to the clock: windows ``[k*P, (k+1)*P)``."""
    # One function per kind, the window charged inline: this runs once per limit per decision.
    period = limit.period_s
    start = now - now % period
    count: float = 0
    if state is not None and state[0] >= start:
        start = state[0]
        count = state[1]
        if now < start:
            now = start
    amount = limit.amount
    end = start + period
    if count + cost <= amount:
        count += cost
        return (True, (start, count), amount - count, end, 0.0)
    return (False, state, amount - count, end, end - now if cost <= amount else _INF)


def first_hit_window(state: State | None, now: float, limit: Limit, cost: int) -> Step:
    """Fixed window that starts at the key's first request and lasts ``P``."""
    period = limit.period_s
    start = now
    count: float = 0
    if state is not None and now < state[0] + period:
        start = state[0]
        count = state[1]
        if now < start:
            now = start
    amount = limit.amount
    end = start + period
    if count + cost <= amount:
        count += cost
        return (True, (start, count), amount - count, end, 0.0)
    return (False, state, amount - count, end, end - now if cost <= amount else _INF)


def sliding_window(state: State | None, now: float, limit: Limit, cost: int) -> Step:
    """Sliding window counter: the previous aligned window's count weighted by its overlap.

    Approximates an exact sliding log in O(1) state; it admits at most ``L`` per window if
    traffic in the previous window was spread evenly, and at most ``2L`` in the worst case.

    ``reset_at`` is when the caller's quota is back, never more than one period from ``now``
    (in the rolling window this counter stands for, every request counted so far has left it
    by then): with at least one unit left, when the count has fully decayed; with none left,
    when one unit is back, i.e. when a request of cost 1 would pass. ``retry_after_s`` stays
    this counter's own answer for ``cost``, which can be later than ``reset_at``: the counter
    keeps weighting a window's requests into the next one.
    """
    period = limit.period_s
    asked = now
    start = now - now % period
    prev: float = 0
    cur: float = 0
    if state is not None:
        stored = state[0]
        if stored >= start:
            start = stored
            prev = state[1]
            cur = state[2]
            if now < start:
                now = start
        elif start - stored < 1.5 * period:
            prev = state[2]
    amount = limit.amount
    elapsed = now - start
    estimate = prev * (period - elapsed) / period + cur
    if estimate + cost <= amount + _EPS:
        cur += cost
        # int() of a value >= -_EPS, shifted by _EPS, is never negative.
        remaining = int(amount - estimate - cost + _EPS)
        reset_at = _sliding_reset(start, prev, cur, now, elapsed, asked, amount, period, remaining)
        return (True, (start, prev, cur), remaining, reset_at, 0.0)
    remaining = max(int(amount - estimate + _EPS), 0)
    reset_at = _sliding_reset(start, prev, cur, now, elapsed, asked, amount, period, remaining)
    if cost > amount:
        return (False, state, remaining, reset_at, _INF)
    room = amount - cost - cur
    if room >= 0:
        # Wait until the previous window's weighted share has drained to ``room``.
        retry = period - elapsed - room * period / prev
    else:
        # Only the next window can help: there, this window's count is the weighted one.
        retry = period - elapsed + period * (1.0 - (amount - cost) / cur)
    return (False, state, remaining, reset_at, max(retry, _MIN_RETRY_S))


def _sliding_reset(
    start: float,
    prev: float,
    cur: float,
    now: float,
    elapsed: float,
    asked: float,
    amount: int,
    period: float,
    remaining: int,
) -> float:
    """``sliding_window``'s ``reset_at`` (see there) for the state ``(start, prev, cur)``."""
    if remaining >= 1:
        # The previous window's share is gone at the end of this one, this one's a period later.
        end = start + (period + period if cur else period)
    else:
        # The retry of sliding_window for a cost of 1. No division by zero: with no unit
        # left, prev == 0 would mean cur > amount - 1, so room < 0 and cur > 0.
        room = amount - 1 - cur
        if room >= 0:
            end = now + (period - elapsed - room * period / prev)
        else:
            end = now + (period - elapsed + period * (1.0 - (amount - 1) / cur))
    latest = asked + period
    return end if end < latest else latest


def gcra(state: State | None, now: float, limit: Limit, cost: int) -> Step:
    """GCRA (token bucket): emission interval ``T = P/L``, up to ``burst`` at once."""
    interval = limit.interval_s
    capacity_s = limit.capacity_s
    tat = state[0] if state is not None else now
    if tat < now:
        tat = now
    new_tat = tat + cost * interval
    if new_tat - now <= capacity_s + _EPS:
        remaining = int((capacity_s - (new_tat - now) + _EPS) / interval)
        return (True, (new_tat,), remaining, new_tat, 0.0)
    remaining = max(int((capacity_s - (tat - now) + _EPS) / interval), 0)
    if cost > limit.burst:
        return (False, state, remaining, tat, _INF)
    return (False, state, remaining, tat, max(new_tat - capacity_s - now, _MIN_RETRY_S))


STEPS: dict[Algorithm, StepFn] = {
    Algorithm.FIXED_WINDOW: fixed_window,
    Algorithm.FIRST_HIT_WINDOW: first_hit_window,
    Algorithm.SLIDING_WINDOW: sliding_window,
    Algorithm.GCRA: gcra,
}
