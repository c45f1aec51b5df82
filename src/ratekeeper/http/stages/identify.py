"""Who asks: the User-Agent requirement, the caller's identity and exempt addresses.

``user_agent`` refuses a request without the User-Agent the policy requires (403), before any
work; ``identify`` finds the caller (401 when the policy needs a key and none came) and lets
callers from the policy's exempt networks through unlimited.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from ratekeeper.http.flow import PASS, Context, Kit, Stage, Ticket

__all__ = ["identify", "user_agent"]


def user_agent(kit: Kit) -> Stage | None:
    """Refuse requests without a User-Agent when the policy requires one."""
    if not kit.plan.policy.user_agent_required:
        return None
    answers = kit.answers

    def stage(ctx: Context) -> Ticket | None:
        if not ctx.view.headers.get("user-agent", "").strip():
            return answers.error(
                403,
                "user_agent_required",
                "A User-Agent header naming your application and a contact is required.",
            )
        return None

    return stage


def identify(kit: Kit) -> Stage:
    """Find the caller; refuse one without the key the policy needs; pass exempt addresses."""
    plan = kit.plan
    find = plan.identifier.identify
    exempt = plan.exempt_networks
    metrics, answers = kit.metrics, kit.answers
    key_names = " or ".join(
        "Authorization: Bearer" if h == "authorization" else h for h in plan.identifier.key_headers
    )

    def stage(ctx: Context) -> Ticket | None:
        caller = find(ctx.view)
        if caller is None:
            metrics.count(ctx.matched.name, "", "refused")
            return answers.error(
                401,
                "missing_api_key",
                f"An API key is required ({key_names}).",
                [("WWW-Authenticate", "Bearer")],
            )
        if exempt and in_networks(caller.ip, exempt):
            return PASS
        ctx.caller = ctx.ticket.caller = caller
        return None

    return stage


def in_networks(ip: str, networks: Sequence[Any]) -> bool:
    """Whether the address ``ip`` lies in one of ``networks`` (never for a malformed one)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
