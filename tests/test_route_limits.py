"""Limits written in code (http/route_limits.py) without a framework: one decision with the
policy's limits, keys and costs from the request, and what a bad declaration is told."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ratekeeper import Enforcer, ManualClock, PolicyBuilder, PolicyError, RequestView
from ratekeeper.http.route_limits import RouteGuard, RouteLimits, combine, together


def enforcer() -> Enforcer:
    policy = PolicyBuilder().limit("api", "100/minute").apply("api").exempt("/open").build()
    return Enforcer(policy, clock=ManualClock(1_699_999_980.0))


def view(request: Any = None, path: str = "/items") -> RequestView:
    return RequestView("GET", path, {}, "10.0.0.1", request=request)


def test_the_policy_and_the_route_are_charged_in_one_decision() -> None:
    keeper = enforcer()
    guard = RouteGuard(keeper, "items", RouteLimits(("5/minute",)))
    ticket = keeper.admit(view(), guard.rule("GET", "/items"))
    assert dict(ticket.headers)["X-RateLimit-Limit"] == "5"
    assert keeper.admit(view()).headers[1] == ("X-RateLimit-Remaining", "98")


def test_key_and_cost_functions_get_the_request() -> None:
    keeper = enforcer()
    spec = RouteLimits(("10/minute",), key=lambda r: r["user"], cost=lambda r: r["n"])
    rule = RouteGuard(keeper, "batch", spec).rule("GET", "/items")
    assert keeper.admit(view({"user": "a", "n": 7}), rule).answer is None
    assert keeper.admit(view({"user": "a", "n": 4}), rule).answer is not None  # 7 + 4 > 10
    assert keeper.admit(view({"user": "b", "n": 4}), rule).answer is None
    # Whatever a key function returns is a key, never a secret in the store: long ones hashed.
    assert keeper.admit(view({"user": "x" * 500, "n": 1}), rule).answer is None


def test_a_cost_function_returning_nonsense_is_named() -> None:
    keeper = enforcer()
    rule = RouteGuard(keeper, "bad", RouteLimits(("10/minute",), cost=lambda r: 0)).rule(
        "GET", "/items"
    )
    with pytest.raises(PolicyError, match=r"cost function .*expected a whole number >= 1, got 0"):
        keeper.admit(view({}), rule)


def test_declarations_that_cannot_work_fail_where_they_are_written() -> None:
    with pytest.raises(PolicyError, match=r"limits: expected names or rate strings"):
        RouteLimits("5/minute")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"cost: expected a whole number >= 1 or a function"):
        RouteLimits(("5/minute",), cost=0)
    with pytest.raises(PolicyError, match=r"limit 'nope' of 'x': expected one of the policy"):
        RouteGuard(enforcer(), "x", RouteLimits(("nope",)))


def test_exemption_and_several_declarations() -> None:
    keeper = enforcer()
    exempt = RouteGuard(keeper, "free", RouteLimits(exempt=True)).rule("GET", "/items")
    assert keeper.admit(view(), exempt).headers == []
    assert combine([RouteLimits(("1/s",)), RouteLimits(exempt=True)]) == RouteLimits(exempt=True)
    assert combine([None, RouteLimits(("1/s",)), RouteLimits(("2/s",))]) == RouteLimits(
        ("1/s", "2/s")
    )
    one = RouteGuard(keeper, "a", RouteLimits(("3/minute",))).rule("GET", "/items")
    two = RouteGuard(keeper, "b", RouteLimits(("2/minute",))).rule("GET", "/items")
    both = together([one, two])
    assert {ls.name for ls, _ in both.enforced} == {"api", "a 3/minute", "b 2/minute"}
    # A route limited in code under a policy-exempt path is charged its own limits only.
    own = RouteGuard(keeper, "o", RouteLimits(("1/minute",))).rule("GET", "/open")
    assert [ls.name for ls, _ in own.enforced] == ["o 1/minute"]
    assert replace(view(), request=None) == view()
