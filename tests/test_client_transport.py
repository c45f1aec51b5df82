"""The transports against in-process servers on a manual clock: exact, and no real sleeping."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math

import httpx
import pytest

from ratekeeper import Limiter, LimitSet, ManualClock
from ratekeeper.client import (
    AsyncRateLimitTransport,
    ClientConfigError,
    HostPolicy,
    RateLimitTransport,
    RetryPolicy,
    WaitTooLongError,
)
from ratekeeper.client.adaptive import Adaptive

URL = "http://api.test/items"
T0 = 1_700_000_000.0


class Server:
    """A limited API on the manual clock: counts hits with ratekeeper's own limiter."""

    def __init__(
        self, clock: ManualClock, rate: str, algorithm: str = "fixed_window", headers: bool = True
    ) -> None:
        self.clock = clock
        self.limits = LimitSet("server", rate, algorithm=algorithm)
        self.limiter = Limiter(clock=clock)
        self.headers = headers
        self.log: list[tuple[float, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        decision = self.limiter.hit(self.limits, "k")
        headers = {}
        if self.headers:
            headers = {
                "X-RateLimit-Limit": str(decision.limit),
                "X-RateLimit-Remaining": str(decision.remaining),
                "X-RateLimit-Reset": f"{decision.reset_at:.3f}",
            }
        status = 200 if decision.allowed else 429
        if not decision.allowed:
            headers["Retry-After"] = str(math.ceil(decision.retry_after_s))
        self.log.append((self.clock(), status))
        return httpx.Response(status, headers=headers, json={"ok": decision.allowed})


def client_for(handler, clock: ManualClock, **kwargs) -> httpx.Client:
    transport = RateLimitTransport(
        httpx.MockTransport(handler), clock=clock, sleep=clock.advance, **kwargs
    )
    return httpx.Client(transport=transport)


def test_known_policy_zero_429_at_theoretical_minimum() -> None:
    clock = ManualClock(T0)
    server = Server(clock, "10/second")
    policy = HostPolicy(limits="10/second", algorithm="fixed_window", margin_s=0.01)
    with client_for(server, clock, hosts={"api.test": policy}) as client:
        for _ in range(45):
            assert client.get(URL).status_code == 200
    assert all(status == 200 for _, status in server.log)
    # 45 requests at 10 per aligned second: the last goes as the fifth window opens.
    assert clock() - T0 == pytest.approx(4.0)


def test_known_first_hit_policy_windows_are_stretched_by_the_margin() -> None:
    clock = ManualClock(T0 + 0.3)
    server = Server(clock, "10/second", algorithm="first_hit_window")
    policy = HostPolicy(limits="10/second", algorithm="first_hit", margin_s=0.02)
    with client_for(server, clock, hosts={"api.test": policy}) as client:
        for _ in range(30):
            client.get(URL)
    assert [s for _, s in server.log].count(429) == 0
    assert clock() - T0 - 0.3 == pytest.approx(2 * 1.02)


def test_minimum_interval_like_picard() -> None:
    clock = ManualClock(T0)
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(clock())
        clock.advance(0.3)  # the answer takes 300 ms
        return httpx.Response(200)

    with client_for(handler, clock, default=HostPolicy(min_interval_s=1.0)) as client:
        for _ in range(3):
            client.get(URL)
            clock.advance(0.1)
    # delay = interval - time since the last request: 1 s apart despite the 0.4 s spent.
    assert [t - T0 for t in seen] == pytest.approx([0.0, 1.0, 2.0])


def test_learns_from_headers_when_policy_unknown() -> None:
    clock = ManualClock(T0)
    server = Server(clock, "5/second", algorithm="first_hit_window")
    with client_for(server, clock, default=HostPolicy(margin_s=0.0)) as client:
        for _ in range(20):
            assert client.get(URL).status_code == 200
    assert [s for _, s in server.log].count(429) == 0
    assert clock() - T0 == pytest.approx(3.0)


def test_without_headers_one_429_per_window_and_retry_after_obeyed() -> None:
    clock = ManualClock(T0)
    server = Server(clock, "5/2s", headers=False)
    with client_for(server, clock) as client:
        for _ in range(12):
            assert client.get(URL).status_code == 200
    statuses = [s for _, s in server.log]
    assert statuses.count(429) == 2  # one per exhausted window
    assert statuses.count(200) == 12


def test_retry_after_http_date_and_body_hint() -> None:
    clock = ManualClock(1_767_225_600.0)
    answers = [
        httpx.Response(429, headers={"Retry-After": "Thu, 01 Jan 2026 00:00:05 GMT"}),
        httpx.Response(429, json={"error": {"retryAfter": 3}}),
        httpx.Response(503, text="Service unavailable, retry after 2 seconds"),
        httpx.Response(200),
    ]
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(clock())
        return answers[len(times) - 1]

    with client_for(handler, clock, random_fn=lambda: 0.0) as client:
        assert client.get(URL).status_code == 200
    start = times[0]
    # The 503's hint (2 s) is shorter than its backoff (the third retry's 4 s): the backoff.
    assert [t - start for t in times] == pytest.approx([0.0, 5.0, 8.0, 12.0])


def test_503_backoff_doubles_with_jitter_and_gives_up() -> None:
    clock = ManualClock(T0)
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(clock())
        return httpx.Response(503)

    policy = HostPolicy(adaptive=False)
    retry = RetryPolicy(max_retries=3)
    with client_for(handler, clock, default=policy, retry=retry, random_fn=lambda: 1.0) as c:
        assert c.get(URL).status_code == 503
    # 1, 2, 4 s, each with up to half again of jitter (all of it here).
    assert [t - T0 for t in times] == pytest.approx([0.0, 1.5, 4.5, 10.5])


def test_post_not_retried_after_503() -> None:
    clock = ManualClock(T0)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, headers={"Retry-After": "1"})

    with client_for(handler, clock) as client:
        assert client.post(URL, content=b"x").status_code == 503
    assert calls == ["POST"]


def test_huge_retry_after_raises_with_deadline() -> None:
    clock = ManualClock(T0)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "86400"})

    with (
        client_for(handler, clock, retry=RetryPolicy(max_wait_s=600)) as client,
        pytest.raises(WaitTooLongError) as info,
    ):
        client.get(URL)
    assert info.value.deadline == T0 + 86400
    assert clock() == T0  # no hour-long sleep happened


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "-5", "X-RateLimit-Remaining": "-3", "X-RateLimit-Reset": "-100"},
        {"Retry-After": "banana", "X-RateLimit-Remaining": "x", "X-RateLimit-Reset": "soon"},
        {"Retry-After": "Mon, 01 Jan 1990 00:00:00 GMT", "X-RateLimit-Reset": "631152000"},
        {"Retry-After": "1e999", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1e308"},
        {"RateLimit": '"m";r=0;t=-4', "RateLimit-Policy": '"m";q=x;w=0'},
    ],
)
def test_nonsense_headers_give_sane_waits(headers: dict[str, str]) -> None:
    clock = ManualClock(1_767_225_600.0)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(clock())
        return httpx.Response(429 if len(calls) == 1 else 200, headers=headers)

    with client_for(handler, clock, random_fn=lambda: 0.5) as client:
        assert client.get(URL).status_code == 200
        client.get(URL)
    assert len(calls) == 3
    assert 0.0 <= calls[-1] - calls[0] <= 2.0


