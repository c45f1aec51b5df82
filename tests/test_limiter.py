"""The limiter over the memory store: several limits at once, exactness, peek, reset."""

import asyncio
import math
import threading

import pytest

from ratekeeper import (
    AsyncLimiter,
    Limit,
    LimitConfigError,
    Limiter,
    LimitSet,
    ManualClock,
    MemoryStore,
    StoreURLError,
    store_from_url,
)
from ratekeeper.stores.url import mask_url

API = LimitSet("api", "3/minute; 5/hour; 10/day")


def test_first_answer_counts_the_current_request() -> None:
    limiter = Limiter(clock=ManualClock(0.0))
    d = limiter.hit(LimitSet("musique", "100/minute; 1000/hour; 10000/day"), "key")
    assert d.allowed and d.remaining == 99 and d.limit == 100 and d.reset_at == 60.0
    assert [s.remaining for s in d.states] == [99, 999, 9999]


def test_all_limits_must_pass_and_a_rejection_charges_nothing() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock)
    for _ in range(3):
        assert limiter.hit(API, "k")
    rejected = limiter.hit(API, "k")
    assert not rejected and rejected.binding.limit.name == "minute"
    assert rejected.retry_after_s == 60.0
    # The hour and day limits were not charged by the rejected request.
    peek = limiter.peek(API, "k")
    assert [s.remaining for s in peek.states] == [0, 2, 7]
    clock.advance(60)
    assert limiter.hit(API, "k", cost=2)
    d = limiter.hit(API, "k")
    assert not d and d.binding.limit.name == "hour" and d.retry_after_s == 3600 - 60


def test_binding_limit_is_the_least_remaining_then_the_longest_period() -> None:
    limiter = Limiter(clock=ManualClock(0.0))
    tie = LimitSet("tie", "4/minute; 4/hour")
    d = limiter.hit(tie, "k")
    assert d.binding.limit.name == "hour"
    d = limiter.hit(LimitSet("other", "10/minute; 4/hour"), "k")
    assert d.binding.limit.name == "hour" and d.remaining == 3


def test_retry_after_is_the_largest_wait_among_rejecting_limits() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock)
    both = LimitSet("both", "1/minute; 1/hour")
    assert limiter.hit(both, "k")
    d = limiter.hit(both, "k")
    assert d.retry_after_s == 3600.0 and d.binding.limit.name == "hour"


def test_combined_items_are_all_or_nothing() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock)
    per_key = LimitSet("key", "5/minute")
    service = LimitSet("global", "3/minute")
    assert limiter.hit_many([(per_key, "a"), (service, "*")])
    assert limiter.hit_many([(per_key, "b"), (service, "*")])
    assert limiter.hit_many([(per_key, "a"), (service, "*")])
    d = limiter.hit_many([(per_key, "b"), (service, "*")])
    assert not d and d.binding.limit_set == "global" and d.binding.key == "*"
    assert limiter.peek(per_key, "b").remaining == 4


def test_cost_larger_than_a_limit_can_never_pass() -> None:
    limiter = Limiter(clock=ManualClock(0.0))
    d = limiter.hit(API, "k", cost=4)
    assert not d and d.retry_after_s == math.inf and not d.satisfiable
    assert limiter.peek(API, "k").remaining == 3


def test_reset_forgets_a_key() -> None:
    limiter = Limiter(clock=ManualClock(0.0))
    for _ in range(3):
        limiter.hit(API, "k")
    assert not limiter.hit(API, "k")
    limiter.reset(API, "k")
    assert limiter.hit(API, "k").remaining == 2


def test_bad_arguments_are_named() -> None:
    limiter = Limiter()
    with pytest.raises(LimitConfigError, match="cost must be"):
        limiter.hit(API, "k", cost=0)
    with pytest.raises(LimitConfigError, match="str key"):
        limiter.hit(API, b"k")  # type: ignore[arg-type]
    with pytest.raises(LimitConfigError, match="at least one"):
        limiter.hit_many([])


def test_keys_with_odd_bytes_are_just_keys() -> None:
    limiter = Limiter(clock=ManualClock(0.0))
    odd = "k\x00\n{x}:\u2603" * 100
    assert limiter.hit(API, odd).remaining == 2
    assert limiter.hit(API, "k").remaining == 2


def test_eight_threads_racing_on_one_key_admit_exactly_the_limit() -> None:
    limiter = Limiter()
    limits = LimitSet("race", "1000/hour; 5000/day")
    admitted = [0] * 8
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(400):
            if limiter.hit(limits, "hot"):
                admitted[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 1000


def test_async_limiter_shares_the_core_and_is_exact_under_gather() -> None:
    store = MemoryStore()
    limiter = AsyncLimiter(store, clock=ManualClock(0.0))
    limits = LimitSet("aio", Limit.parse("300/minute", "gcra", burst=5))

    async def main() -> list[bool]:
        decisions = await asyncio.gather(*(limiter.hit(limits, "k") for _ in range(50)))
        return [d.allowed for d in decisions]

    assert sum(asyncio.run(main())) == 5
    d = asyncio.run(limiter.peek(limits, "k"))
    assert d.remaining == 0
    asyncio.run(limiter.reset(limits, "k"))
    assert asyncio.run(limiter.hit(limits, "k")).remaining == 4


def test_real_clock_one_second_window() -> None:
    # One honest real-time test: the system clock drives an aligned 1 s window.
    limiter = Limiter()
    limits = LimitSet("real", "2/second")
    results = [limiter.hit(limits, "k") for _ in range(3)]
    d = results[-1]
    if not d.allowed:
        assert 0 < d.retry_after_s <= 1.0
    assert sum(r.allowed for r in results) >= 2


def test_store_urls() -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    assert store_from_url("memory://?max_entries=10").max_entries == 10
    with pytest.raises(StoreURLError, match="unknown store scheme in 'nope://u:\\*\\*\\*@h:1'"):
        store_from_url("nope://u:secret@h:1")
    with pytest.raises(StoreURLError, match="not a store URL"):
        Limiter("localhost:6379")
    with pytest.raises(StoreURLError, match="unknown option"):
        store_from_url("memory://?size=3")


def test_mask_url_hides_passwords_and_salts_even_in_cluster_urls() -> None:
    assert mask_url("redis+cluster://:pw@h1:1,h2:2/0") == "redis+cluster://:***@h1:1,h2:2/0"
    assert mask_url("redis://u:p@ss@h:6379/0?key_salt=abc&db=1") == (
        "redis://u:***@h:6379/0?key_salt=***&db=1"
    )
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"


def test_binding_agrees_with_the_states_it_is_chosen_from() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock)
    a = LimitSet("a", "3/minute; 4/hour")
    b = LimitSet("b", "2/minute; 9/day")
    for step in range(12):
        d = limiter.hit_many([(a, "x"), (b, "y")])
        states = d.states
        if d.allowed:
            expected = min(states, key=lambda s: (s.remaining, -s.limit.period_s))
        else:
            expected = max(states, key=lambda s: (s.retry_after_s, s.limit.period_s))
        assert d.binding == expected
        clock.advance(20 * step)
