"""FallbackStore: the configured fail mode holds while the store is down, and it comes back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ratekeeper import (
    AsyncLimiter,
    Decision,
    Limiter,
    LimitSet,
    ManualClock,
    MemoryStore,
    StoreError,
)
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision, FallbackStore
from ratekeeper.stores.sqlite import SQLiteStore

LIMITS = LimitSet("api", "3/minute")
NOW = 1_700_000_000.0
Items = Sequence[tuple[LimitSet, str]]


class SwitchableStore:
    """A memory store that fails on demand with the exception it is given."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.error: Exception | None = None
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        self._check()
        return self.inner.decide(items, cost, now, peek=peek)

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        await asyncio.sleep(0)
        return self.decide(items, cost, now, peek=peek)

    def reset(self, items: Items) -> None:
        self._check()
        self.inner.reset(items)

    async def reset_async(self, items: Items) -> None:
        self.reset(items)

    def close(self) -> None:
        self._check()

    async def close_async(self) -> None:
        self.close()


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ratekeeper.store"]


@pytest.fixture
def caplog_store(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="ratekeeper.store")
    return caplog


def test_fail_open_allows_and_says_so(caplog_store: pytest.LogCaptureFixture) -> None:
    primary = SwitchableStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, "fail-open", monotonic=monotonic)
    limiter = Limiter(store, clock=ManualClock(NOW))
    for _ in range(3):
        assert limiter.hit(LIMITS, "k")
    primary.error = StoreError("connection refused\nat 127.0.0.1:1")
    decisions = [limiter.hit(LIMITS, "k") for _ in range(10)]
    assert all(decisions)
    assert all(isinstance(d, DegradedDecision) for d in decisions)
    assert {d.fail_mode for d in decisions if isinstance(d, DegradedDecision)} == {
        FailMode.FAIL_OPEN
    }
    assert decisions[0].remaining == 2  # a fresh key's view: the real usage is unknown
    assert store.degraded
    assert store.outages == 1
    assert primary.calls == 4  # the 10 degraded requests tried the primary once
    [(level, message)] = _records(caplog_store)
    assert level == logging.WARNING
    assert "StoreError: connection refused at 127.0.0.1:1" in message
    assert "allowing every request" in message


def test_fail_closed_rejects_with_retry_after() -> None:
    primary = SwitchableStore()
    store = FallbackStore(primary, FailMode.FAIL_CLOSED, retry_after_s=2.5)
    primary.error = ConnectionRefusedError(111, "Connection refused")
    decision = store.decide(((LIMITS, "k"), (LimitSet("all", "10/s"), "*")), 1, NOW)
    assert not decision.allowed
    assert decision.retry_after_s == 2.5
    assert decision.remaining == 0
    assert decision.binding.reset_at == NOW + 2.5
    assert decision.satisfiable
    assert isinstance(decision, DegradedDecision)
    assert decision.fail_mode is FailMode.FAIL_CLOSED


def test_fallback_decides_locally_then_returns_to_the_primary(
    caplog_store: pytest.LogCaptureFixture,
) -> None:
    primary = SwitchableStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, monotonic=monotonic, probe_interval_s=0.5)
    limiter = Limiter(store, clock=ManualClock(NOW))
    assert limiter.hit(LIMITS, "k")
    primary.error = OSError("disk gone")
    local = [bool(limiter.hit(LIMITS, "k")) for _ in range(5)]
    assert local == [True, True, True, False, False]  # the local store counts on its own
    assert primary.calls == 2
    monotonic.advance(0.4)
    limiter.hit(LIMITS, "k")
    assert primary.calls == 2  # no probe before the interval
    monotonic.advance(0.1)
    limiter.hit(LIMITS, "k")
    assert primary.calls == 3  # one probe, failed
    primary.error = None
    monotonic.advance(0.5)
    decision = limiter.hit(LIMITS, "k")
    assert not isinstance(decision, DegradedDecision)
    assert decision.remaining == 1  # the primary's own count resumes
    assert not store.degraded
    assert store.failures == 2
    assert store.degraded_decisions == 7
    records = _records(caplog_store)
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO]
    assert "recovered after 1.0 s down (2 failed calls, 7 degraded decisions)" in records[1][1]


def test_each_outage_logs_once_however_many_threads_fail(
    caplog_store: pytest.LogCaptureFixture,
) -> None:
    primary = SwitchableStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, monotonic=monotonic)
    primary.error = StoreError("down")
    barrier = threading.Barrier(16)

    def hammer() -> None:
        barrier.wait()
        for _ in range(200):
            store.decide(((LIMITS, "k"),), 1, NOW)

    for outage in range(3):
        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.outages == outage + 1
        primary.error = None
        monotonic.advance(0.5)
        assert not isinstance(store.decide(((LIMITS, "k"),), 1, NOW), DegradedDecision)
        primary.error = StoreError("down")
    levels = [level for level, _ in _records(caplog_store)]
    assert levels == [logging.WARNING, logging.INFO] * 3


