"""The client paced by a provider's published policy file (ratekeeper's TOML format)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ratekeeper import Limiter, LimitSet, ManualClock
from ratekeeper.client import HostPolicy, RateLimitTransport
from ratekeeper.client.hints import NO_HINTS
from ratekeeper.client.pacing import HostPlan
from ratekeeper.client.state import HostState
from ratekeeper.errors import PolicyError
from ratekeeper.policy import loads_policy, preset_path
from servers import uvicorn_in_thread

T0 = 1_699_999_980.0  # a minute boundary


def charged(plan: HostPlan, method: str, path: str) -> dict[str, str] | None:
    """The limits a request is charged, by name, with their rates."""
    charge = plan.charge_for(method, path)
    if charge is None:
        return None
    return {s.name: "; ".join(str(limit.rate) for limit in s.limits) for s, _ in charge.items}


def test_preset_by_name_paces_by_its_limits() -> None:
    plan = HostPlan.build("api.test", HostPolicy.from_policy("musique"))
    assert plan.known
    assert charged(plan, "GET", "/api/tracks") == {"api": "100/minute; 1000/hour; 10000/day"}


def test_routes_pick_their_rule_methods_and_default() -> None:
    plan = HostPlan.build("api.test", HostPolicy.from_policy(preset_path("aisoule")))
    assert set(charged(plan, "GET", "/v1/messages/7") or {}) == {"messaging", "messaging-burst"}
    assert set(charged(plan, "POST", "/v1/media/upload") or {}) == {"media"}
    # The media rule covers POST and PUT only: a GET falls to the default limits.
    assert set(charged(plan, "GET", "/v1/media/upload") or {}) == {"standard"}
    assert set(charged(plan, "GET", "/v1/anything") or {}) == {"standard"}


def test_apply_limits_are_shared_by_every_route() -> None:
    plan = HostPlan.build("api.test", HostPolicy.from_policy("beatpass"))
    write = plan.charge_for("POST", "/api/v1/playlists")
    media = plan.charge_for("GET", "/api/v1/media/song.mp3")
    assert write is not None and media is not None
    assert {s.name for s, _ in write.items} == {"global", "write"}
    # One budget for the global limit whichever route spends it: same limit set, same key.
    assert write.items[0] == media.items[0]


def test_tier_exempt_shadow_and_cost() -> None:
    policy = loads_policy(
        """
        apply = ["api"]
        [limits.api]
        rates = "10/second"
        [limits.watched]
        rates = "5/second"
        shadow = true
        [plans.gold]
        api = "100/second"
        [[rules]]
        routes = ["/health"]
        exempt = true
        [[rules]]
        routes = ["/export"]
        limits = ["watched"]
        cost = 5
        """
    )
    plan = HostPlan.build("api.test", HostPolicy.from_policy(policy, tier="gold"))
    assert plan.charge_for("GET", "/health") is None
    export = plan.charge_for("GET", "/export")
    assert export is not None and export.cost == 5
    assert charged(plan, "GET", "/export") == {"api": "100/second"}


def test_each_route_is_paced_by_the_first_hit_windows_it_is_counted_in() -> None:
    policy = loads_policy(
        """
        default = ["reads"]
        [limits.reads]
        rates = "2/second"
        algorithm = "first_hit_window"
        [limits.writes]
        rates = "1/second"
        algorithm = "first_hit_window"
        [[rules]]
        routes = ["/write"]
        limits = ["writes"]
        [[rules]]
        routes = ["/health"]
        exempt = true
        """
    )
    plan = HostPlan.build("api.test", HostPolicy.from_policy(policy))
    assert plan.windows == ((2, 1.0, False), (1, 1.0, False))
    state = HostState(plan)
    read, write = plan.charge_for("GET", "/read"), plan.charge_for("POST", "/write")
    assert read is not None and write is not None
    for at in (T0, T0 + 0.01):
        state.on_answer(state.on_send(at, read), at + 0.1, 200, NO_HINTS)
    # Two reads answered by T0 + 0.11 fill the reads' window, measured from the first answer;
    # writes are not counted in it.
    assert state.wait_s(T0 + 0.2, read) == pytest.approx(0.901)
    assert state.wait_s(T0 + 0.2, write) == 0.0
    # An exempt route is paced by none of them.
    assert state.wait_s(T0 + 0.2, plan.charge_for("GET", "/health")) == 0.0


def test_bad_sources_and_settings_say_what_is_wrong() -> None:
    with pytest.raises(PolicyError, match="no preset named 'nope'"):
        HostPolicy.from_policy("nope")
    with pytest.raises(PolicyError, match="cannot read"):
        HostPolicy.from_policy("missing/policy.toml")
    with pytest.raises(ValueError, match="tier 'platinum' is not a plan"):
        HostPolicy.from_policy("musique", tier="platinum")
    policy = loads_policy('apply = ["api"]\n[limits.api]\nrates = "1/second"\n')
    with pytest.raises(ValueError, match="either limits or server_policy"):
        HostPolicy(limits="1/second", server_policy=policy)


def test_transport_from_preset_zero_429_at_the_theoretical_minimum() -> None:
    clock = ManualClock(T0)
    server_limits = LimitSet("server", "100/minute; 1000/hour; 10000/day")
    limiter = Limiter(clock=clock)
    statuses: list[int] = []

    def musique(request: httpx.Request) -> httpx.Response:
        decision = limiter.hit(server_limits, "key")
        statuses.append(200 if decision.allowed else 429)
        return httpx.Response(statuses[-1])

    transport = RateLimitTransport.from_policy(
        "musique",
        host="api.test",
        transport=httpx.MockTransport(musique),
        clock=clock,
        sleep=clock.advance,
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(250):
            client.get("http://api.test/api/tracks")
    assert statuses.count(429) == 0
    # 250 requests at 100 per aligned minute: the last goes as the third minute opens.
    assert clock() - T0 == pytest.approx(120.0)


def test_first_hit_windows_of_a_policy_file_are_measured_from_the_answers() -> None:
    """A first-hit window starts when the server counts the first request, which may be well
    after the client decided to send it (here the first request takes 0.3 s to be counted, as
    a slow connection set-up would): a window kept on the client's clock, stretched by
    ``margin_s``, would send the next window's first request before the server's ends."""
    window = {"start": -1.0, "count": 0, "slow": 1}
    statuses: list[int] = []

    async def limited(request: Request) -> Response:
        if window["slow"]:
            window["slow"] = 0
            await asyncio.sleep(0.3)
        now = time.monotonic()
        if now >= window["start"] + 1.0:
            window["start"], window["count"] = now, 0
        allowed = window["count"] < 3
        window["count"] += allowed
        statuses.append(200 if allowed else 429)
        return Response(status_code=statuses[-1])

    policy = loads_policy(
        """
        apply = ["api"]
        [limits.api]
        rates = "3/second"
        algorithm = "first_hit_window"
        """
    )
    app = Starlette(routes=[Route("/x", limited)])
    with uvicorn_in_thread(app) as base:
        transport = RateLimitTransport.from_policy(policy, host="127.0.0.1")
        with httpx.Client(transport=transport) as client:
            for _ in range(7):
                assert client.get(f"{base}/x").status_code == 200
    assert statuses.count(429) == 0
