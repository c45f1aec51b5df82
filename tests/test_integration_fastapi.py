"""The FastAPI integration in a real uvicorn: one decision and one set of headers per request,
limits as decorator and dependency, key and cost from the request, OpenAPI, docs, WebSockets."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi
import httpx
import pytest
import websockets

from ratekeeper import ManualClock, RateLimitMiddleware, loads_policy
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.fastapi import RateLimit, install
from ratekeeper.integrations.fastapi import RateKeeper, exempt, limit
from servers import uvicorn_in_thread

POLICY = """
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "100/minute"
[limits.media]
rates = "5/minute"
[[rules]]
routes = ["/open"]
exempt = true
"""
KEY = {"X-API-Key": "k1"}
TESTS = Path(__file__).parent


def tenant(request: fastapi.Request) -> str:
    return request.headers.get("x-tenant", "none")


def units(request: fastapi.Request) -> int:
    return int(request.query_params.get("n", "1"))


def make_app(clock: ManualClock) -> fastapi.FastAPI:
    app = fastapi.FastAPI()
    RateKeeper(app, loads_policy(POLICY), clock=clock, websocket_messages="3/minute")

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/media")
    @limit("media")
    async def media() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/search", dependencies=[limit("2/minute", key=tenant)])
    def search() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/export")
    @limit("10/minute", cost=units)
    async def export(n: int = 1) -> dict[str, int]:
        return {"n": n}

    @app.get("/free")
    @exempt
    async def free() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/ws")
    async def echo(socket: fastapi.WebSocket) -> None:
        await socket.accept()
        while True:
            try:
                text = await socket.receive_text()
            except fastapi.WebSocketDisconnect:
                return
            await socket.send_text(text)

    return app


@pytest.fixture
def url() -> Iterator[str]:
    with uvicorn_in_thread(make_app(ManualClock(1_699_999_980.0))) as base:
        yield base


def test_middleware_and_route_limit_make_one_decision_and_one_set_of_headers(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        for _ in range(6):
            r = client.get("/plain")
        assert r.headers.get_list("X-RateLimit-Limit") == ["100"]
        assert r.headers["X-RateLimit-Remaining"] == "94"
        r = client.get("/media")
        # The media limit binds (5 left of 5 -> 4); apply was charged once: 93 left of 100.
        assert r.headers.get_list("X-RateLimit-Limit") == ["5"]
        assert r.headers["X-RateLimit-Remaining"] == "4"
        for _ in range(4):
            assert client.get("/media").status_code == 200
        refused = client.get("/media")
        assert refused.status_code == 429
        assert refused.headers.get_list("X-RateLimit-Limit") == ["5"]
        assert client.get("/plain").headers["X-RateLimit-Remaining"] == "88"


def test_key_function_gets_the_frameworks_request(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert [client.get("/search", headers={"X-Tenant": "a"}).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        assert client.get("/search", headers={"X-Tenant": "b"}).status_code == 200


def test_cost_function_and_exemptions(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert client.get("/export", params={"n": 7}).headers["X-RateLimit-Remaining"] == "3"
        assert client.get("/export", params={"n": 4}).status_code == 429
        free = client.get("/free", headers={"X-API-Key": ""})
        assert free.status_code == 200 and "X-RateLimit-Limit" not in free.headers
        assert client.get("/open", headers={"X-API-Key": ""}).status_code == 404
        assert client.get("/plain", headers={"X-API-Key": ""}).status_code == 401


def test_docs_are_exempt_and_openapi_lists_429(url: str) -> None:
    with httpx.Client(base_url=url) as client:  # no key: anonymous callers are refused
        assert client.get("/docs").status_code == 200
        assert client.get("/redoc").status_code == 200
        document = client.get("/openapi.json").json()
    media = document["paths"]["/media"]["get"]["responses"]
    assert set(media["429"]["headers"]) >= {"Retry-After", "X-RateLimit-Limit"}
    assert "X-RateLimit-Remaining" in media["200"]["headers"]
    assert "429" in document["paths"]["/plain"]["get"]["responses"]
    assert "429" not in document["paths"]["/free"]["get"]["responses"]
    assert "_ratekeeper_limit" not in str(document["paths"]["/media"])


def test_websocket_connections_and_messages_are_limited(url: str) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws"

    async def talk() -> list[Any]:
        async with websockets.connect(ws_url, additional_headers=KEY) as socket:
            replies = []
            for text in ["a", "b", "c"]:
                await socket.send(text)
                replies.append(await socket.recv())
            await socket.send("d")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
            replies.append(closed.value.rcvd.code if closed.value.rcvd else None)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url):
                pass
        replies.append(refused.value.response.status_code)
        return replies

    assert asyncio.run(talk()) == ["a", "b", "c", 1008, 401]


def test_plain_middleware_with_the_dependency_charges_apply_once() -> None:
    """The issue's report: remaining 87 where 94 is right, and X-RateLimit-Limit: 5, 100."""
    enforcer = Enforcer(loads_policy(POLICY), clock=ManualClock(1_699_999_980.0))
    app = fastapi.FastAPI()
    install(app)

    @app.get("/media", dependencies=[fastapi.Depends(RateLimit(enforcer, ["media"]))])
    async def media() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    with (
        uvicorn_in_thread(RateLimitMiddleware(app, enforcer)) as base,
        httpx.Client(base_url=base, headers=KEY) as client,
    ):
        for _ in range(5):
            client.get("/plain")
        r = client.get("/media")
        assert len(r.headers.get_list("X-RateLimit-Limit")) == 1
        assert client.get("/plain").headers["X-RateLimit-Remaining"] == "93"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uvicorn_workers(store: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    env = {**os.environ, "RATEKEEPER_TEST_STORE": store}
    command = [sys.executable, "-m", "uvicorn", "fastapi_site:app", "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--app-dir", str(TESTS)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/health", timeout=1)
            return process, base
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.1)


def test_two_uvicorn_workers_on_one_sqlite_file_are_exact(tmp_path: Path) -> None:
    process, base = _uvicorn_workers(f"sqlite:///{tmp_path / 'rk.db'}")
    try:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base, headers=KEY, limits=limits) as client:
            statuses = [client.get("/media").status_code for _ in range(12)]
    finally:
        process.terminate()
        errors = process.communicate(timeout=20)[1]
    assert (statuses.count(200), statuses.count(429)) == (5, 7), errors
    assert "memory:// store counts per process" not in errors


