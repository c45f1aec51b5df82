"""The Flask extension under real WSGI servers: waitress in a thread, gunicorn with two workers
on one SQLite file (exact), and the warning when two workers would split a memory store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask

from flask_site import create_app
from ratekeeper import PolicyError
from ratekeeper.integrations.flask import RateKeeper
from servers import waitress_in_thread

KEY = {"X-API-Key": "k1"}
TESTS = Path(__file__).parent


@pytest.fixture
def url() -> Iterator[str]:
    with waitress_in_thread(create_app()) as base:
        yield base


def test_policy_and_view_limits_are_one_decision(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert client.get("/plain").headers["X-RateLimit-Remaining"] == "99"
        first = client.get("/media")
        assert first.headers.get_list("X-RateLimit-Limit") == ["5"]
        assert [client.get("/media").status_code for _ in range(5)] == [200] * 4 + [429]
        assert client.get("/plain").headers["X-RateLimit-Remaining"] == "93"
        assert client.get("/plain", headers={"X-API-Key": ""}).status_code == 401
        scan = client.get("/nowhere")  # unknown paths are counted too: scanning is not free
        assert (scan.status_code, scan.headers["X-RateLimit-Remaining"]) == (404, "92")


def test_key_and_cost_functions_get_flasks_request(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert client.get("/search", params={"user": "a", "n": 2}).status_code == 200
        assert client.get("/search", params={"user": "a"}).status_code == 429
        assert client.get("/search", params={"user": "b"}).status_code == 200


def test_exempt_views_and_blueprints(url: str) -> None:
    with httpx.Client(base_url=url) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/public/page").status_code == 200
        keyed = [client.get("/admin/stats", headers=KEY).status_code for _ in range(3)]
        assert keyed == [200, 200, 429]


def test_a_blueprints_key_and_a_views_key_count_apart(url: str) -> None:
    calls = [("a", "u1"), ("a", "u2"), ("a", "u3"), ("a", "u4"), ("b", "u1"), ("b", "u1")]
    with httpx.Client(base_url=url, headers=KEY) as client:
        statuses = [
            client.get(
                "/tenants/report", params={"user": user}, headers={"X-Tenant": tenant}
            ).status_code
            for tenant, user in calls
        ]
    # Tenant a's 3/minute is spent at its fourth call; user u1's 2/minute at its third.
    assert statuses == [200, 200, 200, 429, 200, 429]


def test_a_view_that_raises_still_completes(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert client.get("/fail").status_code == 500
        assert client.get("/plain").status_code == 200


def test_configuration_errors_name_the_setting() -> None:
    with pytest.raises(PolicyError, match=r"RATEKEEPER_POLICY'\]: expected a policy \(missing\)"):
        RateKeeper(Flask("x"))
    app = Flask("y")
    app.config["RATEKEEPER_POLICY"] = 42
    with pytest.raises(PolicyError, match=r"RATEKEEPER_POLICY'\]: expected a policy file's path"):
        RateKeeper(app)
    app.config["RATEKEEPER_POLICY"] = {"limits": {"api": {"rates": "1/fortnight"}}}
    with pytest.raises(PolicyError, match=r"limits\.api\.rates"):
        RateKeeper(app)


def test_disabled_checks_nothing() -> None:
    app = Flask("z")
    app.config.update(RATEKEEPER_POLICY={"apply": ["1/minute"]}, RATEKEEPER_ENABLED=False)
    RateKeeper(app)
    app.get("/")(lambda: "ok")
    client = app.test_client()
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gunicorn(store: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    env = {**os.environ, "RATEKEEPER_TEST_STORE": store, "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [*command, "flask_site:app"], env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/health", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gunicorn did not start: {process.communicate()[1]}")


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    return process.communicate(timeout=20)[1]


def test_two_gunicorn_workers_on_one_sqlite_file_are_exact(tmp_path: Path) -> None:
    process, base = _gunicorn(f"sqlite:///{tmp_path / 'rk.db'}")
    try:
        # No keep-alive: each request is a new connection, so both workers take some.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base, headers=KEY, limits=limits) as client:
            statuses = [client.get("/media").status_code for _ in range(12)]
    finally:
        _stop(process)
    assert statuses.count(200) == 5
    assert statuses.count(429) == 7


def test_two_gunicorn_workers_on_a_memory_store_warn_at_start() -> None:
    process, _ = _gunicorn("memory://")
    time.sleep(1.0)  # both workers have started
    errors = _stop(process)
    assert "the memory:// store counts per process" in errors
