"""The fast allowed paths decide exactly as the general per-limit steps, state for state."""

from __future__ import annotations

import math
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import Limit, Limiter, LimitSet, ManualClock, MemoryStore
from ratekeeper.algorithms import Algorithm
from ratekeeper.core import decide
from ratekeeper.decision import ChargedDecision, Decision

# Whole-second periods keep their window starts between calls; 0.2 s and 1.5 s never do.
periods = st.sampled_from([0.2, 1.0, 1.5, 2.0, 5.0, 60.0, 3600.0, 86400.0])
fixed_specs = st.tuples(st.integers(min_value=1, max_value=12), periods)
limit_specs = st.tuples(
    st.integers(min_value=1, max_value=12), periods, st.sampled_from(list(Algorithm))
)
# Epoch-scale times, small ones, times before 1970, near 0, and past 2**53 (no whole-second
# float there): the kept window starts must never be used where they would not be exact.
starts = st.sampled_from([1000.0, 1_795_370_400.0, -50.0, 0.0, 2.0**53 - 30, 2.0**53 + 4096])
# (gap before the request in ms, cost): backwards steps, and jumps over hours and days.
requests = st.lists(
    st.tuples(
        st.one_of(
            st.integers(min_value=-3000, max_value=3000),
            st.sampled_from([59_999, 60_000, 3_600_000, 86_400_000, -86_400_000]),
        ),
        st.integers(min_value=0, max_value=4),
    ),
    min_size=1,
    max_size=150,
)


def _fixed_set(specs: list[tuple[int, float]]) -> LimitSet:
    return _set([(amount, period, Algorithm.FIXED_WINDOW) for amount, period in specs])


def _set(specs: list[tuple[int, float, Algorithm]]) -> LimitSet:
    return LimitSet(
        "set",
        [
            Limit(rate=f"{amount}/{period}s", algorithm=algorithm, name=f"l{i}")  # type: ignore[arg-type]
            for i, (amount, period, algorithm) in enumerate(specs)
        ],
    )


def _check_charger(limit_set: LimitSet, seq: list[tuple[int, int]], start: float) -> None:
    flat: tuple[float, ...] | None = None
    now = start
    for gap_ms, cost in seq:
        now += gap_ms / 1000
        charged = limit_set.charge_flat(flat, now, cost)
        _, expected = limit_set.decide_flat(flat, now, cost)
        # It may only leave a refusal to the general path, never decide otherwise; repr: the
        # same numbers of the same types, -0.0 told from 0.0.
        assert charged is None or repr(charged) == repr(expected), (flat, now, cost)
        if expected is not None:
            assert charged is not None, (flat, now, cost)
            flat = expected


@settings(max_examples=300, deadline=None)
@given(st.lists(limit_specs, min_size=1, max_size=4), requests, starts)
def test_the_charger_equals_the_general_decision(
    specs: list[tuple[int, float, Algorithm]], seq: list[tuple[int, int]], start: float
) -> None:
    _check_charger(_set(specs), seq, start)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(fixed_specs, min_size=3, max_size=3),
    st.sampled_from(list(Algorithm)),
    requests,
    starts,
)
def test_the_charger_of_a_one_algorithm_set_equals_the_general_decision(
    specs: list[tuple[int, float]],
    algorithm: Algorithm,
    seq: list[tuple[int, int]],
    start: float,
) -> None:
    # The sets users write most ("100/minute; 1000/hour; 10000/day", one algorithm).
    _check_charger(_set([(a, p, algorithm) for a, p in specs]), seq, start)


def test_odd_clock_values_are_left_to_the_general_path() -> None:
    # NaN and infinite times: whatever the steps answer (or raise), the charger answers the
    # same or leaves it to them.
    for algorithm in Algorithm:
        limit_set = LimitSet("a", "5/second; 50/minute", algorithm=algorithm)
        for now in (math.nan, math.inf, -math.inf, 0.0, -0.0):
            for flat in (None, limit_set.charge_flat(None, 1000.0, 1)):
                charged = limit_set.charge_flat(flat, now, 1)
                try:
                    _, expected = limit_set.decide_flat(flat, now, 1)
                except (ValueError, OverflowError):
                    # A refusal at a NaN or infinite time has no whole number remaining.
                    assert charged is None
                    continue
                assert charged is None or repr(charged) == repr(expected), (algorithm, now)


def test_sets_of_one_shape_share_one_compiled_charger() -> None:
    first = LimitSet("a", "1/second; 2/minute", algorithm="gcra").charge_flat
    second = LimitSet("b", "7/hour; 9/day", algorithm="gcra").charge_flat
    assert first.__code__ is second.__code__
    assert first is not second