def test_two_uvicorn_workers_on_a_memory_store_warn_at_start() -> None:
    process, _ = _uvicorn_workers("memory://")
    process.terminate()
    assert "the memory:// store counts per process" in process.communicate(timeout=20)[1]


def test_a_trailing_slash_or_another_method_does_not_get_around_a_route_limit(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY, follow_redirects=True) as client:
        assert client.head("/media").status_code == 405  # no way in, and charged by the policy
        assert [client.get("/media/").status_code for _ in range(6)] == [200] * 5 + [429]
        assert client.get("/media").status_code == 429


def test_openapi_lists_503_where_a_limit_answers_it() -> None:
    policy = """
apply = ["api", "overload"]
[limits.api]
rates = "10/minute"
[limits.overload]
in_flight = 2
scope = "global"
"""
    app = fastapi.FastAPI()
    RateKeeper(app, loads_policy(policy))

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {}

    responses = app.openapi()["paths"]["/x"]["get"]["responses"]
    assert {"429", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_a_routers_limit_and_an_endpoints_limit_are_one_decision() -> None:
    app = fastapi.FastAPI()
    RateKeeper(app, loads_policy(POLICY), clock=ManualClock(1_699_999_980.0))
    router = fastapi.APIRouter(dependencies=[limit("3/minute", key=tenant)])

    @router.get("/both")
    @limit("2/minute")
    async def both() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router, prefix="/v1")
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, headers=KEY) as client:
        first = client.get("/v1/both", headers={"X-Tenant": "a"})
        assert first.headers.get_list("X-RateLimit-Limit") == ["2"]
        assert client.get("/v1/both", headers={"X-Tenant": "b"}).status_code == 200
        # The endpoint's 2/minute per caller is spent; tenant a's 3/minute still has one.
        assert client.get("/v1/both", headers={"X-Tenant": "a"}).status_code == 429
        document = client.get("/openapi.json").json()
    assert "429" in document["paths"]["/v1/both"]["get"]["responses"]


def test_a_routers_key_function_counts_per_its_own_key() -> None:
    app = fastapi.FastAPI()
    RateKeeper(app, loads_policy(POLICY), clock=ManualClock(1_699_999_980.0))
    router = fastapi.APIRouter(dependencies=[limit("2/minute", key=tenant)])

    @router.get("/tenanted")
    async def tenanted() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router, prefix="/v2")
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, headers=KEY) as client:
        a = [client.get("/v2/tenanted", headers={"X-Tenant": "a"}).status_code for _ in range(3)]
        assert a == [200, 200, 429]
        assert client.get("/v2/tenanted", headers={"X-Tenant": "b"}).status_code == 200


def test_decorator_path_key_gets_the_routed_request_and_stacked_limits_decide_once() -> None:
    app = fastapi.FastAPI()
    RateKeeper(app, loads_policy(POLICY), clock=ManualClock(1_699_999_980.0))

    @app.get("/users/{user}")
    @limit("2/minute", key=lambda request: request.path_params["user"])
    def user(user: str, request: fastapi.Request) -> dict[str, str]:
        return {"user": user, "path": request.url.path}

    @app.get("/stacked")
    @limit("3/minute")
    @limit("media")
    async def stacked(request: fastapi.Request) -> dict[str, str]:
        return {"path": request.url.path}

    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, headers=KEY) as client:
        assert client.get("/users/a").json() == {"user": "a", "path": "/users/a"}
        assert [client.get("/users/a").status_code for _ in range(2)] == [200, 429]
        assert client.get("/users/b").status_code == 200
        first = client.get("/stacked")
        assert first.json() == {"path": "/stacked"}
        # One decision: media (5/minute) and 3/minute charged once each, one set of headers.
        assert first.headers.get_list("X-RateLimit-Limit") == ["3"]
        assert first.headers["X-RateLimit-Remaining"] == "2"
        assert [client.get("/stacked").status_code for _ in range(3)] == [200, 200, 429]
        document = client.get("/openapi.json").json()
    assert "429" in document["paths"]["/users/{user}"]["get"]["responses"]
    assert "_ratekeeper_request" not in str(document)
