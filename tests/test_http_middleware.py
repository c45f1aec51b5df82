"""Every enforcement feature through both middlewares, in real servers over real sockets."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import http_sfv
import httpx
import pytest

from ratekeeper.client.hints import parse_ietf_ratelimit
from test_http_support import KINDS, plan_hook_calls, raw_request, serve

START = 1_700_000_000.25

MUSIQUE = """
body = "musique"
usage_path = "/api/integration/limits"
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "100/minute; 1000/hour; 10000/day"
[[rules]]
routes = ["/health"]
exempt = true
"""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_first_answer_counts_the_request_and_reports_the_binding_limit(kind: str) -> None:
    with serve(kind, MUSIQUE) as srv, srv.client() as client:
        r = client.get("/tracks", headers={"X-API-Key": "msk_live_1"})
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "100"
        assert r.headers["X-RateLimit-Remaining"] == "99"
        assert r.headers["X-RateLimit-Reset"] == str(math.ceil(START / 60) * 60)
        assert "Retry-After" not in r.headers
        assert "RateLimit" not in r.headers


def test_rejection_in_musique_format_with_retry_after(kind: str) -> None:
    text = MUSIQUE.replace("100/minute; 1000/hour; 10000/day", "2/minute; 1000/hour")
    with serve(kind, text) as srv, srv.client() as client:
        headers = {"Authorization": "Bearer k1"}
        assert [client.get("/x", headers=headers).status_code for _ in range(2)] == [200, 200]
        r = client.get("/x", headers=headers)
        assert r.status_code == 429
        wait = math.ceil(math.ceil(START / 60) * 60 - START)
        assert r.headers["Retry-After"] == str(wait)
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert r.json() == {
            "error": {
                "code": "rate_limit_exceeded",
                "message": f"Rate limit exceeded. Please retry after {wait} seconds.",
                "type": "rate_limit_error",
                "retryAfter": wait,
            }
        }
        assert srv.state.calls["/x"] == 2
        srv.clock.advance(wait)
        assert client.get("/x", headers=headers).status_code == 200


def test_usage_endpoint_counts_and_carries_headers(kind: str) -> None:
    with serve(kind, MUSIQUE) as srv, srv.client() as client:
        key = {"X-API-Key": "msk_live_1234567890abcdef"}
        for _ in range(22):
            client.get("/tracks", headers=key)
        r = client.get("/api/integration/limits", headers=key)
        assert r.status_code == 200
        assert r.json() == {
            "limits": {"perMinute": 100, "perHour": 1000, "perDay": 10000},
            "usage": {"perMinute": 23, "perHour": 23, "perDay": 23},
            "remaining": {"perMinute": 77, "perHour": 977, "perDay": 9977},
        }
        assert r.headers["X-RateLimit-Remaining"] == "77"
        assert "/api/integration/limits" not in srv.state.calls


def test_missing_key_and_exempt_route(kind: str) -> None:
    with serve(kind, MUSIQUE) as srv, srv.client() as client:
        r = client.get("/tracks")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "missing_api_key"
        r = client.get("/health")
        assert r.status_code == 200
        assert "X-RateLimit-Limit" not in r.headers
        basic = client.get("/tracks", headers={"Authorization": "Basic abc"})
        assert basic.status_code == 401


def test_tiers_from_the_file_and_from_a_cached_hook(kind: str) -> None:
    text = (
        MUSIQUE
        + """
[plans.enterprise]
api = "1000/minute; 10000/hour; 100000/day"
[plans.gold]
api = "500/minute"
[tiers]
keys = { "ent-key" = "enterprise" }
hook = "test_http_support:plan_hook"
hook_ttl = "60s"
"""
    )
    plan_hook_calls.clear()
    with serve(kind, text) as srv, srv.client() as client:
        r = client.get("/a", headers={"X-API-Key": "ent-key"})
        assert r.headers["X-RateLimit-Limit"] == "1000"
        for _ in range(3):
            r = client.get("/a", headers={"X-API-Key": "gold-1"})
        assert r.headers["X-RateLimit-Limit"] == "500"
        assert r.headers["X-RateLimit-Remaining"] == "497"
        assert plan_hook_calls == ["gold-1"]
        r = client.get("/a", headers={"X-API-Key": "plain"})
        assert r.headers["X-RateLimit-Limit"] == "100"
        srv.clock.advance(61)
        client.get("/a", headers={"X-API-Key": "gold-1"})
        assert plan_hook_calls == ["gold-1", "plain", "gold-1"]


def test_failing_tier_hook_falls_back_to_default_limits(kind: str) -> None:
    text = (
        MUSIQUE
        + """
