"""The client against real servers on loopback: ratekeeper's own limiter behind Starlette, and
servers ratekeeper did not write (FastAPI + slowapi, Flask + Flask-Limiter)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import math
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from flask_limiter import Limiter as FlaskLimiter
from flask_limiter.util import get_remote_address as flask_remote_address
from slowapi import Limiter as SlowLimiter
from slowapi import _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from werkzeug.serving import WSGIRequestHandler, make_server

from ratekeeper import Limiter, LimitSet
from ratekeeper.client import AsyncRateLimitTransport, HostPolicy, RateLimitTransport, RetryPolicy
from servers import uvicorn_in_thread

N = 40
AMOUNT = 10  # per second in every server below
# What a loaded 2-core machine adds to a run of N requests in Python on both sides (the last
# burst of ten took up to 0.5 s at a load of 10): the ratios are the bench's to show, these
# tests catch a client that loses a whole window.
LOAD_S = 0.6


class TimedWire(httpx.HTTPTransport):
    """The wire under a client, timing the round trip of the first request sent. A slow first
    answer (a server warming up: 0.8 s once in CI) delays every window a client places from
    answers, and a first request that reached the server late opens its window late: no client
    can avoid either, so bounds allow ``first_s`` on top of their load allowance."""

    def __init__(self) -> None:
        super().__init__()
        self.first_s = 0.0
        # Every round trip, in the order the answers came.
        self.trips: list[float] = []
        self._started = False
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            first, self._started = not self._started, True
        sent = time.monotonic()
        response = super().handle_request(request)
        trip = time.monotonic() - sent
        with self._lock:
            self.trips.append(trip)
        if first:
            self.first_s = trip
        return response


class AsyncTimedWire(httpx.AsyncHTTPTransport):
    """:class:`TimedWire` for the async transports."""

    def __init__(self) -> None:
        super().__init__()
        self.first_s = 0.0
        self._started = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        first, self._started = not self._started, True
        sent = time.monotonic()
        response = await super().handle_async_request(request)
        if first:
            self.first_s = time.monotonic() - sent
        return response


class Counts:
    """What a test server answered, by status."""

    def __init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()

    def add(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1


def ratekeeper_app(rate: str, algorithm: str, counts: Counts, *, headers: bool = True) -> Starlette:
    """A Starlette API limited by ratekeeper's Limiter, with fractional-epoch headers."""
    limits = LimitSet("server", rate, algorithm=algorithm)
    limiter = Limiter()

    async def endpoint(request: Request) -> Response:
        decision = limiter.hit(limits, "client")
        status = 200 if decision.allowed else 429
        counts.add(status)
        out: dict[str, str] = {}
        if headers:
            out = {
                "X-RateLimit-Limit": str(decision.limit),
                "X-RateLimit-Remaining": str(decision.remaining),
                "X-RateLimit-Reset": f"{decision.reset_at:.3f}",
            }
        if not decision.allowed:
            out["Retry-After"] = str(max(math.ceil(decision.retry_after_s), 1))
        return JSONResponse({"ok": decision.allowed}, status_code=status, headers=out)

    return Starlette(routes=[Route("/items", endpoint)])


def slowapi_app(rate: str, counts: Counts) -> Any:
    """FastAPI limited by slowapi (limits' memory storage: windows start at the first hit)."""

    limiter = SlowLimiter(key_func=get_remote_address, headers_enabled=True)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        counts.add(response.status_code)
        return response

    @app.get("/items")
    @limiter.limit(rate)
    async def items(request: Request, response: Response) -> dict[str, bool]:
        return {"ok": True}

    return app


def flask_app(rate: str, counts: Counts) -> Any:
    """Flask limited by Flask-Limiter."""

    app = Flask("limited")
    limiter = FlaskLimiter(
        flask_remote_address, app=app, headers_enabled=True, storage_uri="memory://"
    )

    @app.after_request
    def count(response: Any) -> Any:
        counts.add(response.status_code)
        return response

    @app.get("/items")
    @limiter.limit(rate)
    def items() -> dict[str, bool]:
        return {"ok": True}

    return app


serve_asgi = uvicorn_in_thread