def test_low_remaining_warning_and_callback(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    server = Server(clock, "12/minute")
    seen = []
    with (
        caplog.at_level(logging.WARNING, logger="ratekeeper.client"),
        client_for(
            server,
            clock,
            default=HostPolicy(low_remaining=0.8),
            on_low_remaining=lambda host, q: seen.append(q.remaining),
        ) as c,
    ):
        for _ in range(5):
            c.get(URL)
    assert seen == [9]  # once in the window, when it fell under 0.8 x 12
    assert "9 request(s) left of 12" in caplog.text


def test_adaptive_slows_down_and_speeds_up() -> None:
    adaptive = Adaptive(floor_s=0.5, ceiling_s=8.0, base_s=1.0, window=4.0, max_window=4)
    adaptive.failure(hinted=False)
    assert (adaptive.delay_s, adaptive.window) == (1.0, 1.0)
    for _ in range(5):
        adaptive.failure(hinted=False)
    assert adaptive.delay_s == 8.0
    adaptive.success()
    assert adaptive.delay_s == 4.0 and adaptive.window == 2.0
    for _ in range(10):
        adaptive.success()
    assert adaptive.delay_s == 0.5 and adaptive.window == 4.0
    # A single hinted failure leaves the pace alone; a repeated one slows it.
    adaptive.failure(hinted=True)
    assert adaptive.delay_s == 0.5
    adaptive.failure(hinted=True)
    assert adaptive.delay_s == 1.0


def test_repeated_503_slow_the_host_for_other_requests() -> None:
    clock = ManualClock(T0)
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(clock())
        return httpx.Response(503 if len(times) <= 3 else 200)

    retry = RetryPolicy(max_retries=0)
    with client_for(handler, clock, retry=retry) as client:
        for _ in range(5):
            client.get(URL)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 2.0]