[plans.gold]
api = "500/minute"
[tiers]
hook = "test_http_support:failing_hook"
"""
    )
    with serve(kind, text) as srv, srv.client() as client:
        r = client.get("/a", headers={"X-API-Key": "gold-1"})
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "100"


RADIO = """
body = "radio"
apply = ["stream"]
[identity]
source = "account"
anonymous = "reject"
accounts = { "key-a1" = "stream-a", "key-a2" = "stream-a", "key-b" = "stream-b" }
[limits.stream]
rates = "3/minute"
algorithm = "first_hit_window"
[[rules]]
routes = ["/v1/now-playing"]
methods = ["GET"]
cache_ttl = "15s"
"""


def test_keys_of_one_account_share_a_first_hit_window(kind: str) -> None:
    with serve(kind, RADIO) as srv, srv.client() as client:
        assert client.get("/v1/x", headers={"X-API-Key": "key-a1"}).status_code == 200
        srv.clock.advance(10)
        assert client.get("/v1/x", headers={"X-API-Key": "key-a2"}).status_code == 200
        assert client.get("/v1/x", headers={"X-API-Key": "key-a1"}).status_code == 200
        r = client.get("/v1/x", headers={"X-API-Key": "key-a2"})
        assert r.status_code == 429
        assert r.json() == {"message": "Rate limit exceeded (3 requests per minute)"}
        assert r.headers["Retry-After"] == "50"
        assert r.headers["X-RateLimit-Reset"] == str(math.ceil(START + 60))
        assert client.get("/v1/x", headers={"X-API-Key": "key-b"}).status_code == 200
        srv.clock.advance(50)
        assert client.get("/v1/x", headers={"X-API-Key": "key-a2"}).status_code == 200


def test_response_cache_serves_within_ttl_and_still_counts(kind: str) -> None:
    with serve(kind, RADIO) as srv, srv.client() as client:
        key = {"X-API-Key": "key-a1"}
        first = client.get("/v1/now-playing", headers=key)
        second = client.get("/v1/now-playing", headers=key)
        assert first.json() == second.json() == {"path": "/v1/now-playing", "count": 1}
        assert second.headers["X-Cache"] == "HIT"
        assert second.headers["X-RateLimit-Remaining"] == "1"
        assert srv.state.calls["/v1/now-playing"] == 1
        srv.clock.advance(15)
        third = client.get("/v1/now-playing", headers=key)
        assert third.json()["count"] == 2
        assert client.get("/v1/now-playing", headers=key).status_code == 429


BEATPASS = """
apply = ["global"]
[identity]
source = "api_key"
[limits.global]
rates = "5/minute"
[limits.media]
rates = "2/minute"
[limits.auth]
rates = "50/minute"
[[rules]]
routes = ["/api/v1/media/*", "/api/v1/tracks/{id}/stream"]
limits = ["media"]
[[rules]]
routes = ["/api/v1/upload"]
methods = ["POST"]
cost = 3
[[rules]]
routes = ["/api/v1/auth/*"]
limits = ["auth"]
[lockout]
failures = 3
window = "1 minute"
duration = "5 minutes"
scope = "ip"
routes = ["/api/v1/auth/*"]
"""


def test_most_restrictive_applies_and_rejection_charges_nothing(kind: str) -> None:
    with serve(kind, BEATPASS) as srv, srv.client() as client:
        key = {"X-API-Key": "bp"}
        r = client.get("/api/v1/tracks/7/stream", headers=key)
        assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "1")
        client.get("/api/v1/media/cover.jpg", headers=key)
        r = client.get("/api/v1/media/cover.jpg", headers=key)
        assert r.status_code == 429
        assert r.headers["X-RateLimit-Limit"] == "2"
        r = client.get("/api/v1/tracks", headers=key)
        assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("5", "2")
        assert r.text.startswith("{")


def test_per_route_cost(kind: str) -> None:
    with serve(kind, BEATPASS) as srv, srv.client() as client:
        key = {"X-API-Key": "bp"}
        r = client.post("/api/v1/upload", headers=key)
        assert r.headers["X-RateLimit-Remaining"] == "2"
        r = client.post("/api/v1/upload", headers=key)
        assert r.status_code == 429
        assert r.text.startswith("Rate limit exceeded: 5 requests per minute.")
        assert r.headers["Content-Type"].startswith("text/plain")
        assert client.get("/api/v1/upload", headers=key).headers["X-RateLimit-Remaining"] == "1"


def test_auth_lockout_after_failed_attempts(kind: str) -> None:
    with serve(kind, BEATPASS) as srv, srv.client() as client:
        for _ in range(3):
            assert client.post("/api/v1/auth/login?status=401").status_code == 401
        r = client.post("/api/v1/auth/login")
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "300"
        assert "failed authentication" in r.text
        assert srv.state.calls["/api/v1/auth/login"] == 3
        assert client.get("/api/v1/tracks").status_code == 200
        srv.clock.advance(300)
        assert client.post("/api/v1/auth/login").status_code == 200


def test_failures_outside_lockout_routes_do_not_count(kind: str) -> None:
    with serve(kind, BEATPASS.replace('"5/minute"', '"50/minute"')) as srv, srv.client() as c:
        for _ in range(4):
            assert c.get("/api/v1/tracks?status=403").status_code == 403
        assert c.post("/api/v1/auth/login").status_code == 200
        assert srv.enforcer.in_flight("global") == 0


MUSICBRAINZ = """
apply = ["global", "per-ip", "per-ip-ua"]
zone_header = true
user_agent_required = true
[identity]
source = "ip"
trusted_proxies = ["127.0.0.1"]
[limits.global]
rates = "6/2s"
scope = "global"
status = 503
[limits.per-ip]
rates = "3/2s"
scope = "ip"
status = 503
[limits.per-ip-ua]
rates = "2/2s"
scope = "ip_ua"
status = 503
"""


def test_user_agent_required(kind: str) -> None:
    with serve(kind, MUSICBRAINZ) as srv, srv.client() as client:
        r = client.get("/ws/2/artist", headers={"User-Agent": ""})
        assert r.status_code == 403
        assert "User-Agent" in r.text
        r = raw_request(
            srv.url, b"GET /ws/2/artist HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert r.split(b" ", 2)[1] == b"403"


def test_zones_reported_and_global_zone_sheds_with_503(kind: str) -> None:
    with serve(kind, MUSICBRAINZ) as srv, srv.client() as client:
        srv.clock.set(1_700_000_000.0)

        def get(ip: str, ua: str) -> httpx.Response:
            return client.get("/ws", headers={"User-Agent": ua, "X-Forwarded-For": ip})

        r = get("10.0.0.1", "app/1")
        assert (r.status_code, r.headers["X-RateLimit-Zone"]) == (200, "per-ip-ua")
        get("10.0.0.1", "app/1")
        r = get("10.0.0.1", "app/1")
        assert (r.status_code, r.headers["X-RateLimit-Zone"]) == (503, "per-ip-ua")
        assert r.headers["Retry-After"] == "2"
        get("10.0.0.1", "other/2")
        r = get("10.0.0.1", "third/3")
        assert (r.status_code, r.headers["X-RateLimit-Zone"]) == (503, "per-ip")
        for n in range(2, 5):
            get(f"10.0.0.{n}", "app/1")
        r = get("10.0.0.9", "app/1")
        assert (r.status_code, r.headers["X-RateLimit-Zone"]) == (503, "global")
        srv.clock.advance(2)
        assert get("10.0.0.1", "app/1").status_code == 200


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(kind: str) -> None:
    text = MUSICBRAINZ.replace('["127.0.0.1"]', '["10.9.0.0/16"]')
    with serve(kind, text) as srv, srv.client() as client:
        codes = [
            client.get(
                "/ws", headers={"User-Agent": "a/1", "X-Forwarded-For": f"192.0.2.{n}"}
            ).status_code
            for n in range(3)
        ]
        assert codes == [200, 200, 503]


def test_forwarding_chain_and_garbage_hops_from_trusted_proxy(kind: str) -> None:
    with serve(kind, MUSICBRAINZ) as srv, srv.client() as client:
        ua = {"User-Agent": "a/1"}
        for n in range(3):
            r = client.get("/ws", headers={**ua, "X-Forwarded-For": f"2001:db8::{n}"})
            assert r.status_code == 200
        for value in (b"not-an-ip", b"300.1.1.1, ,", b"\xff" * 10, b"1.2.3.4" * 2000):
            r = raw_request(
                srv.url,
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUser-Agent: a/1\r\nX-Forwarded-For: "
                + value
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert r.split(b" ", 2)[1] in (b"200", b"503")
        assert (
            srv.enforcer.metrics.value(
                "ratekeeper_requests_total",
                {"rule": "default", "zone": "per-ip-ua", "outcome": "rejected"},
            )
            >= 1
        )


def test_in_flight_load_shedder(kind: str) -> None:
    text = """
