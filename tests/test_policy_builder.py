"""A policy written in Python is the policy the same TOML file gives, with the same errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ratekeeper import PolicyBuilder, PolicyError, RequestView, compile_policy, loads_policy

TOML = """
store = "sqlite:///rk.db"
body = "problem"
apply = ["api"]
[identity]
source = "api_key"
anonymous = "reject"
callable = "{module}:tenant_of"
[limits.api]
rates = "100/minute; 1000/hour"
[limits.media]
rates = "10/minute"
algorithm = "gcra"
burst = 3
[[rules]]
routes = ["/v1/media/*"]
methods = ["POST"]
limits = ["media"]
cost = 2
[[rules]]
routes = ["/healthz"]
exempt = true
[plans.gold]
api = "1000/minute"
[tiers]
keys = { "k-gold" = "gold" }
[lockout]
failures = 5
window = "15 minutes"
duration = "1h"
"""


def tenant_of(view: RequestView) -> str:
    return view.headers.get("x-tenant", "anonymous")


def test_the_builder_gives_the_policy_of_the_same_file() -> None:
    built = (
        PolicyBuilder(store="sqlite:///rk.db", body="problem")
        .identity("api_key", anonymous="reject", callable=tenant_of)
        .limit("api", "100/minute; 1000/hour")
        .limit("media", "10/minute", algorithm="gcra", burst=3)
        .apply("api")
        .rule("/v1/media/*", methods=["POST"], limits=["media"], cost=2)
        .exempt("/healthz")
        .plan("gold", api="1000/minute")
        .tiers(keys={"k-gold": "gold"})
        .lockout(5, window="15 minutes", duration="1h")
        .build()
    )
    from_file = loads_policy(TOML.replace("{module}", __name__), "<PolicyBuilder>")
    assert built == from_file
    assert compile_policy(built).routes.match("POST", "/v1/media/x").cost == 2


def test_a_rate_in_place_of_a_name() -> None:
    policy = PolicyBuilder().apply("1000/hour").rule("/search", limits=["5/minute"]).build()
    assert set(policy.limits) == {"apply 1000/hour", "/search 5/minute"}


def test_errors_are_a_files_errors() -> None:
    builder = PolicyBuilder(source="app.py").limit("api", "100/fortnight").apply("api")
    with pytest.raises(PolicyError, match=r"app\.py: limits\.api\.rates: expected a valid limit"):
        builder.build()
    with pytest.raises(PolicyError, match=r"rules\[0\]\.limits: expected names of \[limits\]"):
        PolicyBuilder().limit("api", "1/s").rule("/a", limits=["apx"]).build()
    with pytest.raises(PolicyError, match=r"identity\.callable: expected a function importable"):
        PolicyBuilder().identity("callable", callable=lambda view: "x")


def test_a_policy_built_in_code_is_still_a_value() -> None:
    one = PolicyBuilder().limit("api", "1/s").apply("api").build()
    assert replace(one, store="memory://") == one
    assert "api" in repr(PolicyBuilder().limit("api", "1/s"))


def test_the_seed_options_are_a_files_options() -> None:
    built = (
        PolicyBuilder(user_agent_contact=["email", "url"], headers_limit="global")
        .limit("global", "800/2s", scope="global")
        .limit("batch", "100/minute")
        .apply("global")
        .rule("/batch", limits=["batch"], headers_limit="batch", cost_header="X-Items", max_cost=50)
        .build()
    )
    from_file = loads_policy(
        """
user_agent_contact = ["email", "url"]
headers_limit = "global"
apply = ["global"]
[limits.global]
rates = "800/2s"
scope = "global"
[limits.batch]
rates = "100/minute"
[[rules]]
routes = ["/batch"]
limits = ["batch"]
headers_limit = "batch"
cost_header = "X-Items"
max_cost = 50
""",
        "<PolicyBuilder>",
    )
    assert built == from_file
    with pytest.raises(PolicyError, match=r"rules\[0\]\.max_cost"):
        PolicyBuilder().limit("a", "100/minute").rule("/b", limits=["a"], max_cost=5).build()
