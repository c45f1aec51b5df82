"""The decision endpoint, asked the way nginx ``auth_request``, Traefik ForwardAuth and Envoy
ext_authz ask, and the shipped nginx example (``examples/nginx/ratekeeper.conf``) run by a real
Debian nginx on free loopback ports: nginx proxies, ratekeeper decides."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_servers import Process, client, demo_upstream, serve
from nginx_servers import nginx_example
from ratekeeper import ManualClock
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView

# Every window starts with its key's first request (the failures' window is a day long), so no
# window boundary can fall between the requests of a test and reset its count halfway.
POLICY = """
body = "musique"
apply = ["caller"]

[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "ip"

[limits.caller]
rates = "5/hour"
algorithm = "first_hit_window"

[limits.busy]
rates = "1/hour"
algorithm = "first_hit_window"
scope = "global"
status = 503

[limits.envoy]
rates = "1/hour"
algorithm = "first_hit_window"
scope = "global"
status = 503

[lockout]
failures = 2
window = "1 day"
duration = "15 minutes"
scope = "ip"
routes = ["/api/v1/auth/*"]

[[rules]]
routes = ["/api/integration/busy"]
limits = ["busy"]

[[rules]]
routes = ["/envoy/*"]
limits = ["envoy"]
"""

MUSIQUE_429 = re.compile(
    r'\{"error":\{"code":"rate_limit_exceeded","message":"Rate limit exceeded\. Please retry '
    r'after (\d+) seconds\.","type":"rate_limit_error","retryAfter":(\d+)\}\}'
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decide")


@pytest.fixture(scope="module")
def upstream(root: Path) -> Iterator[Process]:
    with demo_upstream("musique", "beatpass", cwd=root) as process:
        yield process


@pytest.fixture(scope="module")
def ratekeeper(root: Path, upstream: Process) -> Iterator[Process]:
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    with serve(
        "--config",
        str(policy),
        "--trust-proxy",
        "127.0.0.1",
        "--upstream",
        upstream.url,
        "--store",
        f"sqlite:///{root / 'decide.db'}",
        cwd=root,
    ) as process:
        yield process
    assert "Traceback" not in process.output()


@pytest.fixture(scope="module")
def nginx(root: Path, ratekeeper: Process, upstream: Process) -> Iterator[str]:
    with nginx_example(root / "nginx", ratekeeper.url, upstream.url) as url:
        yield url


def test_nginx_forwards_allowed_requests_with_the_headers(nginx: str) -> None:
    headers = {"X-API-Key": uuid.uuid4().hex}
    started = time.time()
    resets = set()
    with client() as http:
        for n in range(5):
            r = http.get(nginx + "/api/integration/tracks", headers=headers)
            assert r.status_code == 200
            assert r.json()["data"][0]["id"] == "trk_1"
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert r.headers["X-RateLimit-Remaining"] == str(4 - n)
            resets.add(int(r.headers["X-RateLimit-Reset"]))
        r = http.get(nginx + "/api/integration/tracks", headers=headers)
    # One window, an hour from the key's first request.
    (reset,) = resets
    assert started + 3600 <= reset <= time.time() + 3601
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/json"
    match = MUSIQUE_429.fullmatch(r.text)
    assert match is not None, r.text
    assert match[1] == match[2] == r.headers["Retry-After"]
    assert r.headers["X-RateLimit-Remaining"] == "0"


def test_nginx_client_address_comes_from_its_x_forwarded_for(nginx: str) -> None:
    # No API key: counted per client address, which only nginx (a trusted proxy) can tell.
    with client("127.0.7.1") as first, client("127.0.7.2") as second:
        spoof = {"X-Forwarded-For": "198.51.100.1"}
        codes = [first.get(nginx + "/api/integration/locations").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        # A forged X-Forwarded-For from the client does not buy a fresh budget: nginx appends
        # the real address and ratekeeper takes the rightmost untrusted one.
        r = first.get(nginx + "/api/integration/locations", headers=spoof)
        assert r.status_code == 429
        assert second.get(nginx + "/api/integration/locations").status_code == 200


def test_nginx_passes_a_503_refusal_on(nginx: str) -> None:
    with client() as http:
        first = http.post(nginx + "/api/integration/busy", headers={"X-API-Key": "b"})
        second = http.post(nginx + "/api/integration/busy", headers={"X-API-Key": "c"})
    assert first.status_code == 404  # allowed: the demo has no such endpoint
    assert second.status_code == 503
    assert MUSIQUE_429.fullmatch(second.text) is not None
    assert int(second.headers["Retry-After"]) >= 1


def test_nginx_reports_answers_for_the_lockout(nginx: str) -> None:
    login = {"email": "demo@beatpass.example", "password": "wrong"}
    with client("127.0.9.1") as first, client("127.0.9.2") as second:
        # The API refuses the password twice (401): nginx reports both answers after the
        # fact and the address is locked out, before its third attempt reaches the API.
        for _ in range(2):
            assert first.post(nginx + "/api/v1/auth/login", json=login).status_code == 401
        deadline = time.monotonic() + 5
        while (r := first.post(nginx + "/api/v1/auth/login", json=login)).status_code == 401:
            # post_action runs after the client has its answer: the report may trail it.
            assert time.monotonic() < deadline, "the lockout was never reported"
            time.sleep(0.05)
        assert r.status_code == 429
        assert "too_many_failed_attempts" in r.text
        assert int(r.headers["Retry-After"]) > 800
        assert second.post(nginx + "/api/v1/auth/login", json=login).status_code == 401


def test_report_counts_only_failed_answers_on_the_lockout_routes(ratekeeper: Process) -> None:
    def report(address: str, status: str, uri: str = "/api/v1/auth/login", own: str = "") -> int:
        with client(address) as http:
            headers = {"X-Original-URI": uri, "X-Original-Method": "POST"}
            if status:
                headers["X-Original-Status"] = status
            if own:
                headers["X-Ratekeeper-Status"] = own
            r = http.post(ratekeeper.url + "/_ratekeeper/report", headers=headers)
        return r.status_code

    def locked(address: str) -> bool:
        with client(address) as http:
            headers = {"X-Original-URI": "/api/v1/auth/login", "X-Original-Method": "POST"}
            r = http.get(ratekeeper.url + "/_ratekeeper/decide", headers=headers)
        return r.status_code == 429 and "too_many_failed_attempts" in r.text

    assert report("127.0.10.1", "") == 400
    # Successes, answers elsewhere and ratekeeper's own refusals do not count.
    for status, uri in (("200", "/api/v1/auth/login"), ("401", "/api/v1/tracks")) * 2:
        assert report("127.0.10.1", status, uri) == 204
    assert report("127.0.10.1", "401", own="401") == 204
    assert report("127.0.10.1", "401", own="401") == 204
    assert not locked("127.0.10.1")
    assert report("127.0.10.1", "403") == 204
    assert not locked("127.0.10.1")
    assert report("127.0.10.1", "401") == 204
    assert locked("127.0.10.1")
    assert not locked("127.0.10.2")


def test_enforcer_report_counts_failures_as_completing_an_admitted_request_does(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    enforcer = Enforcer(policy, store="memory://", clock=ManualClock(1_700_000_000.0))

    def view(peer: str, path: str = "/api/v1/auth/login") -> RequestView:
        return RequestView("POST", path, {}, peer)

    def locked(peer: str) -> bool:
        answer = enforcer.admit(view(peer)).answer
        return answer is not None and b"too_many_failed_attempts" in answer.body

    enforcer.report(view("192.0.2.1"), 200)
    enforcer.report(view("192.0.2.1", "/api/v1/tracks"), 401)
    enforcer.report(view("192.0.2.1"), 401)
    assert not locked("192.0.2.1")
    asyncio.run(enforcer.report_async(view("192.0.2.1"), 403))
    assert locked("192.0.2.1")
    assert not locked("192.0.2.2")


def test_traefik_forward_auth_style(ratekeeper: Process) -> None:
    headers = {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/api/integration/tracks?page=2",
        "X-Forwarded-Proto": "https",
        "X-API-Key": uuid.uuid4().hex,
    }
    with client() as http:
        for n in range(5):
            r = http.get(ratekeeper.url + "/_ratekeeper/decide", headers=headers)
            assert r.status_code == 200
            assert r.content == b""
            assert r.headers["X-RateLimit-Remaining"] == str(4 - n)
        r = http.get(ratekeeper.url + "/_ratekeeper/decide", headers=headers)
    # Traefik returns a refusal to the client as it is: status, headers and body.
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/json"
    assert MUSIQUE_429.fullmatch(r.text) is not None
    assert "X-Ratekeeper-Status" not in r.headers


def test_envoy_ext_authz_style_path_prefix(ratekeeper: Process) -> None:
    with client() as http:
        # Envoy sends the original method and the original path after its path_prefix.
        first = http.post(ratekeeper.url + "/_ratekeeper/decide/envoy/busy?x=1")
        second = http.post(ratekeeper.url + "/_ratekeeper/decide/envoy/busy")
        other = http.get(ratekeeper.url + "/_ratekeeper/decide/envoy/other")
    assert first.status_code == 200
    assert second.status_code == 503
    assert other.status_code == 503  # the rule has no method filter


def test_forwarded_for_from_an_untrusted_peer_is_ignored(ratekeeper: Process) -> None:
    with client("127.0.8.1") as http:
        codes = [
            http.get(
                ratekeeper.url + "/_ratekeeper/decide",
                headers={"X-Original-URI": "/x", "X-Forwarded-For": f"203.0.113.{n}"},
            ).status_code
            for n in range(7)
        ]
    assert codes == [200] * 5 + [429] * 2


def test_deny_status_for_nginx_carries_the_real_answer(ratekeeper: Process) -> None:
    headers = {
        "X-Original-URI": "/api/integration/tracks",
        "X-Original-Method": "GET",
        "X-Ratekeeper-Deny-Status": "403",
        "X-API-Key": uuid.uuid4().hex,
    }
    with client() as http:
        for _ in range(5):
            assert http.get(ratekeeper.url + "/_ratekeeper/decide", headers=headers).is_success
        r = http.get(ratekeeper.url + "/_ratekeeper/decide", headers=headers)
    assert r.status_code == 403
    # No body: nginx keeps its keepalive connection to ratekeeper only after an empty one.
    assert r.content == b""
    assert r.headers["Content-Length"] == "0"
    assert r.headers["X-Ratekeeper-Status"] == "429"
    assert MUSIQUE_429.fullmatch(r.headers["X-Ratekeeper-Body"]) is not None
    assert r.headers["Retry-After"]
