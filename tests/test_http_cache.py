"""The response cache as a middleware of its own: shared through an SQLite file by two apps,
failing as a miss (never an error answer), keeping secrets out of the file; real uvicorn."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ratekeeper import ManualClock
from ratekeeper.errors import StoreError
from ratekeeper.http.asgi import RateLimitMiddleware
from ratekeeper.http.cache_shared import SharedResponseCache
from ratekeeper.http.engine import Enforcer
from ratekeeper.policy import loads_policy
from ratekeeper.stores.expiring import SQLiteValues
from ratekeeper.stores.sqlite import SQLiteStore
from servers import uvicorn_in_thread

POLICY = """
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "100/minute"
[[rules]]
routes = ["/data"]
methods = ["GET"]
cache_ttl = "10s"
"""


def counting_app(name: str, calls: list[str]) -> Any:
    async def data(request: Request) -> JSONResponse:
        calls.append(name)
        return JSONResponse({"from": name, "n": len(calls)})

    return Starlette(routes=[Route("/data", data)])


def test_two_apps_on_one_sqlite_file_share_answers_and_keep_secrets_out(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    clock = ManualClock(1_700_000_000.0)
    calls: list[str] = []
    apps = []
    for name in ("one", "two"):
        store = SQLiteStore(path)
        enforcer = Enforcer(loads_policy(POLICY), store=store, clock=clock)
        cache = SharedResponseCache(SQLiteValues(path), max_body_bytes=10_000, clock=clock)
        apps.append(RateLimitMiddleware(counting_app(name, calls), enforcer, response_cache=cache))
    secret = {"X-API-Key": "sk-very-secret"}
    with uvicorn_in_thread(apps[0]) as one, uvicorn_in_thread(apps[1]) as two:
        first = httpx.get(one + "/data?token=query-secret", headers=secret)
        second = httpx.get(two + "/data?token=query-secret", headers=secret)
        assert first.json() == second.json() == {"from": "one", "n": 1}
        assert second.headers["X-Cache"] == "HIT"
        clock.advance(10)
        assert httpx.get(two + "/data?token=query-secret", headers=secret).json()["n"] == 2
    rows = sqlite3.connect(path).execute("SELECT key, value FROM ratekeeper_values").fetchall()
    assert rows
    for key, value in rows:
        assert "secret" not in key and b"secret" not in value


class BrokenValues:
    """A shared cache whose backend is down."""

    def get(self, key: str, now: float) -> bytes | None:
        raise StoreError("connection refused")

    def put(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        raise StoreError("connection refused")

    async def get_async(self, key: str, now: float) -> bytes | None:
        raise StoreError("connection refused")

    async def put_async(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        raise StoreError("connection refused")

    def close(self) -> None:
        pass


def test_a_cache_that_fails_is_a_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    cache = SharedResponseCache(BrokenValues(), max_body_bytes=10_000, clock=ManualClock())
    app = RateLimitMiddleware(
        counting_app("app", calls), loads_policy(POLICY), response_cache=cache
    )
    with caplog.at_level(logging.WARNING, "ratekeeper.http"), uvicorn_in_thread(app) as url:
        for n in range(3):
            r = httpx.get(url + "/data", headers={"X-API-Key": "k"})
            assert (r.status_code, r.json()["n"]) == (200, n + 1)
            assert "X-Cache" not in r.headers
    warnings = [r for r in caplog.records if "response cache unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_an_answer_past_max_body_bytes_streams_through_and_is_not_kept() -> None:
    calls: list[str] = []

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 500

    async def data(request: Request) -> StreamingResponse:
        calls.append("app")
        return StreamingResponse(chunks(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/data", data)])
    policy = loads_policy(POLICY + "[cache]\nmax_body_bytes = 1000\n")
    with uvicorn_in_thread(RateLimitMiddleware(app, policy)) as url:
        for _ in range(2):
            r = httpx.get(url + "/data", headers={"X-API-Key": "k"})
            assert r.status_code == 200 and len(r.content) == 5000
            assert "X-Cache" not in r.headers
    assert calls == ["app", "app"]
