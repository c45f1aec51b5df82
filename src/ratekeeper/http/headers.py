"""Rate-limit answer headers from a :class:`~ratekeeper.decision.Decision`.

``X-RateLimit-*`` report the binding limit (see :class:`Decision`); ``X-RateLimit-Reset`` is
the ceiling of its reset as Unix epoch seconds. ``Retry-After`` (ceil, at least 1) is added by
:func:`retry_after_headers` on 429/503 answers only. The IETF fields follow
draft-ietf-httpapi-ratelimit-headers-11 and list every limit of the decision.
"""

from __future__ import annotations

import math

from ratekeeper.decision import Decision

__all__ = ["limit_names", "rate_headers", "retry_after_headers", "retry_after_s"]

_ceil = math.ceil


def limit_names(decision: Decision) -> list[str]:
    """Names of the decision's limits as used in ``RateLimit-Policy``: the limit set's name,
    or ``set.limit`` for sets of several limits (``api.minute``)."""
    states = decision.states
    sizes: dict[str, int] = {}
    for state in states:
        sizes[state.limit_set] = sizes.get(state.limit_set, 0) + 1
    return [
        s.limit_set if sizes[s.limit_set] == 1 else f"{s.limit_set}.{s.limit.name}" for s in states
    ]


def rate_headers(
    decision: Decision, *, zone: bool = False, ietf: bool = False
) -> list[tuple[str, str]]:
    """``X-RateLimit-Limit/Remaining/Reset`` (and ``-Zone``, IETF fields when asked)."""
    binding = decision.binding
    headers = [
        ("X-RateLimit-Limit", str(binding.limit.amount)),
        ("X-RateLimit-Remaining", str(binding.remaining)),
        ("X-RateLimit-Reset", str(_ceil(binding.reset_at))),
    ]
    if zone:
        headers.append(("X-RateLimit-Zone", binding.limit_set))
    if ietf:
        now = decision.now
        policies = []
        current = []
        for name, state in zip(limit_names(decision), decision.states, strict=True):
            limit = state.limit
            policies.append(f'"{name}";q={limit.amount};w={_ceil(limit.period_s)}')
            reset_in = max(0, _ceil(state.reset_at - now))
            current.append(f'"{name}";r={state.remaining};t={reset_in}')
        headers.append(("RateLimit-Policy", ", ".join(policies)))
        headers.append(("RateLimit", ", ".join(current)))
    return headers


def retry_after_s(decision: Decision) -> int | None:
    """Whole seconds to wait (at least 1), or ``None`` when waiting can never help."""
    wait = decision.retry_after_s
    if wait == math.inf:
        return None
    return max(1, _ceil(wait))


def retry_after_headers(seconds: int | None) -> list[tuple[str, str]]:
    """The ``Retry-After`` header for a 429/503 answer (none when waiting cannot help)."""
    return [] if seconds is None else [("Retry-After", str(seconds))]
