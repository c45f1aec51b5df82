"""The decision: shadow limits first (logged, never enforced), then the enforced ones.

Both are charged in one all-or-nothing decision each. A store that is down decides by the
policy's ``on_store_error`` (see :class:`~ratekeeper.stores.fallback.FallbackStore`): a
failing-closed refusal is a 503, and a failing-open pass carries no rate-limit headers, since
the counts of a fresh key would be made up.
"""

from __future__ import annotations

import logging

from ratekeeper.decision import Decision
from ratekeeper.http.flow import Context, Kit, Stage, StageFlow, charge
from ratekeeper.http.headers import retry_after_headers, retry_after_s
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision

__all__ = ["counted", "decide", "shadow"]

log = logging.getLogger("ratekeeper.http")


def counted(decision: Decision) -> bool:
    """Whether the decision counted anything: not one a failing-open or -closed store made up."""
    return type(decision) is not DegradedDecision or decision.fail_mode is FailMode.FALLBACK


def shadow(kit: Kit) -> Stage | None:
    """Charge the shadow limits and log (and count) what they would have rejected."""
    policy = kit.plan.policy
    if not (
        policy.shadow
        or any(spec.shadow for spec in policy.limits.values())
        or any(rule.shadow for rule in policy.rules)
    ):
        return None
    metrics = kit.metrics

    def stage(ctx: Context) -> StageFlow | None:
        # A plain call when there is nothing to charge: no generator for most requests.
        return flow(ctx) if ctx.shadow else None

    def flow(ctx: Context) -> StageFlow:
        keys = ctx.identified.keys
        rule = ctx.matched
        cost = ctx.cost or rule.cost
        shadowed = yield charge(tuple([(ls, keys[s]) for ls, s in ctx.shadow]), cost)
        if not shadowed.allowed and counted(shadowed):
            zone = shadowed.binding.limit_set
            metrics.count(rule.name, zone, "shadow_rejected")
            log.info(
                "shadow: would reject %s %s for %s by %s (retry after %.3fs)",
                ctx.view.method,
                rule.name,
                ctx.identified.label,
                zone,
                shadowed.retry_after_s,
            )
        return None

    return stage


def decide(kit: Kit) -> Stage:
    """Charge the enforced limits: admit with rate-limit headers, or refuse."""
    metrics, answers = kit.metrics, kit.answers

    def stage(ctx: Context) -> StageFlow | None:
        return flow(ctx) if ctx.enforced else None

    def flow(ctx: Context) -> StageFlow:
        keys = ctx.identified.keys
        rule = ctx.matched
        cost = ctx.cost or rule.cost
        decision = yield charge(tuple([(ls, keys[s]) for ls, s in ctx.enforced]), cost)
        if not counted(decision):
            if not decision.allowed:
                metrics.count(rule.name, "", "store_unavailable")
                return answers.error(
                    503,
                    "store_unavailable",
                    "Rate limiting is unavailable; retry shortly.",
                    retry_after_headers(retry_after_s(decision)),
                )
            metrics.count(rule.name, "", "unchecked")
            return None
        # Set for a rejection too: observers of admission (refusal log, near-limit sample)
        # read it; the usage stage never sees it, since a rejection ends admission.
        ctx.decision = decision
        if not decision.allowed:
            metrics.count(rule.name, decision.binding.limit_set, "rejected")
            return answers.rejected(decision)
        ctx.ticket.headers += answers.headers(decision, rule.headers_limit)
        metrics.count(rule.name, decision.binding.limit_set, "allowed")
        return None

    return stage
