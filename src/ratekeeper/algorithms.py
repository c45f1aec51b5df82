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

:func:`charger` compiles the allowed path of a set of limits into one function (below the steps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

from ratekeeper.errors import LimitConfigError

if TYPE_CHECKING:
    from ratekeeper.limit import Limit

__all__ = [
    "Algorithm",
    "FlatCharger",
    "State",
    "Step",
    "StepFn",
    "charger",
    "first_hit_window",
    "fixed_window",
    "gcra",
    "sliding_window",
]

State: TypeAlias = tuple[float, ...]
Step: TypeAlias = tuple[bool, State | None, float, float, float]
StepFn: TypeAlias = Callable[[State | None, float, "Limit", int], Step]
# (flat state or None, now, cost) -> the new flat state, or None when a limit would refuse.
FlatCharger: TypeAlias = Callable[[tuple[float, ...] | None, float, int], tuple[float, ...] | None]

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


# ---------------------------------------------------------------- the allowed path, compiled
# A limit set's charger takes the stored flat state (the memory store's layout: every limit's
# numbers in one tuple, None for a fresh key), now and the cost. It returns the new flat state
# when every limit allows the charge, else None, and then the set's per-limit steps above
# decide, with the refusal's waits. It does the steps' arithmetic for the allowed case,
# operation for operation (kept beside them for that reason), so its states are theirs bit for
# bit (tests/test_core_fast_paths.py checks it on random traffic).
#
# Why generated: a Python call per limit costs as much as the limit's arithmetic, and a set's
# limits differ in kind and number. So, as dataclasses does for __init__, the body is written
# out once per shape (the algorithms in order), compiled, and bound to each set's numbers; a
# fresh key is a state every limit treats as long gone (-inf starts, 0 counts).

# Window starts and ends up to here are whole numbers of seconds held exactly by a float.
_EXACT_S = 2.0**53
_WINDOWED = (Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW)
_FRESH = {
    Algorithm.FIXED_WINDOW: (-math.inf, 0),
    Algorithm.FIRST_HIT_WINDOW: (-math.inf, 0),
    Algorithm.SLIDING_WINDOW: (-math.inf, 0, 0),
    Algorithm.GCRA: (-math.inf,),
}

# One limit's code: {i} its index, {a}.. its numbers in the flat state (x{a} ...), S{i} its
# aligned window start. Each ends with a refusal test written as the step's allow test, negated,
# so that NaN refuses here as it does there.
_CODE = {
    Algorithm.FIXED_WINDOW: """
    if x{a} >= S{i}:
        s{i} = x{a}
        c{i} = x{b} + cost
    else:
        s{i} = S{i}
        c{i} = cost
    if not c{i} <= n{i}:
        return None""",
    Algorithm.FIRST_HIT_WINDOW: """
    if now < x{a} + p{i}:
        s{i} = x{a}
        c{i} = x{b} + cost
    else:
        s{i} = now
        c{i} = cost
    if not c{i} <= n{i}:
        return None""",
    Algorithm.SLIDING_WINDOW: """
    if x{a} >= S{i}:
        s{i} = x{a}
        v{i} = x{b}
        u{i} = x{c}
        t{i} = s{i} if now < s{i} else now
    else:
        s{i} = S{i}
        v{i} = x{c} if S{i} - x{a} < h{i} else 0
        u{i} = 0
        t{i} = now
    if not v{i} * (p{i} - (t{i} - s{i})) / p{i} + u{i} + cost <= m{i}:
        return None""",
    Algorithm.GCRA: """
    g{i} = x{a}
    if g{i} < now:
        g{i} = now
    g{i} = g{i} + cost * T{i}
    if not g{i} - now <= C{i}:
        return None""",
}
_STATE = {
    Algorithm.FIXED_WINDOW: "s{i}, c{i}",
    Algorithm.FIRST_HIT_WINDOW: "s{i}, c{i}",
    Algorithm.SLIDING_WINDOW: "s{i}, v{i}, u{i} + cost",
    Algorithm.GCRA: "g{i}",
}


def charger(limits: tuple[Limit, ...]) -> FlatCharger:
    """The :data:`FlatCharger` of a set of ``limits`` (see the comment above)."""
    windowed = tuple(limit for limit in limits if limit.algorithm in _WINDOWED)
    fresh = tuple(x for limit in limits for x in _FRESH[limit.algorithm])
    numbers: list[object] = [fresh, _WindowStarts(windowed)]
    for limit in limits:
        numbers += (
            limit.period_s,
            limit.amount,
            limit.amount + _EPS,
            1.5 * limit.period_s,
            limit.interval_s,
            limit.capacity_s + _EPS,
        )
    bind: Callable[..., FlatCharger] = _compiled(tuple(limit.algorithm for limit in limits))
    return bind(*numbers)


@functools.cache
def _compiled(shape: tuple[Algorithm, ...]) -> Callable[..., FlatCharger]:
    """A function binding a set's numbers to the charger of ``shape``, compiled once."""
    names = ["fresh", "windows"]
    body = []
    state = []
    width = 0
    starts = []
    for i, algorithm in enumerate(shape):
        names += [f"p{i}", f"n{i}", f"m{i}", f"h{i}", f"T{i}", f"C{i}"]
        if algorithm in _WINDOWED:
            starts.append(f"S{i}")
        a = width
        body.append(_CODE[algorithm].format(i=i, a=a, b=a + 1, c=a + 2))
        state.append(_STATE[algorithm].format(i=i))
        width += len(_FRESH[algorithm])
    head = ""
    if starts:
        span = ", ".join(["lo", "hi", *starts])
        head = f"""
    {span}, = windows.starts
    if not lo <= now < hi:
        {span}, = windows.at(now)"""
    flat = ", ".join(f"x{k}" for k in range(width))
    source = f"""
def bind({", ".join(names)}):
  def charge(flat, now, cost):{head}
    {flat}, = fresh if flat is None else flat{"".join(body)}
    return ({", ".join(state)},)
  return charge
"""
    namespace: dict[str, Callable[..., FlatCharger]] = {}
    exec(compile(source, f"<ratekeeper charger {'/'.join(shape)}>", "exec"), namespace)
    return namespace["bind"]


class _WindowStarts:
    """The aligned window starts (``now - now % period``) of some limits, and the span of time
    ``[lo, hi)`` in which they hold, kept so that most decisions skip the float modulo.

    Kept only for whole-second float periods and starts in ``(0, 2**53)``: there a start is a
    whole number held exactly, and for any ``now`` in ``[start, start + period)`` the modulo
    gives that same start, bit for bit. Any other time (or period) is computed afresh on every
    call. The span is one tuple, replaced whole, so threads deciding at once never see a mixed
    one.
    """

    __slots__ = ("limits", "starts", "whole")

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        self.limits = limits
        self.whole = all(
            type(lim.period_s) is float and lim.period_s.is_integer() for lim in limits
        )
        # An empty span: the first call computes the starts.
        self.starts: tuple[float, ...] = (1.0, 0.0) + (0.0,) * len(limits)

    def at(self, now: float) -> tuple[float, ...]:
        """``(lo, hi, start, ...)`` at ``now``, kept for the next calls when exact."""
        starts = [now - now % lim.period_s for lim in self.limits]
        lo = max(starts)
        hi = min([start + lim.period_s for start, lim in zip(starts, self.limits, strict=True)])
        span = (lo, hi, *starts)
        if self.whole and min(starts) > 0.0 and hi <= _EXACT_S:
            self.starts = span
        return span
