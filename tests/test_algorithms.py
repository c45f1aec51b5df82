"""Edges of each algorithm, exactly at boundaries, with costs and clocks going backwards."""

import math

import pytest

from ratekeeper import Algorithm, Limit
from ratekeeper.algorithms import first_hit_window, fixed_window, gcra, sliding_window


def lim(text: str, algorithm: str = "fixed_window", burst: int = 0) -> Limit:
    return Limit.parse(text, algorithm, burst=burst)


def test_fixed_window_resets_exactly_at_the_aligned_boundary() -> None:
    limit = lim("2/2s")
    state = None
    for now in (10.0, 11.999):
        ok, state, _, reset, _ = fixed_window(state, now, limit, 1)
        assert ok and reset == 12.0
    ok, same, remaining, reset, retry = fixed_window(state, 11.999, limit, 1)
    assert not ok and same is state and remaining == 0
    assert retry == pytest.approx(0.001)
    ok, state, remaining, reset, _ = fixed_window(state, 12.0, limit, 1)
    assert ok and remaining == 1 and reset == 14.0


def test_fixed_window_cost_above_remaining_and_above_limit() -> None:
    limit = lim("10/minute")
    ok, state, remaining, _, _ = fixed_window(None, 0.0, limit, 7)
    assert ok and remaining == 3
    ok, _, remaining, _, retry = fixed_window(state, 1.0, limit, 4)
    assert not ok and remaining == 3 and retry == 59.0
    ok, _, _, _, retry = fixed_window(None, 1.0, limit, 11)
    assert not ok and retry == math.inf


def test_fixed_window_clock_going_backwards_does_not_admit_more() -> None:
    limit = lim("2/minute")
    state = None
    for _ in range(2):
        ok, state, *_ = fixed_window(state, 125.0, limit, 1)
        assert ok
    # Back into the previous window: the stored window still counts.
    ok, _, _, reset, retry = fixed_window(state, 100.0, limit, 1)
    assert not ok and reset == 180.0 and retry == 60.0


def test_first_hit_window_starts_at_the_first_request() -> None:
    limit = lim("60/minute", "first_hit_window")
    ok, state, remaining, reset, _ = first_hit_window(None, 1000.5, limit, 1)
    assert ok and remaining == 59 and reset == 1060.5
    ok, state, *_ = first_hit_window(state, 1059.0, limit, 59)
    assert ok
    ok, _, _, _, retry = first_hit_window(state, 1059.0, limit, 1)
    assert not ok and retry == pytest.approx(1.5)
    ok, state, remaining, reset, _ = first_hit_window(state, 1060.5, limit, 1)
    assert ok and remaining == 59 and reset == 1120.5


def test_sliding_window_weights_the_previous_window() -> None:
    limit = lim("10/minute", "sliding_window")
    state = None
    ok, state, *_ = sliding_window(state, 30.0, limit, 10)
    assert ok
    # At 75 s, 3/4 of the previous window overlaps: estimate 7.5, room for 2 more.
    ok, state, remaining, _, _ = sliding_window(state, 75.0, limit, 2)
    assert ok and remaining == 0
    ok, _, _, _, retry = sliding_window(state, 75.0, limit, 1)
    assert not ok
    # Passes once 10 * (60 - e)/60 + 2 + 1 <= 10, i.e. e >= 18: 3 s from now.
    assert retry == pytest.approx(3.0)
    assert sliding_window(state, 75.0 + retry, limit, 1)[0]
    assert not sliding_window(state, 75.0 + retry - 0.01, limit, 1)[0]


def test_sliding_window_reset_is_never_more_than_a_period_away() -> None:
    limit = lim("120/minute", "sliding_window")  # AISoule: 120 per minute, rolling
    ok, _, remaining, reset, _ = sliding_window(None, 30.0, limit, 1)
    # Quota left: Reset is when the request just made has left the rolling window.
    assert ok and remaining == 119 and reset == 90.0
    limit = lim("10/minute", "sliding_window")
    ok, first, *_ = sliding_window(None, 30.0, limit, 10)
    ok, _, remaining, reset, _ = sliding_window(first, 75.0, limit, 2)
    # Nothing left: Reset is when one more request passes (see the retry test above: 3 s).
    assert ok and remaining == 0 and reset == pytest.approx(78.0)
    # Only the previous window's share counts: the whole quota is back when this window ends.
    assert sliding_window(first, 75.0, lim("20/minute", "sliding_window"), 0)[3] == 120.0
    assert sliding_window(None, 130.0, limit, 0)[3] == 180.0


def test_sliding_window_retry_into_the_next_window() -> None:
    limit = lim("10/minute", "sliding_window")
    ok, state, *_ = sliding_window(None, 10.0, limit, 10)
    ok, _, _, _, retry = sliding_window(state, 20.0, limit, 4)
    assert not ok
    # Next window starts at 60; 10*(60-e)/60 + 4 <= 10 -> e >= 24: 84 - 20.
    assert retry == pytest.approx(64.0)
    assert sliding_window(state, 20.0 + retry, limit, 4)[0]
    assert sliding_window(None, 0.0, limit, 11)[4] == math.inf


def test_gcra_burst_then_steady_rate() -> None:
    limit = lim("300/minute", "gcra", burst=5)  # T = 0.2 s
    state = None
    for expected_remaining in (4, 3, 2, 1, 0):
        ok, state, remaining, _, _ = gcra(state, 100.0, limit, 1)
        assert ok and remaining == expected_remaining
    ok, _, remaining, _, retry = gcra(state, 100.0, limit, 1)
    assert not ok and remaining == 0 and retry == pytest.approx(0.2)
    assert gcra(state, 100.2, limit, 1)[0]
    assert not gcra(state, 100.19, limit, 1)[0]
    assert gcra(None, 0.0, limit, 6)[4] == math.inf


def test_gcra_reset_is_when_the_bucket_is_full_again() -> None:
    limit = lim("10/second", "gcra")  # T = 0.1, burst 10
    ok, state, remaining, reset, _ = gcra(None, 50.0, limit, 4)
    assert ok and remaining == 6 and reset == pytest.approx(50.4)
    # A clock going back never leaves more room than the clock standing still.
    at_same = gcra(state, 50.0, limit, 1)
    earlier = gcra(state, 49.0, limit, 1)
    assert at_same[0] and at_same[2] == 5
    assert earlier[2] <= at_same[2]


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_cost_zero_peeks_without_charging(algorithm: Algorithm) -> None:
    limit = lim("5/minute", algorithm.value)
    ok, state, *_ = limit.step(None, 10.0, limit, 2)
    assert ok
    ok, peeked, remaining, _, _ = limit.step(state, 10.0, limit, 0)
    assert ok and remaining == 3 and peeked == state


def test_gcra_burst_at_epoch_scale_times() -> None:
    # At ~1.8e9 s a float carries ~2.4e-7 s of rounding: the whole burst must still pass and
    # remaining must count down exactly.
    limit = lim("300/minute", "gcra", burst=5)
    state = None
    for expected_remaining in (4, 3, 2, 1, 0):
        ok, state, remaining, _, _ = gcra(state, 1_795_370_380.123, limit, 1)
        assert ok and remaining == expected_remaining
    assert not gcra(state, 1_795_370_380.123, limit, 1)[0]