apply = ["busy"]
zone_header = true
[limits.busy]
in_flight = 1
scope = "global"
"""
    with serve(kind, text) as srv, srv.client() as client:
        holder: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: holder.append(client.get("/slow")))
        thread.start()
        assert srv.state.entered.wait(5)
        r = client.get("/fast")
        assert r.status_code == 503
        assert (r.headers["Retry-After"], r.headers["X-RateLimit-Zone"]) == ("1", "busy")
        srv.state.gate.set()
        thread.join(5)
        assert holder[0].status_code == 200
        # A WSGI server closes the body (which releases the slot) just after sending it.
        deadline = time.monotonic() + 5
        while srv.enforcer.in_flight("busy") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert srv.enforcer.in_flight("busy") == 0
        assert client.get("/fast").status_code == 200


SHADOW = """
apply = ["api"]
shadow = true
[limits.api]
rates = "1/minute"
"""


def test_policy_wide_shadow_counts_but_never_rejects(kind: str) -> None:
    with serve(kind, SHADOW) as srv, srv.client() as client:
        assert [client.get("/a").status_code for _ in range(3)] == [200, 200, 200]
        labels = {"rule": "default", "zone": "api", "outcome": "shadow_rejected"}
        assert srv.enforcer.metrics.value("ratekeeper_requests_total", labels) == 2
        metrics = client.get("/metrics")
        assert 'outcome="shadow_rejected"' in metrics.text


def test_shadow_rule_beside_enforced_limits(kind: str) -> None:
    text = """
