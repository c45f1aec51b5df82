"""Who asks: the User-Agent requirement, the caller's identity and exempt addresses.

``user_agent`` refuses a request without the User-Agent the policy requires (403), before any
work; ``identify`` finds the caller (400 when its API key is ambiguous, a key header sent twice or
two naming different keys; 401 when the policy needs a key and none came) and lets
callers from the policy's exempt networks through unlimited.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from ratekeeper.http.flow import PASS, Context, Kit, Stage, Ticket, repeatable

__all__ = ["identify", "user_agent"]

# What counts as a way to reach a User-Agent's owner: an address with a dot in its domain, or
# an http(s) URL with a host.
_CONTACTS = {
    # Anchored at the "@" (a look-behind for the local part): a pattern starting with the
    # local part would rescan a long User-Agent from every position, quadratic in its length.
    "email": re.compile(r"(?<=[^\s@()<>;,])@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "url": re.compile(r"\bhttps?://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.I),
}
_AGENT_SCAN = 512
_CONTACT_WORDS = {"email": "an e-mail address", "url": "a URL"}
_CONTACT_EXAMPLES = {"email": "me@example.com", "url": "https://example.com/myapp"}


def user_agent(kit: Kit) -> Stage | None:
    """Refuse requests without the User-Agent the policy requires (one naming a contact, when
    ``user_agent_contact`` says which kinds count)."""
    policy = kit.plan.policy
    kinds = policy.user_agent_contact
    if not (policy.user_agent_required or kinds):
        return None
    answers = kit.answers
    patterns = [_CONTACTS[kind] for kind in kinds]
    if kinds:
        spelled = " or ".join(_CONTACT_WORDS[kind] for kind in kinds)
        message = (
            f"A User-Agent naming your application and {spelled} to contact you is required, "
            f"such as 'MyApp/1.2 ( {_CONTACT_EXAMPLES[kinds[0]]} )'."
        )
    else:
        message = "A User-Agent header naming your application and a contact is required."

    def stage(ctx: Context) -> Ticket | None:
        # A contact sits near the start of a real User-Agent; looking no further bounds the
        # work a long header can cause.
        agent = ctx.view.headers.get("user-agent", "")[:_AGENT_SCAN].strip()
        if agent and (not patterns or any(p.search(agent) for p in patterns)):
            return None
        return answers.error(403, "user_agent_required", message)

    return repeatable(stage)


def identify(kit: Kit) -> Stage:
    """Find the caller; refuse one without the key the policy needs; pass exempt addresses."""
    plan = kit.plan
    find = plan.identifier.identify
    key_conflict = plan.identifier.key_conflict
    key_headers = plan.identifier.key_headers
    exempt = plan.exempt_networks
    metrics, answers = kit.metrics, kit.answers
    key_names = " or ".join(
        "Authorization: Bearer" if h == "authorization" else h for h in plan.identifier.key_headers
    )
    # The Bearer challenge only where the key may travel as a bearer token: a client told
    # "Bearer" by an X-API-Key service would send its key in the wrong header.
    challenge = (
        [("WWW-Authenticate", "Bearer")] if "authorization" in plan.identifier.key_headers else []
    )

    def stage(ctx: Context) -> Ticket | None:
        if key_headers:
            conflict = key_conflict(ctx.view.headers)
            if conflict is not None:
                metrics.count(ctx.matched.name, "", "refused")
                return answers.error(400, "ambiguous_api_key", conflict)
        caller = find(ctx.view)
        if caller is None:
            metrics.count(ctx.matched.name, "", "refused")
            return answers.error(
                401,
                "missing_api_key",
                f"An API key is required ({key_names}).",
                challenge,
            )
        if exempt and in_networks(caller.ip, exempt):
            return PASS
        ctx.caller = ctx.ticket.caller = caller
        return None

    identifier = plan.identifier
    # Hooks may answer otherwise next time (and their answers expire): not repeatable then.
    if identifier.function or identifier.account_hook or identifier.plan_hook:
        return stage
    return repeatable(stage)


def in_networks(ip: str, networks: Sequence[Any]) -> bool:
    """Whether the address ``ip`` lies in one of ``networks`` (never for a malformed one)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
