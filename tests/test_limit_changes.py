"""Counters survive a change of numbers: state is keyed by the limits' names and algorithms.

Each store (memory, SQLite, a real redis-server) is charged under one set of numbers and then
asked under new ones, as after a policy reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.redis_servers import redis_server

from ratekeeper import Limiter, LimitSet, ManualClock
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.redis import RedisStore
from ratekeeper.stores.sqlite import SQLiteStore

# Aligned windows: 10 s into a minute, far from any boundary of minute, hour or day.
START = 1_800_000_000.0 - 1_800_000_000.0 % 86_400 + 3_610.0


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        with redis_server(tmp_path / "redis") as server:
            yield server.url


def _limiter(url: str, clock: ManualClock) -> Limiter:
    if url == "memory":
        return Limiter(MemoryStore(), clock=clock)
    if url.startswith("sqlite"):
        return Limiter(SQLiteStore.from_url(url), clock=clock)
    return Limiter(RedisStore(url, use_server_time=False), clock=clock)


def test_a_lowered_limit_refuses_a_key_that_used_more(store_url: str) -> None:
    clock = ManualClock(START)
    limiter = _limiter(store_url, clock)
    before = LimitSet("api", "100/minute; 1000/day")
    for _ in range(60):
        assert limiter.hit(before, "k").allowed
    after = LimitSet("api", "50/minute; 1000/day")
    decision = limiter.hit(after, "k")
    assert not decision.allowed
    assert decision.binding.limit.name == "minute"
    assert limiter.peek(after, "k").states[1].remaining == 940
    # Raised again: the same count, now under the higher limit.
    raised = limiter.hit(LimitSet("api", "200/minute; 1000/day"), "k")
    assert raised.allowed and raised.states[0].remaining == 139


def test_a_days_usage_survives_a_change_of_the_minute_limit(store_url: str) -> None:
    clock = ManualClock(START)
    limiter = _limiter(store_url, clock)
    for _ in range(30):
        assert limiter.hit(LimitSet("api", "100/minute; 1000/day"), "k").allowed
    clock.advance(120)
    decision = limiter.hit(LimitSet("api", "10/minute; 1000/day"), "k")
    assert decision.allowed
    assert [s.remaining for s in decision.states] == [9, 969]


def test_a_changed_algorithm_starts_afresh(store_url: str) -> None:
    clock = ManualClock(START)
    limiter = _limiter(store_url, clock)
    for _ in range(5):
        limiter.hit(LimitSet("api", "5/minute"), "k")
    assert not limiter.hit(LimitSet("api", "5/minute"), "k").allowed
    fresh = limiter.hit(LimitSet("api", "5/minute", algorithm="gcra"), "k")
    assert fresh.allowed