apply = ["api"]
[limits.api]
rates = "3/minute"
[limits.trial]
rates = "1/minute"
[[rules]]
routes = ["/search"]
limits = ["trial"]
shadow = true
"""
    with serve(kind, text) as srv, srv.client() as client:
        codes = [client.get("/search").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        labels = {"rule": "/search", "zone": "trial", "outcome": "shadow_rejected"}
        assert srv.enforcer.metrics.value("ratekeeper_requests_total", labels) == 3


def test_ietf_fields_and_problem_body(kind: str) -> None:
    text = """
apply = ["api"]
ietf_headers = true
body = "problem"
[limits.api]
rates = "1/minute; 10/hour"
"""
    with serve(kind, text) as srv, srv.client() as client:
        srv.clock.set(1_699_999_210.0)  # 50 s before a minute ends, 3590 s before an hour ends
        r = client.get("/a")
        assert r.headers["RateLimit-Policy"] == '"api.minute";q=1;w=60, "api.hour";q=10;w=3600'
        assert r.headers["RateLimit"] == '"api.minute";r=0;t=50, "api.hour";r=9;t=3590'
        r = client.get("/a")
        assert r.status_code == 429
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["violated-policies"] == ["api.minute"]


def test_ietf_partition_key_is_a_digest_per_partition(kind: str) -> None:
    text = """
