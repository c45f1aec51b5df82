"""The requests adapter through real loopback servers: the httpx transports' flow, on requests."""

from __future__ import annotations

import logging
import time

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ratekeeper.client import HostPolicy, RateLimitAdapter, RetryPolicy
from ratekeeper.client.flow import ClientFlow
from servers import uvicorn_in_thread
from test_client_learning import DroppingServer, aligned_app
from test_client_servers import LOAD_S, Counts, slowapi_app


def session_with(adapter: RateLimitAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


def test_told_windows_paced_with_no_refusal_by_the_same_flow() -> None:
    counts = Counts()
    adapter = RateLimitAdapter(default=HostPolicy(limits="10/second"))
    assert isinstance(adapter._flow, ClientFlow)
    with uvicorn_in_thread(slowapi_app("10/second", counts)) as base, session_with(adapter) as s:
        start = time.time()
        assert s.get(f"{base}/items", timeout=5).status_code == 200
        # The first round trip (a server warming up: 0.8 s once in CI) delays the windows the
        # client places from its answer.
        first_s = time.time() - start
        for _ in range(24):
            assert s.get(f"{base}/items", timeout=5).status_code == 200
        elapsed = time.time() - start
    assert counts.statuses == {200: 25}
    assert elapsed <= 2.0 * 1.05 + LOAD_S + first_s


def test_learns_aligned_windows_and_retries_a_503_after_its_reset() -> None:
    """Nothing told: the MusicBrainz-like server's 503 is retried after its reset, and the
    budget learned from its headers paces the rest."""
    counts = Counts()
    adapter = RateLimitAdapter(default=HostPolicy(max_in_flight=1))
    with (
        uvicorn_in_thread(aligned_app(2, 2, counts), date_header=False) as base,
        session_with(adapter) as s,
    ):
        for _ in range(5):
            assert s.get(f"{base}/items", timeout=5).status_code == 200
    assert counts.statuses[200] == 5
    assert counts.statuses[503] <= 1


def test_no_hint_retry_waits_the_base_and_user_agent_is_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[float, str | None]] = []

    async def endpoint(request: Request) -> Response:
        log.append((time.time(), request.headers.get("user-agent")))
        return Response(b"", status_code=429 if len(log) == 1 else 200)

    policy = HostPolicy(user_agent="app/1.0 (me@example.com)")
    adapter = RateLimitAdapter(default=policy, retry=RetryPolicy(backoff_base_s=0.5))
    with (
        uvicorn_in_thread(Starlette(routes=[Route("/items", endpoint)])) as base,
        session_with(adapter) as s,
        caplog.at_level(logging.INFO, logger="ratekeeper.client"),
    ):
        assert s.get(f"{base}/items", timeout=5).status_code == 200
    assert log[1][0] - log[0][0] >= 0.5
    # The wait is timed from when the client read the refusal (its retry logged then), not
    # from when the server sent it: a slow answer is no longer wait.
    (read,) = [r.created for r in caplog.records if "retry 1" in r.getMessage()]
    assert 0.5 <= log[1][0] - read <= 0.75 + LOAD_S
    assert {agent for _, agent in log} == {"app/1.0 (me@example.com)"}


def test_dropped_keepalive_connection_retried_once() -> None:
    server = DroppingServer()
    try:
        adapter = RateLimitAdapter(default=HostPolicy(limits="100/second"))
        with session_with(adapter) as s:
            assert s.get(f"{server.base}/a", timeout=5).text == "ok"
            assert s.get(f"{server.base}/b", timeout=5).text == "ok"
            with pytest.raises(requests.ConnectionError):
                s.post(f"{server.base}/c", timeout=5)
        assert server.requests == [b"GET", b"GET", b"GET", b"POST"]
    finally:
        server.close()
