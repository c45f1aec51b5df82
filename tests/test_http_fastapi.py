"""The FastAPI dependency in a real uvicorn: per-route limits from the same policy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import fastapi
import httpx
import pytest
import uvicorn

from ratekeeper import ManualClock
from ratekeeper.errors import PolicyError
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.fastapi import RateLimit, install
from ratekeeper.policy import loads_policy

POLICY = """
body = "musique"
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "10/minute"
[limits.media]
rates = "2/minute"
"""


@pytest.fixture
def url() -> Iterator[str]:
    enforcer = Enforcer(loads_policy(POLICY), clock=ManualClock(1_699_999_980.0))
    app = fastapi.FastAPI()
    install(app)
    media = RateLimit(enforcer, ["media"])

    @app.get("/media/{name}", dependencies=[fastapi.Depends(media)])
    async def get_media(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/free")
    async def free() -> dict[str, bool]:
        return {"free": True}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", proxy_headers=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.005)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(5)
    sock.close()


def test_dependency_limits_one_route(url: str) -> None:
    with httpx.Client(base_url=url) as client:
        key = {"X-API-Key": "k"}
        r = client.get("/media/a", headers=key)
        assert r.status_code == 200
        assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "1")
        client.get("/media/a", headers=key)
        r = client.get("/media/a", headers=key)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "60"
        assert r.json()["error"]["retryAfter"] == 60
        assert client.get("/free").status_code == 200
        assert client.get("/media/a").status_code == 401


def test_dependency_refuses_unknown_limits() -> None:
    enforcer = Enforcer(loads_policy(POLICY, "p.toml"))
    with pytest.raises(PolicyError, match=r"p\.toml: limit 'nope' of .*: expected one of"):
        RateLimit(enforcer, ["nope"])
