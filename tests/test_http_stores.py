"""The policy's ``store`` URL plugs the persistent stores in, through both middlewares.

Redis decides with its own ``TIME``, so these tests check counts and shared state, not exact
reset times.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from redis_servers import redis_server
from test_http_support import KINDS, serve

POLICY = """
store = "{url}"
body = "aisoule"
apply = ["api"]
[identity]
source = "api_key"
[limits.api]
rates = "3/minute; 100/hour"
"""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _exercise(kind: str, url: str) -> None:
    with serve(kind, POLICY.format(url=url)) as srv, srv.client() as client:
        key = {"Authorization": "Bearer sk_live_x"}
        remaining = [
            client.get("/a", headers=key).headers["X-RateLimit-Remaining"] for _ in range(3)
        ]
        assert remaining == ["2", "1", "0"]
        r = client.get("/a", headers=key)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["Retry-After"]) >= 1


def test_sqlite_store_from_the_policy(kind: str, tmp_path: Path) -> None:
    _exercise(kind, f"sqlite:///{tmp_path}/limits.db")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_store_from_the_policy(kind: str, tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        _exercise(kind, server.url)
