"""Cache in front of the limiter, and the helpers: debounce, poller, pagination, gather."""

from __future__ import annotations

import asyncio

import httpx
import pytest

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
from ratekeeper.client.helpers import Debouncer, Poller, gather_bounded, paginate

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
