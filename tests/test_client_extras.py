"""Cache in front of the limiter, and the helpers: debounce, poller, pagination, gather."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ratekeeper import ManualClock
from ratekeeper.client import (
    AsyncRateLimitTransport,
    HostPolicy,
    RateLimitTransport,
    RetryPolicy,
    WaitTooLongError,
)
from ratekeeper.client.cache import (
    AsyncCachingTransport,
    CachingTransport,
    async_memory_storage,
    endpoint_ttl,
)
from ratekeeper.client.helpers import (
    Debouncer,
    Poller,
    SyncDebouncer,
    SyncPoller,
    gather_bounded,
    paginate,
    paginate_sync,
    run_bounded,
)
from ratekeeper.errors import ClientConfigError
from servers import uvicorn_in_thread

T0 = 1_700_000_000.0


def test_cache_hits_spend_no_budget() -> None:
    clock = ManualClock(T0)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"n": len(calls)})

    paced = RateLimitTransport(
        httpx.MockTransport(handler),
        default=HostPolicy(limits="1/minute"),
        retry=RetryPolicy(max_wait_s=1),
        clock=clock,
        sleep=clock.advance,
    )
    with httpx.Client(transport=CachingTransport(paced, ttls={"/stations": 3600})) as client:
        first = client.get("http://radio.test/stations")
        again = client.get("http://radio.test/stations")
        assert first.json() == again.json() == {"n": 1}
        assert again.extensions["caching"]["from_cache"]
        # The one request a minute is spent: anything not cached must wait, past the cap.
        with pytest.raises(WaitTooLongError):
            client.get("http://radio.test/now-playing")
    assert calls == ["/stations"]


def test_cache_follows_cache_control_elsewhere() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/fresh":
            return httpx.Response(200, headers={"Cache-Control": "max-age=60"}, text="f")
        return httpx.Response(200, headers={"Cache-Control": "no-store"}, text="n")

    with httpx.Client(transport=CachingTransport(httpx.MockTransport(handler))) as client:
        for _ in range(2):
            client.get("http://api.test/fresh")
            client.get("http://api.test/never")
    assert calls == ["/fresh", "/never", "/never"]


def test_async_cache_hits_spend_no_budget_and_ttls_expire() -> None:
    clock = ManualClock(T0)
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        headers = {"Cache-Control": "max-age=60"} if request.url.path == "/fresh" else {}
        return httpx.Response(200, json={"n": len(calls)}, headers=headers)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    async def main() -> None:
        paced = AsyncRateLimitTransport(
            httpx.MockTransport(handler),
            default=HostPolicy(limits="3/minute"),
            retry=RetryPolicy(max_wait_s=1),
            clock=clock,
            sleep=sleep,
        )
        cached = AsyncCachingTransport(
            paced, storage=await async_memory_storage(), ttls={"/now-playing": 0.2}
        )
        async with httpx.AsyncClient(transport=cached) as client:
            first = await client.get("http://radio.test/now-playing")
            again = await client.get("http://radio.test/now-playing")
            assert first.json() == again.json() == {"n": 1}
            assert again.extensions["caching"]["from_cache"]
            await client.get("http://radio.test/fresh")
            await client.get("http://radio.test/fresh")  # Cache-Control: max-age=60
            await asyncio.sleep(0.3)  # hishel's TTLs run on the real clock
            assert (await client.get("http://radio.test/now-playing")).json() == {"n": 3}
            # Three requests a minute, all spent: anything not cached must wait past the cap.
            with pytest.raises(WaitTooLongError):
                await client.get("http://radio.test/stations")

    asyncio.run(main())
    assert calls == ["/now-playing", "/fresh", "/now-playing"]


def test_endpoint_ttl_longest_prefix() -> None:
    ttls = {"/a": 1.0, "/a/b": 2.0, "http://h.test/x": 3.0}
    assert endpoint_ttl(httpx.URL("http://o.test/a/b/c"), ttls) == 2.0
    assert endpoint_ttl(httpx.URL("http://o.test/a/z"), ttls) == 1.0
    assert endpoint_ttl(httpx.URL("http://h.test/x/1"), ttls) == 3.0
    assert endpoint_ttl(httpx.URL("http://o.test/x/1"), ttls) is None


def test_debounce_runs_only_the_last_call() -> None:
    seen: list[str] = []

    async def search(text: str) -> str:
        seen.append(text)
        return text.upper()

    async def main() -> list[str | None]:
        debounced = Debouncer(search, delay_s=0.05)
        tasks = []
        for text in ["r", "ra", "rad"]:
            tasks.append(asyncio.create_task(debounced(text)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [None, None, "RAD"]
    assert seen == ["rad"]


def test_poller_never_faster_than_its_interval() -> None:
    clock = ManualClock(0.0)
    starts: list[float] = []

    async def fetch() -> float:
        starts.append(clock())
        clock.advance(2.0)  # the call itself takes 2 s
        return clock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    async def main() -> None:
        poller = Poller(fetch, 15.0, clock=clock, sleep=sleep)
        for _ in range(3):
            await poller.poll()

    asyncio.run(main())
    assert starts == [0.0, 15.0, 30.0]


def test_paginate_follows_next_cursor() -> None:
    pages = {
        None: {"data": [1, 2], "next_cursor": "b"},
        "b": {"data": [3], "pagination": {"next_cursor": "c"}},
        "c": {"data": [4], "next_cursor": None},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [item async for item in paginate(client, "http://api.test/tracks")]

    assert asyncio.run(main()) == [1, 2, 3, 4]


def test_gather_bounded_limits_concurrency_and_keeps_order() -> None:
    running = 0
    peak = 0

    async def job(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (5 - n % 5))
        running -= 1
        return n

    results = asyncio.run(gather_bounded((job(n) for n in range(20)), 3))
    assert results == list(range(20))
    assert peak == 3


def test_sync_debounce_runs_only_the_last_call() -> None:
    seen: list[str] = []

    def search(text: str) -> str:
        seen.append(text)
        return text.upper()

    debounced = SyncDebouncer(search, delay_s=0.2)
    results: dict[str, str | None] = {}

    def call(text: str) -> None:
        results[text] = debounced(text)

    threads = []
    for text in ["r", "ra", "rad"]:
        threads.append(threading.Thread(target=call, args=(text,)))
        threads[-1].start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(5)
    assert results == {"r": None, "ra": None, "rad": "RAD"}
    assert seen == ["rad"]


def test_sync_poller_same_schedule_as_the_async_one() -> None:
    clock = ManualClock(0.0)
    starts: list[float] = []

    def fetch() -> None:
        starts.append(clock())
        clock.advance(2.0)

    poller = SyncPoller(fetch, 15.0, clock=clock, sleep=clock.advance)
    for _, _ in zip(range(3), poller, strict=False):
        pass
    assert starts == [0.0, 15.0, 30.0]


@pytest.mark.parametrize("twin", [Poller, SyncPoller])
def test_poller_refuses_an_interval_below_the_hosts_floor(twin: type) -> None:
    radio = HostPolicy.from_policy("radio")
    url = "https://radio.example/v1/now-playing"
    with pytest.raises(ClientConfigError, match="below the host's floor of 15s"):
        twin(lambda: None, 5.0, policy=radio, url=url)
    assert twin(lambda: None, 15.0, policy=radio, url=url).interval_s == 15.0
    assert twin(lambda: None, 1.0, policy=radio, url="https://radio.example/other").interval_s == 1
    with pytest.raises(ClientConfigError, match="interval_s must be > 0"):
        twin(lambda: None, 0.0)


def test_paginate_sync_through_the_transport_against_a_real_server() -> None:
    pages = {
        None: {"data": [1, 2], "next_cursor": "b"},
        "b": {"data": [3], "meta": {"next_cursor": "c"}},
        "c": {"data": [4], "next_cursor": ""},
    }

    async def tracks(request: Request) -> JSONResponse:
        return JSONResponse(pages[request.query_params.get("cursor")])

    with uvicorn_in_thread(Starlette(routes=[Route("/tracks", tracks)])) as base:
        transport = RateLimitTransport(default=HostPolicy(limits="10/second"))
        with httpx.Client(transport=transport) as client:
            assert list(paginate_sync(client, f"{base}/tracks")) == [1, 2, 3, 4]


def test_run_bounded_limits_threads_and_keeps_order() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def job(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002 * (5 - n % 5))
        with lock:
            running -= 1
        if n == 7:
            raise ValueError("seven")
        return n

    results = run_bounded([lambda n=n: job(n) for n in range(20)], 3, return_exceptions=True)
    assert results[:7] == list(range(7))
    assert isinstance(results[7], ValueError)
    assert peak == 3
    with pytest.raises(ValueError, match="seven"):
        run_bounded([lambda n=n: job(n) for n in range(10)], 2)
    with pytest.raises(ClientConfigError, match="limit"):
        run_bounded([], 0)
