"""The decision: shadow limits first (logged, never enforced), then the enforced ones.

Both are charged in one all-or-nothing decision each. A store that is down decides by the
policy's ``on_store_error`` (see :class:`~ratekeeper.stores.fallback.FallbackStore`): a
failing-closed refusal is a 503, and a failing-open pass carries no rate-limit headers, since
the counts of a fresh key would be made up.
"""

from __future__ import annotations

import logging

from ratekeeper.decision import Decision
from ratekeeper.http.compiled import CompiledRule, Pairs
from ratekeeper.http.flow import Context, Kit, Stage, StageFlow, Ticket, charge, repeatable
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

    # Repeatable for requests with nothing to shadow only (no such refusal is kept).
    return repeatable(stage)


def decide(kit: Kit) -> Stage:
    """Charge the enforced limits: admit with rate-limit headers, or refuse. A key the
    over-limit cache knows to be over its limit is refused without asking the store (while the
    store is healthy: when it is down, its fail mode decides as for any other request)."""
    metrics, answers = kit.metrics, kit.answers
    over_limit, fallback, clock, refused = kit.over_limit, kit.fallback, kit.clock, kit.refused

    def stage(ctx: Context) -> Ticket | StageFlow | None:
        enforced = ctx.enforced
        if not enforced:
            return None
        # The properties only to raise their error when a stage list lacks route or identify.
        keys = (ctx.caller or ctx.identified).keys
        rule = ctx.rule or ctx.matched
        items = tuple([(ls, keys[s]) for ls, s in enforced])
        cost = ctx.cost or rule.cost
        if over_limit is not None and over_limit.size and not (fallback and fallback.degraded):
            known = over_limit.recall(items, cost, clock())
            if known is not None:
                ctx.decision = known
                ticket = answers.rejected(known)
                metrics.count(rule.name, ticket.reason, "rejected")
                if ctx.remember and refused is not None:
                    refused(ctx, items, cost)
                return ticket
        return flow(ctx, rule, items, cost)

    def flow(ctx: Context, rule: CompiledRule, items: Pairs, cost: int) -> StageFlow:
        decision = yield (items, cost, False)
        if type(decision) is not Decision and not counted(decision):
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
            ticket = answers.rejected(decision)
            metrics.count(rule.name, ticket.reason, "rejected")
            if ctx.remember and refused is not None:
                refused(ctx, items, cost)
            return ticket
        ctx.ticket.headers += answers.headers(decision, rule.headers_limit)
        metrics.count(rule.name, decision.binding.limit_set, "allowed")
        return None

    # Its refusals are repeated from the over-limit cache, which it reads each time.
    return repeatable(stage)
