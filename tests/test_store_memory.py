"""The memory store reclaims expired keys and stays bounded under a flood of keys."""

from ratekeeper import Limit, Limiter, LimitSet, ManualClock, MemoryStore


def test_expired_keys_are_reclaimed_on_the_decision_path() -> None:
    clock = ManualClock(0.0)
    store = MemoryStore()
    # Every decision reaches the store: refusals answered from memory would not sweep.
    limiter = Limiter(store, clock=clock, over_limit_cache_s=0)
    limits = LimitSet("api", "10/minute")
    for i in range(1000):
        limiter.hit(limits, f"k{i}")
    assert len(store) == 1000
    clock.advance(121)
    # Sweeping is amortised: a batch per decision until the due buckets are empty.
    for _ in range(40):
        limiter.hit(limits, "live")
    assert len(store) == 1
    assert limiter.peek(limits, "k1").remaining == 10


def test_live_keys_survive_the_sweep() -> None:
    clock = ManualClock(0.0)
    store = MemoryStore()
    limiter = Limiter(store, clock=clock)
    limits = LimitSet("day", "5/day; 2/minute")
    limiter.hit(limits, "keep")
    for _ in range(50):
        clock.advance(3600)
        limiter.hit(limits, "other")
        if clock() < 86400:
            assert limiter.peek(limits, "keep").states[0].remaining <= 4


def test_memory_is_bounded_by_max_entries() -> None:
    clock = ManualClock(0.0)
    store = MemoryStore(max_entries=500)
    limiter = Limiter(store, clock=clock)
    limits = LimitSet("flood", Limit.parse("1/hour", "sliding_window"))
    for i in range(20_000):
        limiter.hit(limits, f"attacker-{i}")
        assert len(store) <= 500
    # The newest keys are still counted.
    assert not limiter.hit(limits, "attacker-19999")