def _reference(
    limit_sets: list[LimitSet], seq: list[tuple[int, int, int]], start: float
) -> list[tuple[bool, float, object, object]]:
    """The pure core's answers, states kept per (set, key) as the general path keeps them."""
    entries: dict[tuple[str, str], object] = {}
    out = []
    now = start
    for gap_ms, which, cost in seq:
        now += gap_ms / 1000
        limit_set = limit_sets[which % len(limit_sets)]
        item = (limit_set, f"k{which % 2}")
        new, decision = decide([item], [entries.get((limit_set.id, item[1]))], now, cost)  # type: ignore[list-item]
        if new is not None:
            entries[(limit_set.id, item[1])] = new[0]
        out.append((decision.allowed, decision.retry_after_s, decision.states, decision.binding))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(fixed_specs, min_size=3, max_size=3),
    st.sampled_from(list(Algorithm)),
    st.lists(
        st.tuples(
            # Forward only: the store forgets expired keys, which a clock going back then
            # finds fresh, where the pure core still holds their state.
            st.integers(min_value=0, max_value=5000),
            st.integers(min_value=0, max_value=3),
            st.integers(min_value=1, max_value=4),
        ),
        min_size=1,
        max_size=100,
    ),
    st.sampled_from([1_795_370_400.0, 1000.0]),
    st.booleans(),
)
def test_the_limiter_on_memory_answers_as_the_pure_core(
    specs: list[tuple[int, float]],
    algorithm: Algorithm,
    seq: list[tuple[int, int, int]],
    start: float,
    read_binding_first: bool,
) -> None:
    # The memory store's one-item path (charged decisions) against core.decide, for the fast
    # sets and the others (one limit, other algorithms). The over-limit cache in front has its
    # own tests (tests/test_over_limit.py): off here, so that refusals are the store's.
    limit_sets = [
        _fixed_set(specs),
        _fixed_set(specs[:1]),
        LimitSet(
            "other",
            [
                Limit(rate=f"{a}/{p}s", algorithm=algorithm, name=f"l{i}")  # type: ignore[arg-type]
                for i, (a, p) in enumerate(specs)
            ],
        ),
    ]
    clock = ManualClock(start)
    limiter = Limiter(MemoryStore(), clock=clock, over_limit_cache_s=0)
    got = []
    for gap_ms, which, cost in seq:
        clock.set(clock() + gap_ms / 1000)
        decision = limiter.hit(limit_sets[which % len(limit_sets)], f"k{which % 2}", cost)
        # Either lazy field first: each must build the other's inputs.
        if read_binding_first:
            binding, states = decision.binding, decision.states
        else:
            states, binding = decision.states, decision.binding
        got.append((decision.allowed, decision.retry_after_s, states, binding))
    expected = _reference(limit_sets, seq, start)
    assert got == expected


def test_an_allowed_fixed_window_charge_is_a_charged_decision_with_its_steps() -> None:
    clock = ManualClock(1_800_000_030.0)
    limiter = Limiter(MemoryStore(), clock=clock)
    api = LimitSet("api", "2/minute; 5/hour; 9/day")
    first = limiter.hit(api, "k")
    assert type(first) is ChargedDecision
    assert (first.limit, first.remaining, first.reset_at) == (2, 1, 1_800_000_060.0)
    assert [s.remaining for s in first.states] == [1, 4, 8]
    limiter.hit(api, "k")
    refused = limiter.hit(api, "k")
    assert type(refused) is Decision and not refused.allowed
    assert refused.retry_after_s == 30.0
    clock.advance(30.0)
    # The next minute: the window starts kept from the last call no longer hold.
    assert [s.remaining for s in limiter.hit(api, "k").states] == [1, 2, 6]
    # A peek charges nothing, and reports the same.
    assert [s.remaining for s in limiter.peek(api, "k").states] == [1, 2, 6]
    assert [s.remaining for s in limiter.peek(api, "k").states] == [1, 2, 6]


def test_threads_sharing_a_set_across_window_edges_admit_exactly_each_window() -> None:
    # Four threads on one set, the clock crossing a minute edge between two rounds: the kept
    # window starts are shared by every thread's decisions.
    clock = ManualClock(1_800_000_000.0)
    limiter = Limiter(MemoryStore(), clock=clock, over_limit_cache_s=0)
    api = LimitSet("api", "50/minute; 1000/hour; 10000/day")
    for _ in range(2):
        admitted = [0] * 4
        barrier = threading.Barrier(4)

        def worker(
            index: int, admitted: list[int] = admitted, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            admitted[index] = sum(limiter.hit(api, "k").allowed for _ in range(40))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(admitted) == 50
        clock.advance(60.0)
