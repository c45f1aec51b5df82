"""A FastAPI dependency for per-route limits, driven by the same policy as the middleware.

    enforcer = Enforcer("policy.toml")
    install(app)                                   # renders rejections in the policy's format

    @app.post("/v1/uploads", dependencies=[Depends(RateLimit(enforcer, ["media"], cost=2))])
    async def upload(): ...

The dependency charges the policy's ``apply`` limits plus the ones named, in one decision, and
adds the rate-limit headers to the route's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ratekeeper.errors import PolicyError, RateLimited
from ratekeeper.http.asgi import view_from_scope
from ratekeeper.http.compiled import compile_rule
from ratekeeper.http.engine import Enforcer
from ratekeeper.policy.inline import looks_like_rate

__all__ = ["RateLimit", "RateLimited", "install", "rate_limited_handler"]


async def rate_limited_handler(request: Request, exc: Exception) -> Response:
    """Exception handler turning :class:`RateLimited` into the policy's answer."""
    if not isinstance(exc, RateLimited):
        raise exc
    headers = {n: v for n, v in exc.headers if n.lower() != "content-type"}
    content_type = {n.lower(): v for n, v in exc.headers}.get("content-type")
    return Response(exc.body, exc.status, headers=headers, media_type=content_type)


def install(app: Any) -> None:
    """Register :func:`rate_limited_handler` on a Starlette or FastAPI app."""
    app.add_exception_handler(RateLimited, rate_limited_handler)


class RateLimit:
    """Dependency charging ``limits`` (names of the policy's ``[limits]``, or rate strings
    such as ``"5/minute"``: a budget of this dependency's own) ``cost`` units."""

    def __init__(self, enforcer: Enforcer, limits: Sequence[str], *, cost: int = 1) -> None:
        policy = enforcer.plan.policy
        for name in limits:
            if name not in policy.limits and not looks_like_rate(name):
                known = ", ".join(sorted(policy.limits))
                raise PolicyError(
                    f"{policy.source}: RateLimit({name!r}): expected one of the policy's "
                    f"limits ({known})"
                )
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise PolicyError(f"RateLimit cost must be a whole number >= 1, got {cost!r}")
        self.enforcer = enforcer
        self.rule = compile_rule(
            policy,
            "+".join(limits) or "apply",
            list(limits),
            cost=cost,
            cache_ttl_s=0.0,
            shadow_rule=False,
        )

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[None]:
        enforcer = self.enforcer
        view = view_from_scope(request.scope, enforcer.header_names)
        ticket = await enforcer.admit_async(view, self.rule)
        if ticket.answer is not None:
            answer = ticket.answer
            raise RateLimited(answer.status, answer.headers, answer.body)
        for name, value in ticket.headers:
            response.headers[name] = value
        try:
            yield
        finally:
            await enforcer.complete_async(ticket, response.status_code or 200)
