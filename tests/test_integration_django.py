"""The Django integration under real WSGI servers: the middleware, function and class-based
view decorators with request.user in key functions, the DRF throttle in a DRF view, and two
gunicorn workers on one SQLite file (exact)."""

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

from servers import waitress_in_thread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site")

KEY = {"X-API-Key": "k1"}
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from django_wsgi import application  # noqa: PLC0415 (configures Django on import)

    with waitress_in_thread(application) as base:
        yield base


def test_policy_and_view_limits_are_one_decision(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        before = int(client.get("/plain").headers["X-RateLimit-Remaining"])
        assert client.get("/media").headers.get_list("X-RateLimit-Limit") == ["5"]
        assert [client.get("/media").status_code for _ in range(5)] == [200] * 4 + [429]
        after = int(client.get("/plain").headers["X-RateLimit-Remaining"])
        assert before - after == 6  # five media requests and this one: apply charged once each
        assert client.get("/plain", headers={"X-API-Key": ""}).status_code == 401
        scan = client.get("/nowhere")  # unknown paths are counted too: scanning is not free
        assert (scan.status_code, int(scan.headers["X-RateLimit-Remaining"])) == (404, after - 1)


def test_request_user_reaches_key_functions(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        ann = [client.get("/search", headers={"X-User": "ann"}).status_code for _ in range(3)]
        assert ann == [200, 200, 429]
        assert client.get("/search", headers={"X-User": "bob"}).status_code == 200


def test_class_based_view_and_exempt_view(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        assert [client.get("/export").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200
        assert client.get("/fail").status_code == 500


def test_drf_throttle_in_a_drf_view(url: str) -> None:
    with httpx.Client(base_url=url, headers=KEY) as client:
        first = client.get("/drf", headers={"X-User": "cy"})
        assert first.json() == {"user": "cy"}
        assert first.headers.get_list("X-RateLimit-Limit") == ["2"]
        client.get("/drf", headers={"X-User": "cy"})
        refused = client.get("/drf", headers={"X-User": "cy"})
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert client.get("/drf", headers={"X-User": "dee"}).status_code == 200


def test_decorators_decide_alone_without_the_middleware() -> None:
    from django.test import RequestFactory, override_settings  # noqa: PLC0415

    import django_urls  # noqa: PLC0415
    from django_auth import User  # noqa: PLC0415

    def search_as(name: str) -> int:
        request = RequestFactory(headers=KEY).get("/search")
        request.user = User(name)
        return int(django_urls.search(request).status_code)

    with override_settings(MIDDLEWARE=[]):  # a fresh enforcer, and no middleware deciding
        assert [search_as("eve") for _ in range(3)] == [200, 200, 429]
        assert search_as("fay") == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gunicorn_workers_on_one_sqlite_file_are_exact(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RATEKEEPER_TEST_STORE": f"sqlite:///{tmp_path / 'rk.db'}",
        "PYTHONPATH": str(TESTS),
        "DJANGO_SETTINGS_MODULE": "django_site",
    }
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}"]
    process = subprocess.Popen([*command, "django_wsgi:application"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base, headers=KEY, limits=limits) as client:
            statuses = [client.get("/media").status_code for _ in range(12)]
    finally:
        process.terminate()
        process.wait(20)
    assert (statuses.count(200), statuses.count(429)) == (5, 7)
