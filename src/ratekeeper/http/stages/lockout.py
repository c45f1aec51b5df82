"""The auth lockout: callers whose answers failed too often are refused for a while.

The ``lockout`` stage peeks at the caller's lock and refuses (429) while it holds; it notes the
caller's lockout key on the ticket so that, once the app has answered, :func:`count_failure`
counts a failed answer (a status of the lockout's) and sets the lock when failures run out.
"""

from __future__ import annotations

from collections.abc import Generator

from ratekeeper.decision import Decision
from ratekeeper.http.bodies import seconds_words
from ratekeeper.http.compiled import CompiledLockout, CompiledPolicy
from ratekeeper.http.flow import (
    Context,
    Kit,
    Op,
    Stage,
    StageFlow,
    Ticket,
    charge,
    peek,
    repeatable,
)
from ratekeeper.http.identity import Caller, RequestView
from ratekeeper.http.stages.decide import counted

__all__ = ["count_failure", "lockout", "lockout_key"]


def lockout_key(plan: CompiledPolicy, view: RequestView, caller: Caller) -> str | None:
    """The key this request's failures count for, if a lockout watches its route."""
    spec = plan.lockout
    if spec is None or (spec.routes is not None and not spec.routes.match(view.method, view.path)):
        return None
    return caller.keys[spec.scope]


def lockout(kit: Kit) -> Stage | None:
    """Refuse a locked-out caller; note the lockout key for :func:`count_failure`."""
    plan, metrics, answers = kit.plan, kit.metrics, kit.answers
    spec = plan.lockout
    if spec is None:
        return None
    lock = spec.lock
    # A locked-out caller's headers describe the failures limit it spent: none left until the
    # lock ends ("responses include standard rate limit headers", refusals too).
    failures = spec.failures.limits[0].amount
    allowed_failures = str(failures)
    zone = [("X-RateLimit-Zone", "lockout")] if plan.policy.zone_header else []

    def stage(ctx: Context) -> StageFlow | None:
        key = lockout_key(plan, ctx.view, ctx.identified)
        if key is None:
            return None
        ctx.ticket.lock_key = key
        return flow(ctx, key)

    def flow(ctx: Context, key: str) -> StageFlow:
        locked = yield peek(((lock, key),))
        if locked.states[0].remaining == 0 and counted(locked):
            metrics.count(ctx.matched.name, "lockout", "rejected")
            reset_at = locked.states[0].reset_at
            wait = max(1, int(-(-(reset_at - locked.now) // 1)))
            reset = int(-(-reset_at // 1))
            headers = [
                ("X-RateLimit-Limit", allowed_failures),
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", str(reset)),
                *zone,
                ("Retry-After", str(wait)),
            ]
            # A template body says what the headers say.
            quota = {"limit": failures, "remaining": 0, "reset": reset, "retry_after": wait}
            return answers.error(
                429,
                "too_many_failed_attempts",
                f"Too many failed authentication attempts. Retry after {seconds_words(wait)}.",
                headers,
                quota,
            )
        return None

    # Repeatable for requests its lockout does not watch only (the enforcer keeps no refusal
    # that carries a lockout key).
    return repeatable(stage)


def count_failure(
    spec: CompiledLockout | None, ticket: Ticket, status: int
) -> Generator[Op, Decision, None]:
    """After the app answered ``status``: count it if it failed, and lock when failures run
    out."""
    if spec is None or ticket.lock_key is None or status not in spec.statuses:
        return
    failed = yield charge(((spec.failures, ticket.lock_key),), 1)
    if counted(failed) and (not failed.allowed or failed.remaining == 0):
        yield charge(((spec.lock, ticket.lock_key),), 1)
