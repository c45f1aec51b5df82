"""The usage answer (Musique's ``GET /api/integration/limits`` shape) from a decision.

``{"limits": {"perMinute": 100, ...}, "usage": {...}, "remaining": {...}}``: one entry per limit
of the decision that admitted the usage request itself, so the numbers include that request.
Limits of a second limit set are prefixed with the set's name (``"media.perMinute"``).
"""

from __future__ import annotations

import json

from ratekeeper.decision import Decision

__all__ = ["usage_document"]


def _window_key(name: str) -> str:
    return "per" + name[:1].upper() + name[1:]


def usage_document(decision: Decision) -> bytes:
    """The JSON body of the usage endpoint."""
    limits: dict[str, int] = {}
    usage: dict[str, int] = {}
    remaining: dict[str, int] = {}
    first_set = decision.states[0].limit_set
    for state in decision.states:
        key = _window_key(state.limit.name)
        if state.limit_set != first_set:
            key = f"{state.limit_set}.{key}"
        amount = state.limit.amount
        limits[key] = amount
        remaining[key] = state.remaining
        usage[key] = max(0, amount - state.remaining)
    body = {"limits": limits, "usage": usage, "remaining": remaining}
    return json.dumps(body, separators=(",", ":")).encode()
