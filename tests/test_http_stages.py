"""Admission as a list of stages: adding one (as the operator plane and framework integrations
do) without touching the built-in ones, through real servers (uvicorn and wsgiref)."""

from __future__ import annotations

import threading
import time

import pytest

from ratekeeper import LimitSet
from ratekeeper.errors import PolicyError
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Context, Kit, Stage, StageFlow, Ticket, charge
from ratekeeper.policy import loads_policy
from test_http_support import KINDS, raw_request, serve

POLICY = """
body = "musique"
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "5/minute"
"""

BLOCKED = {"sk-blocked"}


def blocklist(kit: Kit) -> Stage:
    """An operator-plane stage: refuse blocked keys in the policy's own body format."""

    def stage(ctx: Context) -> Ticket | None:
        if ctx.view.headers.get("authorization", "").removeprefix("Bearer ") in BLOCKED:
            kit.metrics.count(ctx.matched.name, "blocklist", "refused")
            return kit.answers.error(403, "key_blocked", "This API key is blocked.")
        return None

    return stage


AUDIT = LimitSet("audit", "1000/minute")


def audit(kit: Kit) -> Stage:
    """A stage that uses the store: charges a limit of its own and reports it in a header."""

    def stage(ctx: Context) -> StageFlow:
        decision = yield charge(((AUDIT, ctx.identified.keys["caller"]),), 1)
        ctx.ticket.headers.append(("X-Audit-Remaining", str(decision.remaining)))
        return None

    return stage


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_an_added_stage_refuses_before_anything_is_charged(kind: str) -> None:
    with serve(kind, POLICY) as srv, srv.client() as client:
        srv.enforcer.add_stage("blocklist", blocklist, after="identify")
        names = [n for n, _ in srv.enforcer.stages]
        assert names.index("blocklist") == names.index("identify") + 1
        blocked = {"Authorization": "Bearer sk-blocked"}
        for _ in range(7):
            r = client.get("/v1/x", headers=blocked)
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "key_blocked"
            assert "X-RateLimit-Remaining" not in r.headers
        assert srv.state.calls == {}
        ok = client.get("/v1/x", headers={"Authorization": "Bearer sk-fine"})
        assert (ok.status_code, ok.headers["X-RateLimit-Remaining"]) == (200, "4")
        # Anonymous callers are still refused by identify, which runs first.
        assert client.get("/v1/x").status_code == 401


def test_a_stage_that_uses_the_store_runs_on_both_drivers(kind: str) -> None:
    with serve(kind, POLICY) as srv, srv.client() as client:
        srv.enforcer.add_stage("audit", audit, before="decide")
        key = {"Authorization": "Bearer sk-a"}
        seen = [client.get("/v1/x", headers=key).headers["X-Audit-Remaining"] for _ in range(3)]
        assert seen == ["999", "998", "997"]


def test_a_refusal_after_the_in_flight_stage_gives_the_slot_back(kind: str) -> None:
    text = POLICY.replace('apply = ["api"]', 'apply = ["api", "busy"]')
    text += '[limits.busy]\nin_flight = 1\nscope = "global"\n'
    with serve(kind, text) as srv, srv.client() as client:
        srv.enforcer.add_stage("blocklist", blocklist, after="in_flight")
        blocked = {"Authorization": "Bearer sk-blocked"}
        assert client.get("/v1/x", headers=blocked).status_code == 403
        assert srv.enforcer.in_flight("busy") == 0
        # The one slot is free: a slow request holds it, a second one is shed.
        slow = threading.Thread(
            target=lambda: client.get("/slow", headers={"Authorization": "Bearer sk-a"})
        )
        slow.start()
        assert srv.state.entered.wait(5)
        shed = client.get("/v1/x", headers={"Authorization": "Bearer sk-b"})
        assert shed.status_code == 503
        srv.state.gate.set()
        slow.join(5)
        deadline = time.monotonic() + 5
        while srv.enforcer.in_flight("busy") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.enforcer.in_flight("busy") == 0


def test_adding_next_to_an_unknown_stage_names_the_known_ones() -> None:
    enforcer = Enforcer(loads_policy(POLICY))
    with pytest.raises(PolicyError, match=r"no stage 'decid'.*user_agent, route, identify"):
        enforcer.add_stage("blocklist", blocklist, before="decid")
    with pytest.raises(PolicyError, match=r"stage 'route': there is one of that name already"):
        enforcer.add_stage("route", blocklist)


RADIO = """
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
[limits.api]
rates = "60/minute"
[[rules]]
routes = ["/v1/now-playing"]
methods = ["GET"]
cache_ttl = "15s"
"""


def test_a_cached_answer_carries_one_content_length(kind: str) -> None:
    with serve(kind, RADIO) as srv:
        request = (
            b"GET /v1/now-playing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
            b"Connection: close\r\n\r\n"
        )
        first = raw_request(srv.url, request)
        second = raw_request(srv.url, request)
        head, _, body = second.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert b"x-cache: hit" in lines
        lengths = [line for line in lines if line.startswith(b"content-length:")]
        assert lengths == [b"content-length: %d" % len(body)]
        assert body == first.partition(b"\r\n\r\n")[2]
        assert srv.state.calls == {"/v1/now-playing": 1}