@contextlib.contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Run a WSGI ``app`` under werkzeug in a thread on a free loopback port."""

    class Quiet(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def run_sync(base: str, policy: HostPolicy, n: int = N) -> tuple[float, list[float]]:
    """Send ``n`` GETs one after another; returns the seconds from first send to last answer
    and every round trip."""
    wire = TimedWire()
    transport = RateLimitTransport(wire, default=policy)
    with httpx.Client(transport=transport, timeout=10) as client:
        start = time.time()
        for _ in range(n):
            assert client.get(f"{base}/items").status_code == 200
        return time.time() - start, wire.trips


def start_mid_window(period: float = 1.0) -> None:
    """Sleep until the middle of an aligned window: a run that starts just before a boundary
    has a minimum its first (connecting) request alone can miss."""
    time.sleep((0.5 * period - time.time() % period) % period)


def first_hit_minimum(n: int = N, trips: list[float] | None = None) -> float:
    """The seconds a perfect client takes for ``n`` requests one after another, ``AMOUNT`` per
    window of a second from its first hit, given the round trips measured (``trips``; none:
    instant): a loaded machine's slow round trips are work in each window no client avoids,
    and a window's first hit is known to have happened only by its answer."""
    if trips is None:
        return (math.ceil(n / AMOUNT) - 1) * 1.0
    now = opened = 0.0
    count = 0
    for trip in trips:
        if count == AMOUNT:
            now, count = max(now, opened + 1.0), 0
        now += trip
        if count == 0:
            opened = now
        count += 1
    return now


def aligned_minimum(start: float, n: int = N) -> float:
    return math.floor(start) + 1 + (math.ceil(n / AMOUNT) - 2) - start


SERVERS: dict[str, Callable[[Counts], Any]] = {
    "ratekeeper-first-hit": lambda c: ratekeeper_app("10/second", "first_hit_window", c),
    "slowapi": lambda c: slowapi_app("10/second", c),
    "flask-limiter": lambda c: flask_app("10/second", c),
}


@contextlib.contextmanager
def running(name: str, counts: Counts) -> Iterator[str]:
    app = SERVERS[name](counts)
    serve = serve_wsgi if name == "flask-limiter" else serve_asgi
    with serve(app) as base:
        yield base


@pytest.mark.parametrize("name", list(SERVERS))
def test_known_first_hit_policy_zero_429_within_5_percent(name: str) -> None:
    counts = Counts()
    with running(name, counts) as base:
        policy = HostPolicy(limits="10/second", algorithm="first_hit")
        elapsed, trips = run_sync(base, policy)
    assert counts.statuses[429] == 0
    assert counts.statuses[200] == N
    assert elapsed <= first_hit_minimum(N, trips) * 1.05 + LOAD_S


def test_known_aligned_policy_zero_429_within_5_percent_async() -> None:
    counts = Counts()
    with serve_asgi(ratekeeper_app("10/second", "fixed_window", counts)) as base:

        async def main() -> tuple[float, float]:
            transport = AsyncRateLimitTransport(default=HostPolicy(limits="10/second"))
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                # Just after a boundary: a first request still on its way when its window ends
                # (more than the 0.25 s a first flight is assumed to take: a server warming
                # up) is counted in the next, which the client has already filled: a 429.
                time.sleep(1.005 - time.time() % 1.0)
                start = time.time()
                answers = await asyncio.gather(*(client.get(f"{base}/items") for _ in range(N)))
                assert all(a.status_code == 200 for a in answers)
                return start, time.time()

        start, end = asyncio.run(main())
    assert counts.statuses[429] == 0
    minimum = aligned_minimum(start)
    assert end - start <= minimum * 1.05 + LOAD_S


def test_unknown_policy_learns_at_most_one_429_per_window_within_15_percent() -> None:
    counts = Counts()
    with running("ratekeeper-first-hit", counts) as base:
        elapsed, trips = run_sync(base, HostPolicy())
    assert counts.statuses[429] <= math.ceil(N / AMOUNT)
    assert elapsed <= first_hit_minimum(N, trips) * 1.15 + LOAD_S


def run_concurrent(base: str, policy: HostPolicy, driver: str, n: int = N) -> tuple[float, float]:
    """Send ``n`` GETs, 8 in flight (asyncio tasks or threads); returns the seconds taken and
    the first request's round trip."""
    url = f"{base}/items"
    if driver == "async":
        async_wire = AsyncTimedWire()

        async def main() -> None:
            transport = AsyncRateLimitTransport(async_wire, default=policy)
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                gate = asyncio.Semaphore(8)

                async def one() -> int:
                    async with gate:
                        return (await client.get(url)).status_code

                assert set(await asyncio.gather(*(one() for _ in range(n)))) == {200}

        start = time.time()
        asyncio.run(main())
        return time.time() - start, async_wire.first_s
    wire = TimedWire()
    transport = RateLimitTransport(wire, default=policy)
    with httpx.Client(transport=transport, timeout=10) as client:
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = set(pool.map(lambda _: client.get(url).status_code, range(n)))
        elapsed = time.time() - start
    assert statuses == {200}
    return elapsed, wire.first_s


