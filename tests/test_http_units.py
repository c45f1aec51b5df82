"""The pure steps on their own: route matching, identity, headers, bodies, store failures."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
from typing import Any

import pytest

from ratekeeper import Limit, LimitSet, ManualClock, MemoryStore
from ratekeeper.errors import PolicyError, StoreError
from ratekeeper.http.asgi import RateLimitMiddleware
from ratekeeper.http.bodies import BodyFormat
from ratekeeper.http.compiled import compile_rule
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.headers import PartitionKeys
from ratekeeper.http.identity import RequestView, client_ip
from ratekeeper.http.metrics import metrics_asgi_app
from ratekeeper.limiter import Limiter
from ratekeeper.policy import loads_policy
from ratekeeper.routes import RouteTable


def test_first_written_rule_wins_and_patterns_match_segments() -> None:
    table = RouteTable(
        [
            (["/v1/media/*"], None, "media"),
            (["/v1/shows/{id}"], frozenset({"GET"}), "show"),
            (["/v1/shows/new"], None, "new"),
            (["/v1/*"], frozenset({"POST"}), "write"),
        ],
        "default",
    )
    assert table.match("GET", "/v1/media") == "media"
    assert table.match("GET", "/v1/media/a/b/c.jpg") == "media"
    assert table.match("GET", "/v1/shows/7") == "show"
    assert table.match("GET", "/v1/shows/new") == "show"
    assert table.match("POST", "/v1/shows/new") == "new"
    assert table.match("POST", "/v1/shows/7") == "write"
    assert table.match("GET", "/v1/shows/7/episodes") == "default"
    assert table.match("GET", "/other") == "default"
    assert table.match("GET", "//v1//media//") == "media"


def test_client_ip_walks_the_chain_from_the_right() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = {"x-forwarded-for": "203.0.113.9, 198.51.100.2, 10.0.0.5"}
    assert client_ip("10.0.0.1", headers, trusted) == "198.51.100.2"
    assert client_ip("192.0.2.1", headers, trusted) == "192.0.2.1"
    assert client_ip("10.0.0.1", {"x-forwarded-for": "junk, 10.0.0.2"}, trusted) == "10.0.0.2"
    forwarded = {"forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8::1]:80"'}
    assert client_ip("10.0.0.1", forwarded, trusted, "forwarded") == "2001:db8::1"
    # One header is believed: Forwarded beside X-Forwarded-For is not read unless named.
    both = {**headers, **forwarded}
    assert client_ip("10.0.0.1", both, trusted) == "198.51.100.2"
    assert client_ip("10.0.0.1", forwarded, trusted) == "10.0.0.1"
    assert client_ip("10.0.0.1", {"x-real-ip": "192.0.2.7"}, trusted, "x-real-ip") == "192.0.2.7"
    assert client_ip(None, headers, trusted) == "unknown"


AISOULE = """
body = "aisoule"
apply = ["api"]
[identity]
source = "api_key"
[limits.api]
rates = "2/second"
algorithm = "gcra"
burst = 2
"""


def view(headers: dict[str, str] | None = None, path: str = "/v1/x") -> RequestView:
    return RequestView("GET", path, headers or {}, "127.0.0.1")


def test_aisoule_body_and_gcra_retry_after() -> None:
    clock = ManualClock(1_700_000_000.0)
    enforcer = Enforcer(loads_policy(AISOULE), clock=clock)
    key = {"authorization": "Bearer sk"}
    assert enforcer.admit(view(key)).answer is None
    assert enforcer.admit(view(key)).answer is None
    answer = enforcer.admit(view(key)).answer
    assert answer is not None
    assert answer.status == 429
    assert json.loads(answer.body) == {
        "success": False,
        "error": {
            "code": "rate_limit_exceeded",
            "message": "Too many requests. Please wait before retrying.",
            "retry_after_seconds": 1,
        },
    }
    assert ("Retry-After", "1") in answer.headers


def test_cost_above_the_limit_is_refused_without_retry_after() -> None:
    # A policy file with such a rule is refused when loaded; a rule built in code is answered.
    text = AISOULE + "[[rules]]\nroutes = ['/big']\ncost = 5\n"
    with pytest.raises(PolicyError, match=r"rules\[0\]\.cost: expected a cost up to 2"):
        loads_policy(text)
    policy = loads_policy(AISOULE)
    enforcer = Enforcer(policy, clock=ManualClock())
    big = compile_rule(policy, "big", [], cost=5, cache_ttl_s=0.0, shadow_rule=False)
    answer = enforcer.admit(view({"authorization": "Bearer sk"}, "/big"), big).answer
    assert answer is not None
    assert answer.status == 429
    assert not any(name == "Retry-After" for name, _ in answer.headers)


class BrokenStore:
    """A store whose backend is down."""

    def decide(self, items: Any, cost: int, now: float, *, peek: bool = False) -> Any:
        raise StoreError("connection refused to redis://***@db:6379")

    def reset(self, items: Any) -> None:
        raise StoreError("down")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("allow", None),
        ("reject", 503),
        ("memory", None),
        ("fail_open", None),
        ("fail-closed", 503),
        ("fallback", None),
    ],
)
def test_store_failure_modes(mode: str, status: int | None) -> None:
    text = f'on_store_error = "{mode}"\n' + AISOULE
    enforcer = Enforcer(loads_policy(text), store=BrokenStore(), clock=ManualClock())
    ticket = enforcer.admit(view({"authorization": "Bearer sk"}))
    assert (ticket.answer.status if ticket.answer else None) == status
    assert enforcer.metrics.value("ratekeeper_store_errors_total") == 1
    assert enforcer.metrics.value("ratekeeper_store_outages_total") == 1
    assert enforcer.metrics.value("ratekeeper_fallback_active") == 1
    if status is None and mode not in ("memory", "fallback"):
        assert ticket.headers == []  # failing open: no invented counts
    if mode in ("memory", "fallback"):
        assert ticket.headers[0] == ("X-RateLimit-Limit", "2")
        enforcer.admit(view({"authorization": "Bearer sk"}))
        third = enforcer.admit(view({"authorization": "Bearer sk"}))
        assert third.answer is not None and third.answer.status == 429


def test_unexpected_store_exceptions_count_as_store_failures() -> None:
    class Wrong(MemoryStore):
        def decide(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeError("bug")

    enforcer = Enforcer(loads_policy(AISOULE), store=Wrong(), clock=ManualClock())
    ticket = enforcer.admit(view({"authorization": "Bearer sk"}))
    assert ticket.answer is None
    assert enforcer.metrics.value("ratekeeper_store_errors_total") == 1


def test_shared_store_instance_with_other_limiters() -> None:
    store = MemoryStore()
    clock = ManualClock()
    enforcer = Enforcer(loads_policy(AISOULE), store=store, clock=clock)
    enforcer.admit(view({"authorization": "Bearer sk"}))
    assert len(store) == 1
    other = Limiter(store, clock=clock).hit(LimitSet("x", Limit.parse("1/s")), "k")
    assert other.allowed


def test_metrics_can_be_turned_off() -> None:
    enforcer = Enforcer(loads_policy("metrics = false\n" + AISOULE), clock=ManualClock())
    enforcer.admit(view({"authorization": "Bearer sk"}))
    assert enforcer.metrics.exposition() == b""
    with pytest.raises(RuntimeError, match="metrics are off"):
        metrics_asgi_app(enforcer.metrics)


def test_rewritten_client_address_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = RateLimitMiddleware(app, loads_policy(AISOULE.replace("api_key", "ip")))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-for", b"203.0.113.7")],
        "client": ("203.0.113.7", 1234),
    }

    async def noop(message: Any = None) -> Any:
        return {"type": "http.request"}

    with caplog.at_level(logging.WARNING, "ratekeeper.http"):
        for _ in range(2):
            asyncio.run(middleware(dict(scope), noop, noop))
    warnings = [r for r in caplog.records if "proxy_headers" in r.getMessage()]
    assert len(warnings) == 1


def test_partition_keys_are_keyed_digests_as_byte_sequences() -> None:
    plain, keyed, other = PartitionKeys(), PartitionKeys("s3cret"), PartitionKeys("other")
    value = plain("ip:203.0.113.7")
    assert value.startswith(";pk=:") and value.endswith(":")
    digest = base64.b64decode(value[5:-1], validate=True)
    assert len(digest) == 12
    assert "203.0.113.7" not in value
    assert plain("ip:203.0.113.7") == value
    assert keyed("ip:203.0.113.7") not in (value, other("ip:203.0.113.7"))
    assert "s3cret" not in repr(keyed)


def test_plain_bodies_say_one_second_not_one_seconds() -> None:
    store, clock = MemoryStore(), ManualClock(1_000.0)
    limits = LimitSet("zone", [Limit.parse("1/2s")])
    store.decide(((limits, "k"),), 1, clock())
    refused = store.decide(((limits, "k"),), 1, clock())
    assert not refused.allowed
    one, _ = BodyFormat("plain").rejection(refused, 503, 1)
    two, _ = BodyFormat("plain").rejection(refused, 503, 2)
    assert one.endswith(b"Retry after 1 second.\n")
    assert two.endswith(b"Retry after 2 seconds.\n")
