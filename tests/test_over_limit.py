"""The over-limit cache: refusals from memory, exactly what the store would answer, and no
longer than a reset allows (same process at once; other processes within ``max_age_s``)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ratekeeper import Limiter, LimitSet, ManualClock, MemoryStore
from ratekeeper.errors import LimitConfigError, StoreError
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import FallbackStore
from ratekeeper.stores.over_limit import OverLimitCache, RecalledRefusal
from test_http_support import serve

ALGORITHMS = ("fixed_window", "first_hit_window", "sliding_window", "gcra")


@pytest.mark.parametrize("costs", [(1,), (1, 1, 1, 2, 4)], ids=["cost 1", "mixed costs"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cached_answers_are_the_stores_own(algorithm: str, costs: tuple[int, ...]) -> None:
    """The same random traffic through a cached and a plain store: every verdict alike, so the
    cache never admits nor refuses what the store would not; with one cost the waits and headers
    are the store's too (with several, a cheaper request admitted since may have filled another
    limit: the wait told is then the shorter one the store told at first)."""
    rng = random.Random(7)
    clock = ManualClock(1_700_000_000.0)
    cached = OverLimitCache(MemoryStore(), max_age_s=30.0)
    plain = MemoryStore()
    sets = [
        LimitSet("a", "5/second; 20/minute", algorithm=algorithm),
        LimitSet("b", "3/10 seconds", algorithm=algorithm),
    ]
    recalled = 0
    for _ in range(6000):
        clock.advance(rng.choice((0.0, 0.0, 0.001, 0.05, 0.3, 1.7)))
        items = [(sets[0], f"k{rng.randrange(3)}")]
        if rng.random() < 0.3:
            items.append((sets[1], "shared"))
        cost = rng.choice(costs)
        now = clock()
        got = cached.decide(tuple(items), cost, now)
        want = plain.decide(tuple(items), cost, now)
        assert got.allowed == want.allowed, (now, items, cost)
        if not got.allowed:
            recalled += isinstance(got, RecalledRefusal)
            # A refusal from memory may name fewer limits (those it knows are over) but its
            # wait is the store's when that limit binds, never more.
            assert got.retry_after_s <= want.retry_after_s + 1e-6
            if len(items) == 1 and len(costs) == 1:
                assert got.retry_after_s == pytest.approx(want.retry_after_s, abs=1e-6)
                assert got.binding.limit == want.binding.limit
                assert got.binding.remaining == want.binding.remaining
                assert got.binding.retry_after_s == pytest.approx(
                    want.binding.retry_after_s, abs=1e-6
                )
    assert recalled > 500


def test_a_refusal_from_memory_counts_its_wait_down() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock, over_limit_cache_s=60)
    api = LimitSet("api", "2/minute; 100/hour")
    assert limiter.hit(api, "k") and limiter.hit(api, "k")
    first = limiter.hit(api, "k")
    assert not first and not isinstance(first, RecalledRefusal)
    clock.advance(20.5)
    again = limiter.hit(api, "k")
    assert isinstance(again, RecalledRefusal)
    assert again.retry_after_s == pytest.approx(39.5)
    assert again.binding.retry_after_s == pytest.approx(39.5)
    assert [s.remaining for s in again.states] == [s.remaining for s in first.states]
    assert again.reset_at == 60.0 and again.limit == 2
    # A cost the store refused is known; a smaller one is the store's to decide.
    cheap = LimitSet("cheap", "3/minute")
    assert limiter.hit(cheap, "k", cost=2)
    assert not limiter.hit(cheap, "k", cost=2)
    assert limiter.hit(cheap, "k", cost=1)


def test_a_reset_through_the_limiter_is_seen_at_once() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock, over_limit_cache_s=3600)
    api = LimitSet("api", "1/hour")
    assert limiter.hit(api, "k")
    assert not limiter.hit(api, "k")
    assert isinstance(limiter.hit(api, "k"), RecalledRefusal)
    limiter.reset(api, "k")
    assert limiter.hit(api, "k").allowed


def test_a_reset_behind_its_back_is_seen_within_max_age() -> None:
    clock = ManualClock(0.0)
    store = MemoryStore()
    limiter = Limiter(store, clock=clock, over_limit_cache_s=0.5)
    api = LimitSet("api", "1/hour")
    assert limiter.hit(api, "k")
    assert not limiter.hit(api, "k")
    store.reset(((api, "k"),))  # as another process would: the cache does not see it
    clock.advance(0.49)
    assert isinstance(limiter.hit(api, "k"), RecalledRefusal)
    clock.advance(0.01)
    assert limiter.hit(api, "k").allowed


def test_new_numbers_for_a_limit_are_never_answered_from_an_old_refusal() -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(clock=clock, over_limit_cache_s=3600)
    assert limiter.hit(LimitSet("api", "1/hour"), "k")
    assert not limiter.hit(LimitSet("api", "1/hour"), "k")
    # A reloaded policy raised the limit: the same stored count, and the store admits.
    assert limiter.hit(LimitSet("api", "2/hour"), "k").allowed
    # A reset under the new numbers forgets the refusal under the old ones too.
    limiter.reset(LimitSet("api", "2/hour"), "k")
    assert limiter.hit(LimitSet("api", "1/hour"), "k").allowed


def test_the_wait_of_the_sliding_window_leaves_its_slack_to_the_store() -> None:
    """The sliding counter admits a millionth of a request over its amount: the cache stops
    answering before that slack could let a request through, and the store decides."""
    clock = ManualClock(86_400.0 * 20_000)
    day = LimitSet("day", "3/day", algorithm="sliding_window")
    cached = OverLimitCache(MemoryStore(), max_age_s=10 * 86_400.0)
    plain = MemoryStore()
    for _ in range(3):
        cached.decide(((day, "k"),), 1, clock())
        plain.decide(((day, "k"),), 1, clock())
    clock.advance(86_400.0)  # the next window: the previous one's weight drains all day
    while True:
        got = cached.decide(((day, "k"),), 1, clock())
        want = plain.decide(((day, "k"),), 1, clock())
        assert got.allowed == want.allowed
        if want.allowed:
            break
        clock.set(clock() + max(want.retry_after_s - 0.05, 0.001))


def test_degraded_refusals_and_peeks_are_not_kept() -> None:
    class Down:
        def decide(self, *args: object, **kwargs: object) -> None:
            raise StoreError("down")

        def reset(self, items: object) -> None:
            raise StoreError("down")

        def close(self) -> None:
            pass

    api = LimitSet("api", "1/hour")
    fallback = FallbackStore(Down(), FailMode.FAIL_CLOSED)  # type: ignore[arg-type]
    cache = OverLimitCache(fallback)
    assert not cache.decide(((api, "k"),), 1, 0.0)
    assert len(cache) == 0
    memory = OverLimitCache(MemoryStore())
    memory.decide(((api, "k"),), 1, 0.0)
    assert memory.decide(((api, "k"),), 0, 0.0, peek=True).allowed
    assert len(memory) == 0


def test_a_flood_of_distinct_keys_stays_bounded() -> None:
    cache = OverLimitCache(MemoryStore(), max_entries=500)
    api = LimitSet("api", "1/hour")
    for i in range(20_000):
        cache.decide(((api, f"k{i}"),), 2, 0.0)  # a cost over the limit: refused at once
        assert len(cache) <= 500
    assert len(cache) >= 400
    # The newest refusals are the ones kept.
    assert isinstance(cache.decide(((api, "k19999"),), 2, 0.5), RecalledRefusal)


def test_bad_settings_are_named() -> None:
    with pytest.raises(LimitConfigError, match="max_age_s"):
        OverLimitCache(MemoryStore(), max_age_s=math.inf)
    with pytest.raises(LimitConfigError, match="max_entries"):
        OverLimitCache(MemoryStore(), max_entries=0)
    with pytest.raises(LimitConfigError, match="over_limit_cache_s"):
        Limiter(over_limit_cache_s="1")  # type: ignore[arg-type]


_OTHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from ratekeeper import Limiter, LimitSet
    from ratekeeper.stores.over_limit import RecalledRefusal
    from ratekeeper.stores.redis import RedisStore

    limiter = Limiter(RedisStore(sys.argv[1]), over_limit_cache_s=float(sys.argv[2]))
    api = LimitSet("api", "1/hour")
    limiter.hit(api, "k")
    assert not limiter.hit(api, "k").allowed
    assert isinstance(limiter.hit(api, "k"), RecalledRefusal)
    print("refused", flush=True)
    sys.stdin.readline()  # the parent has reset the key
    started = time.monotonic()
    while not limiter.hit(api, "k").allowed:
        time.sleep(0.005)
    print(f"admitted {time.monotonic() - started:.3f}", flush=True)
    """
)


