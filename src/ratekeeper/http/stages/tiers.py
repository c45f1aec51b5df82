"""Which limits: those of the caller's plan tier, in place of the rule's own (which the route
stage chose)."""

from __future__ import annotations

from ratekeeper.http.flow import Context, Kit, Stage, Ticket, repeatable

__all__ = ["tiers"]


def tiers(kit: Kit) -> Stage | None:
    """Choose the limits to enforce and to shadow for the caller's plan tier."""
    if not kit.plan.policy.tiers.plans:
        return None

    def stage(ctx: Context) -> Ticket | None:
        rule = ctx.matched
        plan = ctx.identified.plan
        if rule.tiers and plan is not None:
            ctx.enforced, ctx.shadow = rule.tiers.get(plan, (ctx.enforced, ctx.shadow))
        return None

    return repeatable(stage)
