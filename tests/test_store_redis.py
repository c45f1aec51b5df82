"""The Redis store against real redis-server processes: URLs, start-up errors, faults while
requests flow, script reloads and a daily quota that survives a crash."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from ratekeeper import Limit, Limiter, LimitSet
from ratekeeper.errors import StoreError, StoreURLError
from ratekeeper.stores.fallback import DegradedDecision, FallbackStore
from ratekeeper.stores.redis import RedisStore, RedisStoreError
from ratekeeper.stores.url import store_from_url
from redis_servers import RedisServer, free_port, make_tls_files, redis_cluster, redis_server

API = LimitSet("api", "3/minute; 100/hour")
DAILY = LimitSet("daily", [Limit.parse("5/day")])


def test_every_scheme_builds_a_store_with_its_options(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        for scheme in ("redis", "valkey"):
            store = store_from_url(f"{scheme}://127.0.0.1:{server.port}/2?prefix=p{scheme}")
            assert isinstance(store, RedisStore)
            assert store.decide(((API, "k"),), 1, 0.0).allowed
            store.close()
        client = server.client()
        client.select(2)
        assert sorted(k.decode().split(":")[0] for k in client.scan_iter()) == ["predis", "pvalkey"]
        client.close()


def test_bad_urls_say_what_is_expected() -> None:
    with pytest.raises(StoreURLError, match="timeout"):
        RedisStore("redis://127.0.0.1:1/0?timeout=soon")
    with pytest.raises(StoreURLError, match="prefix"):
        RedisStore("redis://127.0.0.1:1/0?prefix={x}")
    with pytest.raises(StoreURLError, match="only cluster URLs"):
        RedisStore("redis://127.0.0.1:1,127.0.0.1:2/0")


def test_an_unreachable_server_fails_at_start_up_with_the_password_masked() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0?timeout=0.5"
    with pytest.raises(StoreError) as info:
        store_from_url(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert "user:***@127.0.0.1" in message
    assert "reachable" in message


def test_a_wrong_password_fails_at_start_up_without_showing_it(tmp_path: Path) -> None:
    with redis_server(tmp_path, "--requirepass", "right-secret") as server:
        with pytest.raises(StoreError) as info:
            RedisStore(f"redis://:wrong-secret@127.0.0.1:{server.port}/0")
        assert "wrong-secret" not in str(info.value)
        store = RedisStore(f"redis://:right-secret@127.0.0.1:{server.port}/0")
        assert store.decide(((API, "k"),), 1, 0.0).allowed
        assert "right-secret" not in repr(store)
        store.close()


def test_a_cluster_url_for_a_standalone_server_says_so(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path) as server,
        pytest.raises(StoreError, match=r"cluster support disabled.*is it a cluster"),
    ):
        RedisStore(f"redis+cluster://127.0.0.1:{server.port}")


def test_decisions_use_the_server_clock_not_the_callers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = RedisStore(server.url)
        decision = store.decide(((API, "k"),), 1, now=12345.0)
        assert abs(decision.now - time.time()) < 5
        store.close()


def test_scripts_flushed_or_lost_in_a_restart_are_reloaded_transparently(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path) as server:
        store = RedisStore(server.url)
        client = server.client()
        client.script_flush()
        assert store.decide(((API, "k"),), 1, 0.0).allowed

        async def run() -> bool:
            client.script_flush()
            decision = await store.decide_async(((API, "k"),), 1, 0.0)
            await store.close_async()
            return decision.allowed

        assert asyncio.run(run())
        client.close()
        store.close()


def _flow(
    decide: object, stop: threading.Event, outcomes: list[str], threads: int = 4
) -> list[threading.Thread]:
    def work() -> None:
        while not stop.is_set():
            try:
                decision = decide(((API, f"k{threading.get_ident() % 7}"),), 1, 0.0)  # type: ignore[operator]
                outcomes.append(type(decision).__name__)
            except RedisStoreError:
                outcomes.append("RedisStoreError")
            except Exception as exc:
                outcomes.append(f"unexpected {exc!r}")
            time.sleep(0.002)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    return pool


def _kill_and_restart(server: RedisServer, down_s: float = 0.5) -> None:
    time.sleep(0.3)
    server.kill()
    time.sleep(down_s)
    server.start()
    time.sleep(0.6)


def test_a_restart_while_requests_flow_raises_store_errors_then_recovers(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path) as server:
        store = RedisStore(server.url + "?timeout=0.5")
        stop = threading.Event()
        outcomes: list[str] = []
        pool = _flow(store.decide, stop, outcomes)
        _kill_and_restart(server)
        stop.set()
        for t in pool:
            t.join()
        assert not [o for o in outcomes if o.startswith("unexpected")]
        assert "RedisStoreError" in outcomes
        # Back on the restarted server (its scripts gone: reloaded without an error).
        assert outcomes[-8:] == ["Decision"] * 8
        store.close()


@pytest.mark.parametrize("mode", ["fail_closed", "fallback"])
def test_wrapped_in_a_fallback_store_no_exception_escapes_and_it_returns(
    tmp_path: Path, mode: str
) -> None:
    with redis_server(tmp_path) as server:
        store = FallbackStore(RedisStore(server.url + "?timeout=0.5"), mode, probe_interval_s=0.2)
        stop = threading.Event()
        outcomes: list[str] = []
        pool = _flow(store.decide, stop, outcomes)
        _kill_and_restart(server)
        stop.set()
        for t in pool:
            t.join()
        assert set(outcomes) == {"Decision", DegradedDecision.__name__}
        assert outcomes[-8:] == ["Decision"] * 8
        assert store.outages == 1
        assert not store.degraded
        store.close()


def test_async_decisions_raise_store_errors_while_down_then_recover(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = RedisStore(server.url + "?timeout=0.5")

        async def burst() -> list[str]:
            results = await asyncio.gather(
                *(store.decide_async(((API, f"a{i}"),), 1, 0.0) for i in range(20)),
                return_exceptions=True,
            )
            return [type(r).__name__ for r in results]

        async def run() -> tuple[list[str], list[str], list[str]]:
            before = await burst()
            server.kill()
            during = await burst()
            server.start()
            after = await burst()
            await store.close_async()
            return before, during, after

        before, during, after = asyncio.run(run())
        assert before == ["Decision"] * 20
        assert during == ["RedisStoreError"] * 20
        assert after == ["Decision"] * 20
        store.close()


def test_a_daily_quota_survives_a_crash_and_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    try:
        limiter = Limiter(RedisStore(server.url))
        for _ in range(3):
            assert limiter.hit(DAILY, "customer").allowed
        limiter.store.close()
        server.kill()  # SIGKILL: only what the append-only file holds survives
        server.start()
        limiter = Limiter(RedisStore(server.url))
        assert limiter.peek(DAILY, "customer").remaining == 2
        assert limiter.hit(DAILY, "customer", cost=2).allowed
        decision = limiter.hit(DAILY, "customer")
        assert not decision.allowed
        assert decision.retry_after_s > 3600
        limiter.store.close()
    finally:
        server.kill()


def test_reset_forgets_a_key(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        limiter = Limiter(RedisStore(server.url))
        for _ in range(3):
            limiter.hit(API, "k")
        assert not limiter.hit(API, "k").allowed
        limiter.reset(API, "k")
        assert limiter.hit(API, "k").allowed
        limiter.store.close()


def test_a_key_salt_changes_every_key_name_and_stays_secret(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        plain = RedisStore(server.url, prefix="s")
        salted = store_from_url(server.url + "?prefix=s&key_salt=pepper-42")
        same_salt = RedisStore(server.url, prefix="s", key_salt="pepper-42")
        other_salt = RedisStore(server.url, prefix="s", key_salt="x" * 100)
        names = {s._codec.key(API, "203.0.113.7") for s in (plain, salted, other_salt)}
        assert len(names) == 3
        assert same_salt._codec.key(API, "203.0.113.7") == salted._codec.key(API, "203.0.113.7")
        # Stores with the same salt share one budget; the unsalted one counts apart.
        for _ in range(3):
            assert salted.decide(((API, "203.0.113.7"),), 1, 0.0).allowed
        assert not same_salt.decide(((API, "203.0.113.7"),), 1, 0.0).allowed
        assert plain.decide(((API, "203.0.113.7"),), 1, 0.0).allowed
        assert "pepper-42" not in repr(salted) and "key_salt=***" in salted.url
        for store in (plain, salted, same_salt, other_salt):
            store.close()
    url = f"redis://:pw@127.0.0.1:{free_port()}/0?timeout=0.3&key_salt=pepper-42"
    with pytest.raises(StoreError) as info:
        RedisStore(url)
    assert "pepper-42" not in str(info.value) and "pw@" not in str(info.value)


def test_tls_standalone_and_cluster_urls(tmp_path: Path) -> None:
    ca = make_tls_files(tmp_path / "tls")
    with redis_server(tmp_path / "one", tls_dir=ca.parent) as server:
        for scheme in ("rediss", "valkeys"):
            store = store_from_url(server.url.replace("rediss", scheme, 1) + f"&prefix={scheme}")
            assert [store.decide(((API, "k"),), 1, 0.0).allowed for _ in range(4)] == [
                True,
                True,
                True,
                False,
            ]
            store.close()
    with redis_cluster(tmp_path / "cluster", tls_dir=ca.parent) as nodes:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        for scheme in ("rediss+cluster", "valkeys+cluster"):
            store = store_from_url(f"{scheme}://{hosts}?ssl_ca_certs={ca}&prefix={scheme}")
            assert store.cluster
            items = ((API, "k"), (DAILY, "everyone"))
            assert [store.decide(items, 1, 0.0).allowed for _ in range(4)] == [
                True,
                True,
                True,
                False,
            ]

            async def run(store: RedisStore = store) -> bool:
                decision = await store.decide_async(((DAILY, "everyone"),), 1, 0.0)
                await store.close_async()
                return decision.allowed

            assert asyncio.run(run())
            store.close()
