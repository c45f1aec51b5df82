"""Each algorithm against a simple reference model, over random request sequences."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import Limit, LimitSet
from ratekeeper.algorithms import State

# (gap before the request in ms, cost)
requests = st.lists(
    st.tuples(st.integers(min_value=0, max_value=1500), st.integers(min_value=1, max_value=4)),
    min_size=1,
    max_size=200,
)
amounts = st.integers(min_value=1, max_value=12)
# Small and epoch-scale start times: the latter carry float rounding of ~2.4e-7 s.
starts = st.sampled_from([1000.0, 1_795_370_400.0])
periods = st.sampled_from([1.0, 2.0, 5.0])


def run(
    limit: Limit, seq: list[tuple[int, int]], start: float = 1_795_370_400.0
) -> list[tuple[float, int, bool, float]]:
    """Drive one limit; returns (now, cost, allowed, retry_after) per request."""
    state: State | None = None
    now = start
    out = []
    for gap_ms, cost in seq:
        now += gap_ms / 1000
        ok, new, _, _, retry = limit.step(state, now, limit, cost)
        if ok:
            state = new
        out.append((now, cost, ok, retry))
    return out


@settings(max_examples=200, deadline=None)
@given(amounts, periods, requests)
def test_fixed_window_matches_a_per_window_counter(
    amount: int, period: float, seq: list[tuple[int, int]]
) -> None:
    limit = Limit.parse(f"{amount}/{period}s")
    counts: dict[int, int] = {}
    for now, cost, ok, retry in run(limit, seq):
        window = math.floor(now / period)
        used = counts.get(window, 0)
        expected = used + cost <= amount
        assert ok == expected
        if ok:
            counts[window] = used + cost
        elif cost <= amount:
            assert math.isclose(now + retry, (window + 1) * period)
    assert all(v <= amount for v in counts.values())


@settings(max_examples=200, deadline=None)
@given(amounts, periods, requests)
def test_first_hit_window_matches_a_model(
    amount: int, period: float, seq: list[tuple[int, int]]
) -> None:
    limit = Limit.parse(f"{amount}/{period}s", "first_hit_window")
    window_start: float | None = None
    used = 0
    for now, cost, ok, retry in run(limit, seq):
        # A rejected request charges nothing, so it does not open a window either.
        start, count = window_start, used
        if start is None or now >= start + period:
            start, count = now, 0
        assert ok == (count + cost <= amount)
        if ok:
            window_start, used = start, count + cost
        elif cost <= amount:
            assert math.isclose(now + retry, start + period)


@settings(max_examples=200, deadline=None)
@given(amounts, periods, requests)
def test_gcra_never_admits_more_than_burst_plus_rate(
    amount: int, period: float, seq: list[tuple[int, int]]
) -> None:
    burst = max(1, amount // 2)
    limit = Limit.parse(f"{amount}/{period}s", "gcra", burst=burst)
    admitted = [(now, cost) for now, cost, ok, _ in run(limit, seq) if ok]
    for i, (t0, _) in enumerate(admitted):
        total = 0
        for t1, cost in admitted[i:]:
            total += cost
            assert total <= burst + (t1 - t0) * amount / period + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    amounts,
    periods,
    st.sampled_from(["fixed_window", "first_hit_window", "sliding_window", "gcra"]),
    requests,
    starts,
)
def test_retry_after_is_the_earliest_time_the_request_passes(
    amount: int, period: float, algorithm: str, seq: list[tuple[int, int]], start: float
) -> None:
    limit = Limit.parse(f"{amount}/{period}s", algorithm)
    state: State | None = None
    now = start
    for gap_ms, cost in seq:
        now += gap_ms / 1000
        ok, new, _, _, retry = limit.step(state, now, limit, cost)
        if ok:
            state = new
            continue
        if cost > amount:
            assert retry == math.inf
            continue
        assert retry > 0
        assert limit.step(state, now + retry, limit, cost)[0]
        if retry > 2e-3:
            assert not limit.step(state, now + retry - 1e-3, limit, cost)[0]


@settings(max_examples=100, deadline=None)
@given(
    amounts,
    periods,
    st.sampled_from(["fixed_window", "first_hit_window", "sliding_window", "gcra"]),
)
def test_with_enough_demand_exactly_the_limit_is_admitted(
    amount: int, period: float, algorithm: str
) -> None:
    limit = Limit.parse(f"{amount}/{period}s", algorithm)
    # Demand far above the limit, within one window that starts on an aligned boundary.
    seq = [(0, 1)] + [(1, 1)] * (amount * 5)
    start = 100 * period
    admitted = sum(
        c for now, c, ok, _ in run(limit, seq, start=start) if ok and now < start + period * 0.99
    )
    if algorithm == "gcra":
        # Burst plus what the rate refills over the span.
        span = min(amount * 5 / 1000, period * 0.99)
        assert amount <= admitted <= amount + math.floor(span * amount / period) + 1
    else:
        assert admitted == amount


@settings(max_examples=200, deadline=None)
@given(amounts, periods, requests)
def test_sliding_window_estimate_never_exceeds_the_limit(
    amount: int, period: float, seq: list[tuple[int, int]]
) -> None:
    limit = Limit.parse(f"{amount}/{period}s", "sliding_window")
    counts: dict[int, int] = {}
    for now, cost, ok, _ in run(limit, seq):
        window = math.floor(now / period)
        prev, cur = counts.get(window - 1, 0), counts.get(window, 0)
        estimate = prev * (period - (now - window * period)) / period + cur
        # The algorithm's slack is a millionth of a request (epoch-scale rounding, see
        # ratekeeper.algorithms._EPS); the model computes the overlap another way.
        over = estimate + cost - amount
        if abs(over) > 2e-6:
            assert ok == (over <= 0)
        if ok:
            counts[window] = cur + cost
    # The documented bound: never more than 2L in one aligned window pair, L in one window.
    assert all(v <= amount for v in counts.values())


@settings(max_examples=200, deadline=None)
@given(amounts, periods, requests, starts)
def test_sliding_window_reset_is_when_quota_is_back_within_one_period(
    amount: int, period: float, seq: list[tuple[int, int]], start: float
) -> None:
    limit = Limit.parse(f"{amount}/{period}s", "sliding_window")
    state: State | None = None
    now = start
    for gap_ms, cost in seq:
        now += gap_ms / 1000
        ok, new, remaining, reset_at, _ = limit.step(state, now, limit, cost)
        if ok:
            state = new
        assert now <= reset_at <= now + period
        if remaining < 1 and reset_at < now + period:
            # With nothing left, Reset is when a request of cost 1 passes again, not later.
            assert limit.step(state, reset_at + 1e-6, limit, 1)[0]
            if reset_at - now > 2e-3:
                assert not limit.step(state, reset_at - 1e-3, limit, 1)[0]
        if remaining >= 1:
            # With some left, Reset is when the whole quota is back (or a period from now).
            assert limit.step(state, reset_at, limit, 0)[2] == amount or reset_at == now + period


algorithms = st.sampled_from(["fixed_window", "fixed_window", "first_hit_window", "gcra"])
limit_specs = st.tuples(
    st.integers(min_value=1, max_value=12),
    st.sampled_from([0.2, 1.0, 2.0, 5.0, 60.0]),
    algorithms,
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.lists(limit_specs, min_size=1, max_size=1), st.lists(limit_specs, min_size=3, max_size=3)
    ),
    st.lists(
        st.tuples(
            st.integers(min_value=-300, max_value=1500), st.integers(min_value=1, max_value=4)
        ),
        min_size=1,
        max_size=120,
    ),
    starts,
)
def test_a_sets_flat_decision_equals_its_per_limit_steps(
    specs: list[tuple[int, float, str]], seq: list[tuple[int, int]], start: float
) -> None:
    # The flat deciders (one or three fixed windows charged inline, the memory store's path)
    # against each limit's own step, the clock sometimes going backwards.
    limits = [
        Limit(rate=Limit.parse(f"{amount}/{period}s").rate, algorithm=algorithm, name=f"l{i}")  # type: ignore[arg-type]
        for i, (amount, period, algorithm) in enumerate(specs)
    ]
    limit_set = LimitSet("set", limits)
    flat: tuple[float, ...] | None = None
    entry: tuple[State | None, ...] | None = None
    now = start
    for gap_ms, cost in seq:
        now += gap_ms / 1000
        results, new_flat = limit_set.decide_flat(flat, now, cost)
        expected, new_entry = limit_set.decide_entry(entry, now, cost)
        if callable(results):
            # An allowed charge's steps, built from its new state when asked for.
            assert new_flat is not None
            results = results(new_flat)
        assert results == expected
        if new_entry is None:
            assert new_flat is None
        else:
            assert new_flat == tuple(x for state in new_entry for x in state)  # type: ignore[union-attr]
            flat, entry = new_flat, new_entry
