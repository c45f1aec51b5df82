"""Which rule: the first rule of the policy matching the method and path (or the default).

An adapter that already knows the rule (the FastAPI dependency) presets ``ctx.rule``; an
exempt rule lets the request through unlimited and unidentified.
"""

from __future__ import annotations

from ratekeeper.http.flow import PASS, Context, Kit, Stage, Ticket, repeatable

__all__ = ["route"]


def route(kit: Kit) -> Stage:
    """Match the request's rule; pass requests of exempt rules."""
    match = kit.plan.routes.match

    def stage(ctx: Context) -> Ticket | None:
        rule = ctx.rule
        if rule is None:
            view = ctx.view
            rule = ctx.rule = match(view.method, view.path)
        ctx.ticket.rule = rule
        # The rule's own limits; the tiers stage replaces them for a caller's plan.
        ctx.enforced, ctx.shadow = rule.enforced, rule.shadow
        return PASS if rule.exempt else None

    return repeatable(stage)
