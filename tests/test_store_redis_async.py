"""The Redis store's own wire drivers against real redis-server processes: the asyncio
connection's pipelining, cancellation, timeouts, script reloads under concurrency, the
connection set-up (AUTH, SELECT, CLIENT SETNAME, TLS) and fork safety."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvloop

from ratekeeper import LimitSet
from ratekeeper.decision import Decision
from ratekeeper.errors import StoreError
from ratekeeper.stores.redis import RedisStore, RedisStoreError
from redis_servers import RedisServer, make_tls_files, redis_server

API = LimitSet("api", "100/minute")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis-async")) as srv:
        yield srv


def _reads(client: redis.Redis) -> int:
    """How many times the server has read from a socket (the INFO call is one of them)."""
    return int(client.info("stats")["total_reads_processed"])


@pytest.mark.parametrize("coalesce", [True, False])
def test_concurrent_calls_are_pipelined_and_a_lone_call_goes_at_once(
    server: RedisServer, coalesce: bool
) -> None:
    store = RedisStore(server.url, prefix=f"pipe{coalesce}", batch_async=coalesce)
    client = server.client()

    async def run() -> tuple[list[int], int, int]:
        await store.decide_async(((API, "warm"),), 1, 0.0)
        before = _reads(client)
        burst = await asyncio.gather(
            *(store.decide_async(((API, f"k{i % 8}"),), 1, 0.0) for i in range(64))
        )
        middle = _reads(client)
        for _ in range(10):
            await store.decide_async(((API, "alone"),), 1, 0.0)
        after = _reads(client)
        await store.close_async()
        return [d.remaining for d in burst], middle - before, after - middle

    remaining, burst_reads, lone_reads = asyncio.run(run())
    # Every key was charged 8 times, each decision saw the count before it: 99, 98, ... 92.
    assert sorted(remaining) == sorted(list(range(92, 100)) * 8)
    if coalesce:
        # Calls made while others are in flight leave in one write: the server reads the burst
        # in a few reads (the INFO call is one of them).
        assert burst_reads <= 8
    # Sequential calls are not held back: one read each (and one for the INFO).
    assert lone_reads == 11
    client.close()
    store.close()


def test_cancelled_callers_do_not_shift_the_replies_of_others(server: RedisServer) -> None:
    limit_sets = [LimitSet(f"c{i}", f"{10 + i}/minute") for i in range(40)]
    store = RedisStore(server.url, prefix="cancel")

    async def run() -> tuple[list[Decision], int]:
        await store.decide_async(((API, "warm"),), 1, 0.0)
        # Paused, the server reads nothing: every call below is in flight when it is cancelled.
        os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            tasks = [
                asyncio.ensure_future(store.decide_async(((ls, "k"),), 1, 0.0)) for ls in limit_sets
            ]
            await asyncio.sleep(0.05)
            for task in tasks[::2]:
                task.cancel()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        kept = await asyncio.gather(*tasks[1::2])
        assert all(task.cancelled() for task in tasks[::2])
        after = await store.decide_async(((limit_sets[0], "k"),), 0, 0.0, peek=True)
        await store.close_async()
        return kept, after.remaining

    kept, remaining_first = asyncio.run(run())
    # Each reply reached its own caller: a limit set of 10 + i per minute has 9 + i left.
    assert [d.remaining for d in kept] == [10 + i - 1 for i in range(1, 40, 2)]
    # A cancelled call was sent and ran on the server: it was charged (on the safe side).
    assert remaining_first == 9
    store.close()


def test_a_server_that_stops_answering_times_out_then_is_used_again(
    server: RedisServer,
) -> None:
    store = RedisStore(server.url + "?timeout=0.3", prefix="hang")
    pid = server.process.pid  # type: ignore[union-attr]

    async def run() -> tuple[list[str], float, bool]:
        await store.decide_async(((API, "k"),), 1, 0.0)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            results = await asyncio.gather(
                *(store.decide_async(((API, "k"),), 1, 0.0) for _ in range(5)),
                return_exceptions=True,
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        waited = time.monotonic() - started
        again = await store.decide_async(((API, "k"),), 1, 0.0)
        await store.close_async()
        return [type(r).__name__ for r in results], waited, again.allowed

    names, waited, allowed = asyncio.run(run())
    assert names == ["RedisStoreError"] * 5
    assert 0.3 <= waited < 1.5
    assert allowed
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisStoreError, match="timed out"):
            store.decide(((API, "k"),), 1, 0.0)
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.decide(((API, "k"),), 1, 0.0).allowed
    store.close()


def test_scripts_flushed_under_concurrent_calls_are_loaded_once_and_every_call_answers(
    server: RedisServer,
) -> None:
    store = RedisStore(server.url, prefix="flush")
    client = server.client()

    async def run() -> list[bool]:
        await store.decide_async(((API, "warm"),), 1, 0.0)
        client.script_flush()
        decisions = await asyncio.gather(
            *(store.decide_async(((API, f"f{i}"),), 1, 0.0) for i in range(30))
        )
        await store.close_async()
        return [d.allowed for d in decisions]

    assert asyncio.run(run()) == [True] * 30
    client.close()
    store.close()


def test_auth_user_select_and_client_name_on_both_drivers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        admin = srv.client()
        admin.acl_setuser(
            "app", enabled=True, passwords=["+app-secret"], keys=["*"], commands=["+@all"]
        )
        url = f"redis://app:app-secret@127.0.0.1:{srv.port}/3?client_name=rk-test"
        store = RedisStore(url, prefix="auth")
        assert "app-secret" not in repr(store._node.endpoint)
        assert store.decide(((API, "sync"),), 1, 0.0).allowed

        async def run() -> list[str]:
            await store.decide_async(((API, "async"),), 1, 0.0)
            names = [c["name"] for c in admin.client_list() if c["user"] == "app"]
            await store.close_async()
            return names

        names = asyncio.run(run())
        # The sync driver's connection and the async one: nothing else connects.
        assert names.count("rk-test") == 2
        admin.select(3)
        assert len(admin.keys("auth:*")) == 2
        with pytest.raises(StoreError) as info:
            RedisStore(f"redis://app:wrong-secret@127.0.0.1:{srv.port}/3")
        assert "wrong-secret" not in str(info.value)
        admin.close()
        store.close()


def test_tls_on_the_async_driver(tmp_path: Path) -> None:
    ca = make_tls_files(tmp_path / "tls")
    with redis_server(tmp_path / "srv", tls_dir=ca.parent) as srv:
        store = RedisStore(srv.url, prefix="tls")

        async def run() -> list[bool]:
            decisions = await asyncio.gather(
                *(store.decide_async(((LimitSet("t", "3/minute"), "k"),), 1, 0.0) for _ in range(4))
            )
            await store.reset_async(((LimitSet("t", "3/minute"), "k"),))
            again = await store.decide_async(((LimitSet("t", "3/minute"), "k"),), 1, 0.0)
            await store.close_async()
            return [d.allowed for d in decisions] + [again.allowed]

        assert asyncio.run(run()) == [True, True, True, False, True]
        store.close()


def test_uvloop_and_a_store_shared_by_successive_loops(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="loops")

    async def one() -> int:
        return (await store.decide_async(((API, "k"),), 1, 0.0)).remaining

    assert asyncio.run(one()) == 99
    assert uvloop.run(one()) == 98
    assert asyncio.run(one()) == 97
    store.close()


def _child(store: RedisStore, queue: multiprocessing.Queue[object]) -> None:
    sync_left = store.decide(((API, "fork"),), 1, 0.0).remaining
    async_left = asyncio.run(store.decide_async(((API, "fork"),), 1, 0.0)).remaining
    queue.put((sync_left, async_left))


def test_a_forked_child_opens_its_own_connections(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="fork")

    async def parent() -> int:
        return (await store.decide_async(((API, "fork"),), 1, 0.0)).remaining

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(parent()) == 99
        assert store.decide(((API, "fork"),), 1, 0.0).remaining == 98
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[object] = context.Queue()
        child = context.Process(target=_child, args=(store, queue))
        child.start()
        assert queue.get(timeout=10) == (97, 96)
        child.join(10)
        assert child.exitcode == 0
        # The parent's connections were left alone by the child.
        assert loop.run_until_complete(parent()) == 95
        assert store.decide(((API, "fork"),), 1, 0.0).remaining == 94
        loop.run_until_complete(store.close_async())
    finally:
        loop.close()
    store.close()
