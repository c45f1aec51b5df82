"""What a request costs: the rule's ``cost``, or the number the request gives where the rule
says so (``cost_header`` or ``cost_query``, e.g. a batch's size), from 1 to ``max_cost``.

A value that is not a whole number in that range is refused (400, in the policy's body format,
naming the header or parameter and the range): charging a made-up number is worse than either
charging nothing or charging the maximum. No value at all charges the rule's ``cost``.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from ratekeeper.http.flow import Context, Kit, Stage, Ticket, repeatable

__all__ = ["cost"]


def cost(kit: Kit) -> Stage | None:
    """Take the request's cost from its header or query parameter, where the rule says so."""
    policy = kit.plan.policy
    if not any(rule.cost_header or rule.cost_query for rule in policy.rules):
        return None
    answers = kit.answers

    def stage(ctx: Context) -> Ticket | None:
        source = ctx.matched.cost_source
        if source is None:
            return None
        kind, name, top = source
        if kind == "header":
            raw = ctx.view.headers.get(name)
            where = f"header {name}"
        else:
            raw = parse_qs(ctx.view.query).get(name, [None])[-1]
            where = f"query parameter {name}"
        if raw is None:
            return None
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and 1 <= int(raw) <= top):
            return answers.error(
                400,
                "invalid_cost",
                f"{where}: expected a whole number from 1 to {top}, got {raw[:20]!r}",
            )
        ctx.cost = int(raw)
        return None

    return repeatable(stage)