apply = ["api", "everyone"]
ietf_headers = true
ietf_partition_key = true
[identity]
source = "api_key"
[limits.api]
rates = "10/minute"
[limits.everyone]
rates = "1000/minute"
scope = "global"
"""
    with serve(kind, text) as srv, srv.client() as client:

        def partitions(key: str) -> dict[str, bytes]:
            r = client.get("/a", headers={"X-API-Key": key})
            field = http_sfv.List()
            field.parse(r.headers["RateLimit"].encode())
            assert [i.value for i in field] == ["api", "everyone"]
            assert key not in r.headers["RateLimit"]
            return {i.value: i.params["pk"] for i in field}

        first = partitions("sk_live_alice")
        assert partitions("sk_live_alice") == first
        other = partitions("sk_live_bob")
        assert len(first["api"]) == 12
        assert first["api"] != other["api"]
        assert first["everyone"] == other["everyone"]
        # The client side still reads the field, the pk parameter beside r and t.
        r = client.get("/a", headers={"X-API-Key": "sk_live_alice"})
        assert [n for n, _, _ in parse_ietf_ratelimit(r.headers["RateLimit"])] == [
            "api",
            "everyone",
        ]


def test_metrics_endpoint_reports_requests_and_store_latency(kind: str, tmp_path: Path) -> None:
    # A store outside the process: the memory store's calls are not timed.
    store = f"sqlite:///{tmp_path / 'metrics.db'}"
    policy = MUSIQUE.replace("100/minute", "1/minute")
    with serve(kind, policy, store=store) as srv, srv.client() as client:
        for _ in range(3):
            client.get("/a", headers={"X-API-Key": "k"})
        text = client.get("/metrics").text
        assert 'ratekeeper_requests_total{outcome="allowed",rule="default",zone="api"} 1.0' in text
        assert 'ratekeeper_requests_total{outcome="rejected",rule="default",zone="api"} 2.0' in text
        # The second refusal came from the over-limit cache, without a store call.
        assert "ratekeeper_store_seconds_count 2.0" in text
        assert "ratekeeper_fallback_active 0.0" in text


def test_odd_and_huge_keys_never_cause_a_500(kind: str) -> None:
    with serve(kind, MUSIQUE) as srv, srv.client() as client:
        huge = "k" * 16_000
        assert client.get("/a", headers={"X-API-Key": huge}).status_code == 200
        r = raw_request(
            srv.url,
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-API-Key: \xff\xfe\x01key\tz\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert r.split(b" ", 2)[1] in (b"200", b"400")
        r = raw_request(
            srv.url,
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-API-Key: a\r\nX-API-Key: b\r\n"
            b"Connection: close\r\n\r\n",
        )
        # Two keys are ambiguous (which would the app read?): refused, never a fresh budget.
        assert r.split(b" ", 2)[1] == b"400"
        assert b"X-API-Key was sent more than once" in r
        r = raw_request(
            srv.url,
            b"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n",
        )
        assert r.split(b" ", 2)[1] == b"401"
        for key in srv.enforcer.store._tables.values():
            assert all(huge not in k and "\xff" not in k for k in key.entries)


def test_callable_identity(kind: str) -> None:
    text = """
apply = ["user"]
[identity]
source = "callable"
callable = "test_http_support:user_from_header"
anonymous = "reject"
[limits.user]
rates = "1/minute"
"""
    with serve(kind, text) as srv, srv.client() as client:
        assert client.get("/a", headers={"X-User": "alice"}).status_code == 200
        assert client.get("/a", headers={"X-User": "alice"}).status_code == 429
        assert client.get("/a", headers={"X-User": "bob"}).status_code == 200
        assert client.get("/a").status_code == 401


def test_template_body(kind: str) -> None:
    text = """
apply = ["api"]
body = "template"
body_template = '{{"limited": true, "wait": {retry_after}, "zone": "{zone}"}}'
[limits.api]
rates = "1/minute"
"""
    with serve(kind, text) as srv, srv.client() as client:
        srv.clock.set(1_699_999_210.0)
        client.get("/a")
        r = client.get("/a")
        assert r.status_code == 429
        assert json.loads(r.text) == {"limited": True, "wait": 50, "zone": "api"}


def test_template_body_shapes_the_other_refusals_too(kind: str) -> None:
    # A missing key is not a quota: its code and message fill the template, the numbers no
    # limit stands behind read null, and the document stays JSON.
    text = """
apply = ["api"]
body = "template"
body_template = '{{"error": {{"code": "{code}", "message": "{message}", "wait": {retry_after}}}}}'
[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "reject"
[limits.api]
rates = "1/minute"
"""
    with serve(kind, text) as srv, srv.client() as client:
        r = client.get("/a")
        assert r.status_code == 401
        error = json.loads(r.text)["error"]
        assert error["code"] != "rate_limit_exceeded" and error["message"]
        assert error["wait"] is None
        client.get("/a", headers={"X-API-Key": "k1"})
        r = client.get("/a", headers={"X-API-Key": "k1"})
        assert r.status_code == 429
        assert json.loads(r.text)["error"]["code"] == "rate_limit_exceeded"