@pytest.mark.parametrize("driver", ["async", "threads"])
def test_unknown_policy_8_in_flight_learns_one_429_per_window_within_15_percent(
    driver: str,
) -> None:
    """Answers to concurrent requests arrive out of order and late: the learned budget is
    reserved for the requests in flight, so none is sent past what the server has left."""
    counts = Counts()
    with running("ratekeeper-first-hit", counts) as base:
        elapsed, first_s = run_concurrent(base, HostPolicy(max_in_flight=8), driver)
    assert counts.statuses[429] <= math.ceil(N / AMOUNT)
    assert counts.statuses[200] == N
    assert elapsed <= first_hit_minimum() * 1.15 + LOAD_S + first_s


@pytest.mark.parametrize("name", ["slowapi", "flask-limiter"])
def test_unknown_policy_against_other_servers_stays_polite(name: str) -> None:
    """slowapi and Flask-Limiter report their resets a second late (``1 + reset``): waiting
    for them is safe but slow at one-second windows, so politeness is what is asserted."""
    counts = Counts()
    with running(name, counts) as base:
        elapsed, _ = run_sync(base, HostPolicy(), n=25)
    windows = math.ceil(elapsed) + 1
    assert counts.statuses[429] <= windows
    assert counts.statuses[200] == 25


def test_unknown_policy_without_headers_one_429_per_window() -> None:
    counts = Counts()
    with serve_asgi(ratekeeper_app("10/second", "first_hit_window", counts, headers=False)) as base:
        run_sync(base, HostPolicy(), n=30)
    assert counts.statuses[429] <= 3
    assert counts.statuses[200] == 30


def scripted_app(answers: list[tuple[int, dict[str, str], bytes]], log: list[float]) -> Starlette:
    """Answers in order, then 200s; records when each request arrived."""

    async def endpoint(request: Request) -> Response:
        log.append(time.time())
        index = len(log) - 1
        if index < len(answers):
            status, headers, body = answers[index]
            return Response(body, status_code=status, headers=headers)
        return Response(b"ok")

    return Starlette(routes=[Route("/items", endpoint)])


def test_real_retry_after_forms_body_hints_and_garbage() -> None:
    log: list[float] = []
    when = time.time() + 1.2
    answers = [
        (429, {"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))}, b""),
        (429, {"Content-Type": "application/json"}, b'{"error":{"retry_after_seconds":0.3}}'),
        (429, {"Retry-After": "-7", "X-RateLimit-Reset": "yesterday"}, b"retry after 0.2 seconds"),
        (503, {"Retry-After": "0"}, b""),
    ]
    with serve_asgi(scripted_app(answers, log)) as base:
        transport = RateLimitTransport(
            default=HostPolicy(adaptive=False),
            retry=RetryPolicy(backoff_base_s=0.1),
            random_fn=lambda: 0.0,
        )
        with httpx.Client(transport=transport, timeout=10) as client:
            assert client.get(f"{base}/items").text == "ok"
    gaps = [b - a for a, b in itertools.pairwise(log)]
    assert len(gaps) == 4
    assert log[1] >= math.floor(when)  # the HTTP-date has one-second resolution
    assert gaps[1] == pytest.approx(0.3, abs=0.1)
    assert gaps[2] == pytest.approx(0.2, abs=0.1)
    assert gaps[3] == pytest.approx(0.8, abs=0.1)  # max(0, the fourth backoff: 0.1 s x 2**3)


SHARED_CLIENT = textwrap.dedent(
    """
    import sys, httpx
    from ratekeeper.client import HostPolicy, RateLimitTransport
    base, store, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Told how the server counts: the budget lives in the shared store, not in one process.
    policy = HostPolicy(limits="10/second", algorithm="fixed_window", key="shared-budget")
    transport = RateLimitTransport(default=policy, store=store)
    with httpx.Client(transport=transport, timeout=10) as client:
        for _ in range(n):
            client.get(base + "/items")
    """
)


def test_two_processes_share_one_budget_through_sqlite(tmp_path: Path) -> None:
    counts = Counts()
    store = f"sqlite:///{tmp_path / 'budget.db'}"
    with serve_asgi(ratekeeper_app("10/second", "fixed_window", counts)) as base:
        procs = [
            subprocess.Popen([sys.executable, "-c", SHARED_CLIENT, base, store, "20"])
            for _ in range(2)
        ]
        for proc in procs:
            assert proc.wait(60) == 0
    assert counts.statuses[200] == 40
    assert counts.statuses[429] == 0


def test_an_endless_refusal_body_is_not_read() -> None:
    """An attacker's 429 that streams forever: the transport reads no body without a stated,
    small length, so the caller gets the answer (here as a stream) instead of a hang."""

    async def forever() -> Any:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(0)

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(forever(), status_code=429)

    with serve_asgi(Starlette(routes=[Route("/items", endpoint)])) as base:
        retry = RetryPolicy(max_retries=1, backoff_base_s=0.05)
        with (
            httpx.Client(transport=RateLimitTransport(retry=retry), timeout=5) as client,
            client.stream("GET", f"{base}/items") as response,
        ):
            assert response.status_code == 429
