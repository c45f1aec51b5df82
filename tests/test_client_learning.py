"""The client right the first time against servers it did not write (issue 16): each test
reproduces one cause of rejections, slowness or a lost request against a real loopback server.

Servers: slowapi and Flask-Limiter (windows start at a key's first hit; Flask-Limiter writes
its reset a second late), Flask-Limiter's moving window (``limits``), and a MusicBrainz-like
server with 2-per-2-s windows aligned to the clock, epoch resets in whole seconds and 503s.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from flask_limiter import Limiter as FlaskLimiter
from flask_limiter.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ratekeeper.client import HostPolicy, RateLimitTransport, RetryPolicy
from servers import uvicorn_in_thread
from test_client_servers import (
    LOAD_S,
    Counts,
    TimedWire,
    ratekeeper_app,
    serve_wsgi,
    slowapi_app,
    start_mid_window,
)


def aligned_app(
    amount: int,
    period: int,
    counts: Counts,
    *,
    offset_s: float = 0.0,
    date_lag_s: float = 0.0,
    agents: list[str | None] | None = None,
) -> Starlette:
    """MusicBrainz-like: windows aligned to the (server's) clock, ``X-RateLimit-Reset`` as a
    whole-second epoch, 503 when over. Its clock runs ``offset_s`` ahead of ours; its ``Date``
    is whole seconds and ``date_lag_s`` stale (a cached Date)."""
    used: dict[int, int] = {}

    async def endpoint(request: Request) -> Response:
        if agents is not None:
            agents.append(request.headers.get("user-agent"))
        now = time.time() + offset_s
        window = math.floor(now / period)
        end = (window + 1) * period
        headers = {
            "Date": email.utils.formatdate(math.floor(now - date_lag_s), usegmt=True),
            "X-RateLimit-Limit": str(amount),
            "X-RateLimit-Reset": str(end),
        }
        count = used.get(window, 0)
        if count >= amount:
            counts.add(503)
            headers["X-RateLimit-Remaining"] = "0"
            headers["Retry-After"] = str(math.ceil(end - now))
            text = "Your requests are exceeding the allowable rate limit."
            return PlainTextResponse(text, status_code=503, headers=headers)
        used[window] = count + 1
        counts.add(200)
        headers["X-RateLimit-Remaining"] = str(amount - count - 1)
        return JSONResponse({"ok": True}, headers=headers)

    return Starlette(routes=[Route("/items", endpoint)])


def flask_app(rate: str, counts: Counts, strategy: str = "fixed-window") -> Any:
    """Flask-Limiter with ``strategy`` (``moving-window`` is ``limits``' true moving window)."""
    app = Flask("limited")
    limiter = FlaskLimiter(
        get_remote_address,
        app=app,
        headers_enabled=True,
        storage_uri="memory://",
        strategy=strategy,
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


@contextlib.contextmanager
def serving(name: str, counts: Counts) -> Iterator[tuple[str, str, float]]:
    """One of the servers by name; yields (base URL, its rate, its period)."""
    if name == "slowapi":
        with uvicorn_in_thread(slowapi_app("10/second", counts)) as base:
            yield base, "10/second", 1.0
    elif name == "flask-limiter":
        with serve_wsgi(flask_app("10/second", counts)) as base:
            yield base, "10/second", 1.0
    elif name == "moving-window":
        with serve_wsgi(flask_app("10/second", counts, "moving-window")) as base:
            yield base, "10/second", 1.0
    else:
        with uvicorn_in_thread(aligned_app(2, 2, counts), date_header=False) as base:
            yield base, "2/2s", 2.0


def get_all(
    base: str, n: int, wire: TimedWire | None = None, **options: Any
) -> tuple[float, RateLimitTransport, float]:
    """``n`` GETs one after another; returns the seconds from first send to last answer, the
    transport, and the first request's round trip (see :class:`TimedWire`)."""
    wire = wire or TimedWire()
    transport = RateLimitTransport(wire, **options)
    with httpx.Client(transport=transport, timeout=10) as client:
        start = time.time()
        for _ in range(n):
            assert client.get(f"{base}/items").status_code == 200
        return time.time() - start, transport, wire.first_s


def only_state(transport: RateLimitTransport) -> Any:
    (state,) = transport.pacer.states().values()
    return state


@pytest.mark.parametrize("name", ["slowapi", "flask-limiter", "moving-window", "aligned"])
def test_windows_told_counting_not_told_no_server_refuses(name: str) -> None:
    """Cause 1: "N per W" was paced as clock-aligned windows, which first-hit and moving
    windows refuse (the burst at a boundary lands in a span of W that still holds N)."""
    counts = Counts()
    with serving(name, counts) as (base, rate, period):
        n = 25 if period == 1.0 else 6
        elapsed, transport, first_s = get_all(base, n, default=HostPolicy(limits=rate))
    assert counts.statuses == {200: n}
    minimum = (math.ceil(n / int(rate.split("/")[0])) - 1) * period
    assert elapsed <= minimum * 1.05 + LOAD_S + first_s
    # Nothing but an aligned server's resets may switch the model.
    (pacer,) = only_state(transport).pacers
    if name != "aligned":
        assert pacer.model == "moving"


def test_aligned_windows_learned_from_resets_and_used() -> None:
    """Cause 1, learning: a reset earlier than any window this client started could end proves
    aligned windows; the next burst goes at the boundary, not a period after the first."""
    counts = Counts()
    with uvicorn_in_thread(ratekeeper_app("10/second", "fixed_window", counts)) as base:
        # Mid-window, so that waiting a whole period would be visibly slower.
        start_mid_window()
        elapsed, transport, first_s = get_all(base, 30, default=HostPolicy(limits="10/second"))
    (pacer,) = only_state(transport).pacers
    assert pacer.model == "aligned"
    assert counts.statuses == {200: 30}
    # Aligned from the start (0.5 s into a window): 0.5 + 1 s, where a moving window takes 2
    # (a first answer slower than 0.5 s starts the client in the next window).
    assert elapsed <= 1.5 + LOAD_S + first_s


def refusing_first(app: Starlette, counts: Counts, body: bytes) -> Any:
    """``app`` behind a gate that refuses the very first request (not counted by ``app``)."""
    seen = []

    async def gate(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not seen:
            seen.append(1)
            counts.add(429)
            await PlainTextResponse(body, status_code=429)(scope, receive, send)
            return
        await app(scope, receive, send)

    return gate


@pytest.mark.parametrize("algorithm", [None, "first_hit_window"])
def test_refused_attempt_is_not_charged_twice(algorithm: str | None) -> None:
    """Cause 2: the 429 took a unit of the client's own budget and its retry another, pushing
    the last request of a full window into the next one."""
    counts = Counts()
    app = refusing_first(
        ratekeeper_app("5/2s", "first_hit_window", counts), counts, b'{"retry_after": 0.1}'
    )
    with uvicorn_in_thread(app) as base:
        policy = HostPolicy(limits="5/2s", algorithm=algorithm)
        elapsed, _, _ = get_all(base, 5, default=policy)
    assert counts.statuses == {429: 1, 200: 5}
    assert elapsed < 1.5  # all five in the first window, not one in the next


class DroppingServer:
    """HTTP/1.1 on a raw socket that answers the first request of each connection and closes
    the connection when the second one arrives, as a server closing an idle keep-alive
    connection just as the client reuses it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            for index in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data.split(b" ", 1)[0])
                if index == 1:
                    return  # closed with the request unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()


def test_idempotent_request_retried_once_on_a_fresh_connection() -> None:
    """Cause 3: a kept-alive connection closed under the request surfaced to the caller."""
    server = DroppingServer()
    try:
        transport = RateLimitTransport(default=HostPolicy(limits="100/second"))
        with httpx.Client(transport=transport, timeout=5) as client:
            assert client.get(f"{server.base}/a").text == "ok"
            assert client.get(f"{server.base}/b").text == "ok"  # dropped once, retried
            with pytest.raises(httpx.RemoteProtocolError):
                client.post(f"{server.base}/c")  # may have been processed: not retried
        assert server.requests == [b"GET", b"GET", b"GET", b"POST"]
    finally:
        server.close()


@pytest.mark.parametrize(("offset_s", "lag_s"), [(0.0, 1.0), (30.0, 0.0)])
def test_date_skew_acted_on_only_when_rounding_cannot_explain_it(
    offset_s: float, lag_s: float
) -> None:
    """Cause 4: one stale Date (uvicorn caches it) read as a skew made epoch resets read up
    to 2 s late, skipping whole 2-second windows; a real skew must still be corrected."""
    counts = Counts()
    app = aligned_app(2, 2, counts, offset_s=offset_s, date_lag_s=lag_s)
    with uvicorn_in_thread(app, date_header=False) as base:
        # Learned only: the resets are all the client knows of the windows.
        transport = RateLimitTransport(default=HostPolicy(max_in_flight=1))
        with httpx.Client(transport=transport, timeout=10) as client:
            start = time.time()
            for _ in range(6):
                assert client.get(f"{base}/items").status_code == 200
            elapsed = time.time() - start
    skew = only_state(transport).skew.skew_s
    assert skew == (0.0 if offset_s == 0 else pytest.approx(offset_s, abs=1.0))
    # Six requests, two per aligned window: at most three windows (one learning refusal).
    assert elapsed <= 6.0 + LOAD_S
    assert counts.statuses[503] <= 1


def test_rounded_up_reset_learns_the_true_period() -> None:
    """Cause 5: Flask-Limiter writes its reset a second late; believed, a 5-per-second limit
    ran at half speed. One probe per window at most finds the true period."""
    counts = Counts()
    with serve_wsgi(flask_app("5/second", counts)) as base:
        transport = RateLimitTransport(default=HostPolicy())
        with httpx.Client(transport=transport, timeout=10) as client:
            start = time.time()
            for _ in range(25):
                assert client.get(f"{base}/items").status_code == 200
            elapsed = time.time() - start
    windows = math.ceil(elapsed) + 1
    assert counts.statuses[429] <= windows
    assert only_state(transport).period_s == 1.0
    # Four more windows after the first: 4 s at best, 8 s believing the written resets.
    assert elapsed <= 4.0 * 1.25 + LOAD_S


def test_learned_window_paces_a_moving_window_as_if_told() -> None:
    """Cause 5, moving windows: units come back one by one, which no reset says; once the
    window's size is reported and its period probed, the host is paced as if told."""
    counts = Counts()
    with serve_wsgi(flask_app("10/second", counts, "moving-window")) as base:
        elapsed, transport, first_s = get_all(base, 30, default=HostPolicy())
    (pacer,) = only_state(transport).pacers
    assert (pacer.amount, pacer.period_s) == (10, 1.0)
    assert counts.statuses[429] <= math.ceil(elapsed) + 1
    # A probing refusal (one allowed per window) waits for its unit: up to one period more.
    assert elapsed <= 2.0 * 1.1 + 1.0 * min(1, counts.statuses[429]) + LOAD_S + first_s


def test_first_retry_without_hint_waits_at_least_the_base(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cause 6: with no hint at all the first retry waited uniform [0, 1) s."""
    log: list[float] = []

    async def endpoint(request: Request) -> Response:
        log.append(time.time())
        return Response(b"busy", status_code=429 if len(log) == 1 else 200)

    with (
        uvicorn_in_thread(Starlette(routes=[Route("/items", endpoint)])) as base,
        caplog.at_level(logging.INFO, logger="ratekeeper.client"),
    ):
        transport = RateLimitTransport(retry=RetryPolicy(backoff_base_s=1.0))
        with httpx.Client(transport=transport, timeout=10) as client:
            assert client.get(f"{base}/items").status_code == 200
    assert log[1] - log[0] >= 1.0
    # Timed from when the client read the refusal (its retry logged then): a slow answer is
    # no part of the wait.
    (read,) = [r.created for r in caplog.records if "retry 1" in r.getMessage()]
    assert 1.0 <= log[1] - read <= 1.5 + LOAD_S


class ReportedRemaining(TimedWire):
    """The wire under the client: the remaining each answer reported."""

    def __init__(self) -> None:
        super().__init__()
        self.remaining: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.remaining.append(response.headers.get("x-ratelimit-remaining"))
        return response


def test_low_remaining_relative_and_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    """Cause 7: ``low_remaining=10`` warned every window of a 2-per-2-s limit."""
    counts = Counts()
    seen: list[int] = []
    wire = ReportedRemaining()
    with (
        uvicorn_in_thread(aligned_app(2, 2, counts), date_header=False) as base,
        caplog.at_level(logging.INFO, logger="ratekeeper.client"),
    ):
        get_all(
            base,
            6,
            wire,
            default=HostPolicy(limits="2/2s", low_remaining=0.1),
            on_low_remaining=lambda host, quota: seen.append(quota.remaining),
        )
    assert counts.statuses == {200: 6}
    # Once per window, at the window's last request: three windows of two, or (a slow first
    # answer: its request counted in a window the second was not) two of them.
    spent = wire.remaining.count("0")
    assert spent >= 2
    assert seen == [0] * spent
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # then logged at INFO: the log does not repeat every window


def test_user_agent_set_and_required_one_warned(caplog: pytest.LogCaptureFixture) -> None:
    """Cause 7: MusicBrainz requires a User-Agent that lets its owner reach the client."""
    counts = Counts()
    agents: list[str | None] = []
    with uvicorn_in_thread(aligned_app(10, 2, counts, agents=agents), date_header=False) as base:
        own = HostPolicy.from_policy("musicbrainz", user_agent="app/1.0 (me@example.com)")
        with caplog.at_level(logging.WARNING, logger="ratekeeper.client"):
            get_all(base, 2, default=own)
            assert "requires a User-Agent" not in caplog.text
            get_all(base, 2, default=HostPolicy.from_policy("musicbrainz"))
        with httpx.Client(
            transport=RateLimitTransport(default=own), headers={"User-Agent": "mine/2"}
        ) as client:
            client.get(f"{base}/items")
    assert agents[:2] == ["app/1.0 (me@example.com)"] * 2
    assert agents[2].startswith("python-httpx/")
    assert agents[4] == "mine/2"  # a User-Agent the caller set is left alone
    assert caplog.text.count("requires a User-Agent") == 1