@pytest.mark.parametrize("error", [RuntimeError("driver bug"), TypeError("bad reply"), KeyError(1)])
def test_no_exception_from_the_primary_reaches_the_caller(error: Exception) -> None:
    primary = SwitchableStore()
    primary.error = error
    store = FallbackStore(primary, "fallback")
    assert store.decide(((LIMITS, "k"),), 1, NOW)
    store.reset(((LIMITS, "k"),))
    store.close()
    assert store.degraded


def test_reset_reaches_both_stores() -> None:
    primary = SwitchableStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, monotonic=monotonic)
    items = ((LIMITS, "k"),)
    for _ in range(3):
        store.decide(items, 1, NOW)
    primary.error = StoreError("down")
    for _ in range(3):
        store.decide(items, 1, NOW)
    assert not store.decide(items, 1, NOW)
    store.reset(items)
    assert store.decide(items, 1, NOW)  # the local count was forgotten
    primary.error = None
    monotonic.advance(0.5)
    store.reset(items)  # the probe: it recovers the store and forgets the primary's count
    assert not store.degraded
    assert store.decide(items, 1, NOW).remaining == 2


def test_async_twins_follow_the_same_modes(caplog_store: pytest.LogCaptureFixture) -> None:
    primary = SwitchableStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, "fail_closed", monotonic=monotonic)
    limiter = AsyncLimiter(store, clock=ManualClock(NOW))

    async def main() -> None:
        assert await limiter.hit(LIMITS, "k")
        primary.error = StoreError("down")
        decisions = await asyncio.gather(*(limiter.hit(LIMITS, "k") for _ in range(20)))
        assert not any(decisions)
        await limiter.reset(LIMITS, "k")
        primary.error = None
        monotonic.advance(0.5)
        assert (await limiter.hit(LIMITS, "k")).remaining == 1
        await store.close_async()

    asyncio.run(main())
    assert [level for level, _ in _records(caplog_store)] == [logging.WARNING, logging.INFO]


def test_a_cancelled_probe_does_not_stop_later_probes() -> None:
    class HangingStore(SwitchableStore):
        hang = False

        async def decide_async(
            self, items: Items, cost: int, now: float, *, peek: bool = False
        ) -> Decision:
            if self.hang:
                await asyncio.sleep(3600)
            return await super().decide_async(items, cost, now, peek=peek)

    primary = HangingStore()
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, monotonic=monotonic)

    async def main() -> None:
        primary.error = StoreError("down")
        await store.decide_async(((LIMITS, "k"),), 1, NOW)
        primary.error = None
        primary.hang = True
        monotonic.advance(0.5)
        probe = asyncio.create_task(store.decide_async(((LIMITS, "k"),), 1, NOW))
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        primary.hang = False
        monotonic.advance(0.5)
        assert not isinstance(await store.decide_async(((LIMITS, "k"),), 1, NOW), DegradedDecision)

    asyncio.run(main())
    assert not store.degraded


def test_a_locked_sqlite_file_falls_back_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    primary = SQLiteStore(path, busy_timeout_s=0.05)
    monotonic = ManualClock(0.0)
    store = FallbackStore(primary, monotonic=monotonic)
    limiter = Limiter(store, clock=ManualClock(NOW))
    assert limiter.hit(LIMITS, "k")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    decision = limiter.hit(LIMITS, "k")
    assert isinstance(decision, DegradedDecision)
    assert decision.remaining == 2  # counted by the local store alone
    assert store.degraded
    blocker.execute("COMMIT")
    blocker.close()
    monotonic.advance(0.5)
    decision = limiter.hit(LIMITS, "k")
    assert not isinstance(decision, DegradedDecision)
    assert decision.remaining == 1
    store.close()


def test_requests_return_to_the_primary_within_a_second_in_real_time(tmp_path: Path) -> None:
    primary = SwitchableStore()
    store = FallbackStore(primary)
    primary.error = StoreError("down")
    store.decide(((LIMITS, "k"),), 1, NOW)
    time.sleep(0.2)
    primary.error = None
    back_at = time.monotonic()
    while isinstance(store.decide(((LIMITS, "k"),), 1, NOW), DegradedDecision):
        assert time.monotonic() - back_at < 1.0
        time.sleep(0.01)
    assert not store.degraded


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fail mode 'ignore'"):
        FallbackStore(MemoryStore(), "ignore")
    with pytest.raises(ValueError, match="probe_interval_s must be a finite number > 0"):
        FallbackStore(MemoryStore(), probe_interval_s=0)
    assert "fallback healthy" in repr(FallbackStore(MemoryStore()))
