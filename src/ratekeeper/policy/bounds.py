"""The numbers a policy may hold, and why: each is what every store represents exactly.

Counts live as Python integers (memory), SQLite integers (64-bit) and Redis Lua numbers, which
are doubles: exact up to 2**53. Times are float seconds since the epoch, whose resolution today
is about a quarter of a microsecond, and Redis expiries are whole milliseconds. A policy that
asks for more than these hold would decide wrongly in one store or make its script fail, so it
is refused when loaded, naming the key and the bound (``docs/policy.md`` lists them).
"""

from __future__ import annotations

from ratekeeper.algorithms import Algorithm
from ratekeeper.limit import Limit

__all__ = [
    "MAX_AMOUNT",
    "MAX_IN_FLIGHT",
    "MAX_PERIOD_S",
    "MIN_INTERVAL_S",
    "MIN_PERIOD_S",
    "capacity",
    "rate_problem",
]

# Below 2**53 (9.007e15): a count plus any cost up to the amount stays exact as a double.
MAX_AMOUNT = 10**15
# Redis expiries are whole milliseconds.
MIN_PERIOD_S = 0.001
# A (leap) year: longer quotas are billing, not rate limiting, and expiries stay far from any
# integer limit.
MAX_PERIOD_S = 366 * 86400.0
# GCRA's emission interval (period / amount): above the clock's float resolution.
MIN_INTERVAL_S = 1e-6
MAX_IN_FLIGHT = 10**9


def capacity(limit: Limit) -> int:
    """The largest cost one request can ever be admitted for under ``limit``."""
    return limit.burst if limit.algorithm is Algorithm.GCRA else limit.rate.amount


def rate_problem(limit: Limit) -> str | None:
    """What bound ``limit`` breaks, as the expected half of a policy error, or ``None``."""
    rate = limit.rate
    if rate.amount > MAX_AMOUNT:
        return (
            f"an amount up to 10^15 (counts stay exact in every store; Redis Lua numbers are "
            f"doubles, exact to 2^53), got {rate.amount} in {rate}"
        )
    if not MIN_PERIOD_S <= rate.period_s <= MAX_PERIOD_S:
        return f"a period from 1 ms to 366 days, got {rate.period_s:g} s in {rate}"
    if limit.algorithm is Algorithm.GCRA and rate.period_s / rate.amount < MIN_INTERVAL_S:
        return (
            f"at most one unit per microsecond with gcra (its clock resolution), got {rate}; "
            "use a window algorithm or a longer period"
        )
    if limit.burst > MAX_AMOUNT:
        return f"a burst up to 10^15, got {limit.burst}"
    return None
