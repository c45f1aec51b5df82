"""The client paced by a provider's published policy file (ratekeeper's TOML format)."""

from __future__ import annotations

import httpx
import pytest

from ratekeeper import Limiter, LimitSet, ManualClock
from ratekeeper.client import HostPolicy, RateLimitTransport
from ratekeeper.client.pacing import HostPlan
from ratekeeper.errors import PolicyError
from ratekeeper.policy import loads_policy, preset_path

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
