"""The Lua script against the Python core: same inputs, bit-identical decisions and states.

The store runs with ``use_server_time=False`` so both sides see the same ``now``.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import Limit, LimitSet
from ratekeeper.algorithms import Algorithm
from ratekeeper.core import EntryState, decide
from ratekeeper.decision import Decision
from ratekeeper.rates import Rate
from ratekeeper.stores.redis import RedisStore
from redis_servers import RedisServer, redis_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis-lua")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def store(server: RedisServer) -> Iterator[RedisStore]:
    s = RedisStore(server.url, use_server_time=False, prefix="lua")
    yield s
    s.close()


# Periods of 1 s and more: keys expire in real time, and an example takes milliseconds.
# (algorithm, amount, period, burst); periods of 1 s and more, as keys expire in real time.
limit_specs = st.tuples(
    st.sampled_from(list(Algorithm)),
    st.integers(min_value=1, max_value=12),
    st.sampled_from([1.0, 2.5, 7.0, 60.0, 0.7 * 3, 86400.0]),
    st.integers(min_value=0, max_value=15),
)


def _limit_set(specs: list[tuple[Algorithm, int, float, int]]) -> LimitSet:
    return LimitSet(
        "s",
        [
            Limit(
                rate=Rate(amount, period),
                algorithm=algorithm,
                burst=burst if algorithm is Algorithm.GCRA else 0,
                name=f"l{i}",
            )
            for i, (algorithm, amount, period, burst) in enumerate(specs)
        ],
    )


limit_sets = st.lists(limit_specs, min_size=1, max_size=3).map(_limit_set)
gaps = st.one_of(
    st.sampled_from([0.0, 1e-7, 0.001, 0.3, 1.0, 2.5, 59.999, 60.0, 3600.0, -0.5]),
    st.floats(min_value=-3.0, max_value=100.0, allow_nan=False),
)
# (which items, cost (0: peek), time step)
requests = st.lists(
    st.tuples(
        st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=3),
        st.integers(min_value=0, max_value=14),
        gaps,
    ),
    min_size=1,
    max_size=40,
)
_examples = itertools.count()


def _same(a: Decision, b: Decision) -> None:
    assert a.allowed == b.allowed
    assert a.retry_after_s == b.retry_after_s
    assert a.now == b.now
    steps_a = [(s[0], s[2], s[3], s[4]) for s in a._results]
    steps_b = [(s[0], s[2], s[3], s[4]) for s in b._results]
    assert steps_a == steps_b


def _stored(
    store: RedisStore, client: redis.Redis, limit_set: LimitSet, key: str
) -> EntryState | None:
    raw = client.get(store._codec.key(limit_set, key))
    if raw is None:
        return None
    _, state_format, _ = store._codec.plan(limit_set)
    values = iter(struct.unpack(state_format.decode(), raw))
    widths = {Algorithm.SLIDING_WINDOW: 3, Algorithm.GCRA: 1}
    return tuple(
        tuple(next(values) for _ in range(widths.get(limit.algorithm, 2)))
        for limit in limit_set.limits
    )


@settings(max_examples=250, deadline=None)
@given(
    st.lists(limit_sets, min_size=3, max_size=3),
    st.floats(min_value=1e8, max_value=2e9, allow_nan=False),
    requests,
)
def test_lua_decisions_equal_the_python_core(
    store: RedisStore, client: redis.Redis, sets: list[LimitSet], start: float, seq: list
) -> None:
    run = next(_examples)
    keys = [f"ex{run}-{i}" for i in range(3)]
    entries: dict[int, EntryState] = {}
    now = start
    for picks, cost, gap in seq:
        now += gap
        items = tuple((sets[i], keys[i]) for i in picks)
        peek = cost == 0
        expected_entries, expected = decide(items, [entries.get(i) for i in picks], now, cost)
        got = store.decide(items, cost, now, peek=peek)
        _same(got, expected)
        if expected_entries is not None and not peek:
            for i, entry in zip(picks, expected_entries, strict=True):
                entries[i] = entry
        for i in set(picks):
            assert _stored(store, client, sets[i], keys[i]) == entries.get(i)


def test_cost_above_the_limit_is_never_satisfiable(store: RedisStore) -> None:
    for algorithm in Algorithm:
        limit_set = LimitSet(f"big-{algorithm.value}", [Limit.parse("3/minute", algorithm)])
        decision = store.decide(((limit_set, "k"),), 4, 1000.0)
        assert not decision.allowed
        assert not decision.satisfiable
        assert decision.retry_after_s == float("inf")


def test_numbers_survive_the_round_trip_exactly(store: RedisStore) -> None:
    limit_set = LimitSet("exact", [Limit.parse("7/3s", "gcra"), Limit.parse("3/0.7s", "sliding")])
    now = 1_700_000_000.123456789
    _, expected = decide(((limit_set, "k"),), [None], now, 1)
    got = store.decide(((limit_set, "k"),), 1, now)
    _same(got, expected)
    assert got.now == now


def test_async_decisions_equal_sync_ones(server: RedisServer) -> None:
    limit_set = LimitSet("asy", "5/minute; 7/hour")
    sync_store = RedisStore(server.url, use_server_time=False, prefix="sync")
    async_store = RedisStore(server.url, use_server_time=False, prefix="async")

    async def run() -> list[Decision]:
        out = []
        for i in range(12):
            out.append(await async_store.decide_async(((limit_set, "k"),), 1 + i % 2, 5000.0))
        await async_store.close_async()
        return out

    got = asyncio.run(run())
    expected = [sync_store.decide(((limit_set, "k"),), 1 + i % 2, 5000.0) for i in range(12)]
    for a, b in zip(got, expected, strict=True):
        _same(a, b)
    sync_store.close()


def test_keys_hold_a_hash_never_the_raw_key_and_expire(
    store: RedisStore, client: redis.Redis
) -> None:
    limit_set = LimitSet("secret", "2/minute; 10/day")
    store.decide(((limit_set, "sk_live_SECRET"),), 1, 1000.0)
    names = [k.decode() for k in client.scan_iter("lua:*secret*")]
    assert len(names) == 1
    assert "SECRET" not in names[0]
    assert names[0].startswith("lua:{") and names[0].endswith(limit_set.id)
    ttl_ms = client.pttl(names[0])
    assert 86_000_000 < ttl_ms <= 86_400_002
