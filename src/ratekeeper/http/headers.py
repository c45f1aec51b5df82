"""Rate-limit answer headers from a :class:`~ratekeeper.decision.Decision`.

``X-RateLimit-*`` report the binding limit (see :class:`Decision`), or on an admitted request
the limit set a policy names to report (``headers_limit``); ``X-RateLimit-Reset`` is the
ceiling of its reset as Unix epoch seconds. ``Retry-After`` (ceil, at least 1) is added by
:func:`retry_after_headers` on 429/503 answers only. The IETF fields follow
draft-ietf-httpapi-ratelimit-headers-11 and list every limit of the decision; with a
:class:`PartitionKeys`, each ``RateLimit`` item carries ``pk``, a digest of the partition (the
caller's key, address or account) that the limit counts for.
"""

from __future__ import annotations

import base64
import hashlib
import math

from ratekeeper.decision import Decision, LimitState

__all__ = [
    "PartitionKeys",
    "limit_names",
    "rate_headers",
    "reported",
    "retry_after_headers",
    "retry_after_s",
]

_ceil = math.ceil


class PartitionKeys:
    """The ``pk`` parameter for store keys: a Structured Fields byte sequence (``:base64:``) of a
    BLAKE2b digest, keyed with ``secret`` when given.

    Store keys already hold API keys only as hashes; the digest also keeps client addresses and
    account names out of the field. Every process with the same ``secret`` gives a caller the
    same ``pk``, which is what lets a client tell partitions apart behind a load balancer.
    """

    __slots__ = ("_cache", "_secret")

    # Recent callers only: the cache saves a digest per request, not memory per caller.
    _MAX_CACHED = 4096

    def __init__(self, secret: str = "") -> None:
        self._secret = secret.encode()
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<PartitionKeys keyed={bool(self._secret)}>"

    def __call__(self, key: str) -> str:
        """``;pk=:...:`` for a store key."""
        found = self._cache.get(key)
        if found is None:
            digest = hashlib.blake2b(
                key.encode("utf-8", "surrogateescape"), digest_size=12, key=self._secret
            ).digest()
            found = f";pk=:{base64.b64encode(digest).decode()}:"
            if len(self._cache) >= self._MAX_CACHED:
                self._cache.clear()
            self._cache[key] = found
        return found


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


def reported(decision: Decision, limit_set: str = "") -> LimitState:
    """The limit the ``X-RateLimit-*`` headers describe: on an admitted decision the tightest
    limit of ``limit_set`` when it is one of the decision's, else (and on every refusal, so
    that the headers agree with ``Retry-After``) the binding one."""
    if limit_set and decision.allowed:
        best: LimitState | None = None
        for state in decision.states:
            if state.limit_set == limit_set and (
                best is None
                or (state.remaining, -state.limit.period_s) < (best.remaining, -best.limit.period_s)
            ):
                best = state
        if best is not None:
            return best
    return decision.binding


def rate_headers(
    decision: Decision,
    *,
    zone: bool = False,
    ietf: bool = False,
    partition_keys: PartitionKeys | None = None,
    report: str = "",
) -> list[tuple[str, str]]:
    """``X-RateLimit-Limit/Remaining/Reset`` of the :func:`reported` limit (``report`` names a
    limit set to prefer) and ``-Zone``, IETF fields when asked, with ``pk`` when given
    ``partition_keys``."""
    binding = reported(decision, report) if report else decision.binding
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
            pk = partition_keys(state.key) if partition_keys is not None else ""
            current.append(f'"{name}";r={state.remaining};t={reset_in}{pk}')
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