def test_async_twin_paces_the_same() -> None:
    clock = ManualClock(T0)
    server = Server(clock, "10/second")

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    async def main() -> None:
        transport = AsyncRateLimitTransport(
            httpx.MockTransport(server),
            hosts={
                "api.test": HostPolicy(limits="10/second", algorithm="fixed_window", margin_s=0.01)
            },
            clock=clock,
            sleep=sleep,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            responses = await asyncio.gather(*(client.get(URL) for _ in range(25)))
        assert all(r.status_code == 200 for r in responses)

    asyncio.run(main())
    assert [s for _, s in server.log].count(429) == 0
    assert clock() - T0 == pytest.approx(2.0)


def test_bad_host_policy_values() -> None:
    with pytest.raises(ClientConfigError, match="margin_s"):
        HostPolicy(margin_s=-1)
    with pytest.raises(ClientConfigError, match="max_in_flight"):
        HostPolicy(max_in_flight=0)


def test_known_aligned_policy_sends_early_at_a_window_edge_only_into_room() -> None:
    """Decided margin_s ahead, a request near a boundary is charged to the next window; it may
    still go at once while the current window has room for every such early request."""
    clock = ManualClock(T0 + 0.2)
    server = Server(clock, "10/second")
    policy = HostPolicy(limits="10/second", algorithm="fixed_window", margin_s=0.01)
    with client_for(server, clock, hosts={"api.test": policy}) as client:
        for _ in range(3):
            client.get(URL)
        clock.set(T0 + 0.995)
        for _ in range(8):
            client.get(URL)
    times = [t - T0 for t, _ in server.log]
    assert [s for _, s in server.log].count(429) == 0
    # Seven early requests fill the current window's room; the eighth waits for the boundary.
    assert times[3:10] == pytest.approx([0.995] * 7)
    assert times[10] == pytest.approx(1.0)


def test_known_aligned_policy_with_latency_at_edges_never_429() -> None:
    clock = ManualClock(T0 + 0.9)

    server = Server(clock, "10/second")

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(0.004)  # arrives 4 ms after it was sent: some early ones land next window
        response = server(request)
        clock.advance(0.004)
        return response

    policy = HostPolicy(limits="10/second", algorithm="fixed_window", margin_s=0.01)
    with client_for(slow, clock, hosts={"api.test": policy}) as client:
        for _ in range(35):
            assert client.get(URL).status_code == 200
    assert [s for _, s in server.log].count(429) == 0