def test_a_reset_in_one_process_is_seen_in_another_within_max_age(tmp_path: Path) -> None:
    redis_servers = pytest.importorskip("redis_servers")
    from ratekeeper.stores.redis import RedisStore  # noqa: PLC0415 (redis extra)

    max_age = 0.5
    with redis_servers.redis_server(tmp_path) as server:
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_PROCESS, server.url, str(max_age)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert other.stdout is not None and other.stdin is not None
            assert other.stdout.readline().strip() == "refused"
            here = Limiter(RedisStore(server.url))
            api = LimitSet("api", "1/hour")
            assert not here.hit(api, "k").allowed
            here.reset(api, "k")
            other.stdin.write("go\n")
            other.stdin.flush()
            line = other.stdout.readline().split()
            assert line[0] == "admitted"
            # The bound is max_age; the rest is a loaded machine's scheduling.
            assert float(line[1]) <= max_age + 2.0
            here.store.close()
        finally:
            other.kill()
            other.wait()


_TWO_WORKERS_POLICY = """
store = "sqlite:///{path}"
body = "aisoule"
apply = ["api"]
[identity]
source = "api_key"
[limits.api]
rates = "4/minute; 100/hour"
"""


def test_two_workers_refuse_a_key_known_over_without_touching_sqlite(tmp_path: Path) -> None:
    """What lets ``serve --workers 2`` scale on refusals: once each worker has been refused a
    key by the shared file, its later refusals of that key run no SQL statement at all."""
    policy = _TWO_WORKERS_POLICY.format(path=tmp_path / "shared.db")
    key = {"Authorization": "Bearer sk_live_flood"}
    with serve("asgi", policy) as one, serve("asgi", policy) as two:
        clients = [one.client(), two.client()]
        codes = [clients[i % 2].get("/a", headers=key).status_code for i in range(6)]
        assert codes == [200, 200, 200, 200, 429, 429]
        statements: list[str] = []
        for srv in (one, two):
            srv.enforcer.store._conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        for i in range(40):
            r = clients[i % 2].get("/a", headers=key)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert statements == []
        # Another key still reaches the file.
        assert clients[0].get("/a", headers={"Authorization": "Bearer other"}).status_code == 200
        assert statements
        for client in clients:
            client.close()
