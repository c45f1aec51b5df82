"""When to retry an answer and how long to wait first: pure functions of the answer's hints.

Its errors, :class:`~ratekeeper.errors.ClientConfigError` and
:class:`~ratekeeper.errors.WaitTooLongError`, live in the one tree of :mod:`ratekeeper.errors`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ratekeeper.client.hints import Hints
from ratekeeper.errors import ClientConfigError, WaitTooLongError

__all__ = [
    "IDEMPOTENT_METHODS",
    "RetryPolicy",
    "RetryVerdict",
    "backoff_s",
    "check_wait",
    "plan_retry",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How the client retries.

    ``statuses`` are retried (429 and 503 by default); a non-idempotent request (POST, PATCH)
    is retried after a 429 (the server did not process it) but after any other status only with
    ``retry_unsafe=True``. Waits: the server's hint if any (``Retry-After``, then the body), else
    exponential backoff from ``backoff_base_s`` doubling up to ``backoff_max_s``, jitter on top;
    a 503 or a hint of 0 waits at least the backoff. Any single wait over ``max_wait_s``, or
    waits adding up past ``max_total_wait_s``, raise :class:`WaitTooLongError`.
    """

    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    max_retries: int = 5
    max_wait_s: float = 300.0
    max_total_wait_s: float = 900.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_unsafe: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "statuses", frozenset(self.statuses))
        if self.max_retries < 0:
            raise ClientConfigError(f"RetryPolicy.max_retries must be >= 0, got {self.max_retries}")
        for name in ("max_wait_s", "max_total_wait_s", "backoff_base_s", "backoff_max_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                raise ClientConfigError(f"RetryPolicy.{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryVerdict:
    """Retry after ``wait_s`` seconds, or not (``reason`` says why, for logs)."""

    retry: bool
    wait_s: float
    reason: str


def backoff_s(retry_number: int, policy: RetryPolicy, random: Callable[[], float]) -> float:
    """Exponential backoff with jitter on top: ``base * 2**n`` (capped at ``backoff_max_s``)
    plus up to half of it again. Never below the base: the seeds ask to start at one second
    and double, and not to retry at once."""
    step = min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** min(retry_number, 62))
    return min(policy.backoff_max_s, step * (1.0 + random() / 2.0))


def check_wait(
    wait_s: float, waited_s: float, policy: RetryPolicy, *, url: str, now: float, why: str
) -> None:
    """Raise :class:`WaitTooLongError` if ``wait_s`` breaks either cap of ``policy``."""
    if wait_s > policy.max_wait_s:
        raise WaitTooLongError(
            url=url, wait_s=wait_s, deadline=now + wait_s, cap_s=policy.max_wait_s, why=why
        )
    if waited_s + wait_s > policy.max_total_wait_s:
        raise WaitTooLongError(
            url=url,
            wait_s=wait_s,
            deadline=now + wait_s,
            cap_s=policy.max_total_wait_s,
            why=f"{why} (after {waited_s:.1f}s of waiting already)",
        )


def plan_retry(
    *,
    method: str,
    status: int,
    hints: Hints,
    retries_done: int,
    waited_s: float,
    policy: RetryPolicy,
    random: Callable[[], float],
    url: str,
    now: float,
) -> RetryVerdict:
    """Decide whether to retry an answer and how long to wait; raises
    :class:`WaitTooLongError` instead of planning a wait past the caps."""
    if status not in policy.statuses:
        return RetryVerdict(False, 0.0, "status not retried")
    if status != 429 and method.upper() not in IDEMPOTENT_METHODS and not policy.retry_unsafe:
        return RetryVerdict(False, 0.0, f"{method} is not idempotent")
    if retries_done >= policy.max_retries:
        return RetryVerdict(False, 0.0, "retries exhausted")
    backoff = backoff_s(retries_done, policy, random)
    hint = hints.sharp_wait_s
    binding = hints.binding
    # A 503 naming a spent quota (MusicBrainz) is a refusal like a 429, not an overload.
    refused = status == 429 or (binding is not None and binding.remaining <= 0)
    if hint is None:
        wait, why = backoff, f"backoff after {status}"
    elif not refused or hint == 0.0:
        # "Retry-After: 0" on an overloaded server is no licence to hammer it.
        wait, why = max(hint, backoff), f"{status} with a hint of {hint:g}s"
    else:
        wait, why = hint, f"{status} with a hint of {hint:g}s"
    # Never retry before the server's reset: an exhausted budget stays exhausted until then.
    # A reset written in whole seconds that a Retry-After agrees with to within that rounding
    # says no more than it (a burst's bucket, with a unit back in 0.2 s and full in 1.5 s,
    # written as the next whole second; Retry-After 1): the Retry-After stands.
    if binding is not None and binding.remaining <= 0 and binding.reset_in_s is not None:
        slack = binding.reset_rounding_s if hints.wait_s is not None else 0.0
        if binding.reset_in_s - slack > wait:
            wait, why = binding.reset_in_s, f"{status} with the budget exhausted until its reset"
    check_wait(wait, waited_s, policy, url=url, now=now, why=why)
    return RetryVerdict(True, wait, why)
