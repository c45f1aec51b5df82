"""The Starlette-level pieces of the FastAPI integration: the route dependency and the answer.

    enforcer = Enforcer("policy.toml")
    install(app)                                   # renders refusals in the policy's format

    @app.post("/v1/uploads", dependencies=[Depends(RateLimit(enforcer, ["media"], cost=2))])
    async def upload(): ...

The dependency charges, in one decision, the policy's limits for the request (``apply`` and the
policy's rule for the path) and its own (names of the policy's limits, or rates such as
``"5/minute"``: a budget of the route's own). Under the integration's middleware
(:class:`ratekeeper.integrations.fastapi.RateKeeper`) the middleware leaves such routes to the
dependency and adds the one set of headers itself. Under the plain
:class:`~ratekeeper.http.asgi.RateLimitMiddleware`, which has decided already, the dependency
charges only the limits that decision did not cover, and adds no second set of headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ratekeeper.errors import PolicyError, RateLimited
from ratekeeper.http.asgi import view_from_scope
from ratekeeper.http.cache import TICKET
from ratekeeper.http.compiled import CompiledRule, Pairs
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Ticket
from ratekeeper.http.route_limits import (
    CostFunction,
    KeyFunction,
    RouteGuard,
    RouteLimits,
    together,
)

__all__ = ["ADMISSION", "Admission", "RateLimit", "RateLimited", "install", "rate_limited_handler"]

ADMISSION = "ratekeeper.admission"
"""The scope key of the integration middleware's :class:`Admission`."""


@dataclass(slots=True)
class Admission:
    """Left in the scope by the integration's middleware. When it found the route's ratekeeper
    dependencies (``route_limits``) it leaves the decision to the first of them, which puts its
    ticket here; else it decided itself (``ticket`` set, ``by_route`` false). Either way the
    middleware adds the headers (``headers`` when a dependency replaced them) and completes."""

    enforcer: Enforcer
    ticket: Ticket | None = None
    route_limits: tuple[RateLimit, ...] = ()
    by_route: bool = False
    headers: list[tuple[str, str]] | None = None


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


def _minus(pairs: Pairs, charged: Pairs) -> Pairs:
    return tuple(pair for pair in pairs if pair not in charged)


def _top_up(rule: CompiledRule, admitted: CompiledRule) -> CompiledRule | None:
    """What ``rule`` charges beyond what ``admitted`` charged already (``None``: nothing)."""
    tiers = {}
    for tier, (enforced, shadow) in rule.tiers.items():
        done = admitted.tiers.get(tier, (admitted.enforced, admitted.shadow))
        tiers[tier] = (_minus(enforced, done[0]), _minus(shadow, done[1]))
    enforced = _minus(rule.enforced, admitted.enforced)
    if not enforced and not any(e for e, _ in tiers.values()):
        return None
    shadow = _minus(rule.shadow, admitted.shadow)
    return replace(rule, enforced=enforced, shadow=shadow, tiers=tiers, in_flight=())


class RateLimit:
    """Dependency charging ``limits`` (names of the policy's ``[limits]``, or rate strings such
    as ``"5/minute"``: a budget of this route's own) ``cost`` units, beside the policy's limits.

    ``key`` and ``cost`` may be functions of the request (see
    :mod:`ratekeeper.http.route_limits`). ``enforcer`` may be left out under
    :class:`ratekeeper.integrations.fastapi.RateKeeper`, whose enforcer is then used. ``owner``
    names the route's own budget (default: the route's path).
    """

    def __init__(
        self,
        enforcer: Enforcer | None = None,
        limits: Iterable[str] = (),
        *,
        cost: int | CostFunction | None = None,
        key: KeyFunction | None = None,
        owner: str | None = None,
        exempt: bool = False,
    ) -> None:
        self.spec = RouteLimits(
            tuple([limits] if isinstance(limits, str) else limits), key, cost, exempt
        )
        self.enforcer = enforcer
        self.owner = owner
        self._guards: dict[tuple[int, str], RouteGuard] = {}
        if enforcer is not None:
            self.guard(enforcer, owner or "RateLimit")  # a bad limit name fails here, not later

    def __repr__(self) -> str:
        return f"<RateLimit {self.spec.limits} owner={self.owner!r}>"

    def named(self, owner: str) -> RateLimit:
        """The same limits, as the budget of the route ``owner`` (a decorated endpoint)."""
        return RateLimit(
            self.enforcer,
            self.spec.limits,
            cost=self.spec.cost,
            key=self.spec.key,
            owner=owner,
            exempt=self.spec.exempt,
        )

    def guard(self, enforcer: Enforcer, owner: str) -> RouteGuard:
        """This dependency's limits for the route ``owner`` under ``enforcer``."""
        probe = (id(enforcer), owner)
        guard = self._guards.get(probe)
        if guard is None:
            guard = self._guards[probe] = RouteGuard(enforcer, owner, self.spec)
        return guard

    def _enforcer_of(self, request: Request) -> Enforcer:
        if self.enforcer is not None:
            return self.enforcer
        keeper = getattr(request.app.state, "ratekeeper", None)
        if keeper is None:
            raise PolicyError(
                "limit() needs RateKeeper(app, policy) on the app (or an enforcer of its own)"
            )
        return keeper.enforcer  # type: ignore[no-any-return]

    async def check(self, request: Request) -> None:
        """Decide for ``request`` under the integration's middleware, which adds the headers
        and completes the ticket (a plain function: FastAPI runs it at a fraction of the cost
        of a dependency with ``yield``). The first of the route's ratekeeper dependencies to
        run decides for them all (a router's and the endpoint's, say), once."""
        admission: Admission | None = request.scope.get(ADMISSION)
        if admission is None:
            raise PolicyError(
                "limit() needs RateKeeper(app, policy) on the app: its middleware completes "
                "what the route's limits admitted"
            )
        enforcer = self.enforcer or admission.enforcer
        if admission.ticket is None:
            together_ = admission.route_limits or (self,)
            admission.ticket = await self._admit(request, enforcer, together_)
            admission.by_route = True
        elif not admission.by_route and admission.ticket.rule is not None:
            # The middleware did not see this route's limits (a router it cannot look into)
            # and decided alone: charge what its decision did not cover.
            extra = _top_up(self.rule(request, enforcer), admission.ticket.rule)
            if extra is not None:
                view = view_from_scope(request.scope, enforcer.header_names)
                topped = await enforcer.admit_async(replace(view, request=request), extra)
                _raise_if_refused(topped)
                admission.headers = topped.headers

    def rule(self, request: Request, enforcer: Enforcer) -> CompiledRule:
        """This dependency's limits and the policy's for ``request``, as one rule."""
        scope = request.scope
        owner = self.owner or getattr(scope.get("route"), "path", None) or scope["path"]
        return self.guard(enforcer, owner).rule(scope["method"], scope["path"])

    async def _admit(
        self, request: Request, enforcer: Enforcer, route_limits: Sequence[RateLimit]
    ) -> Ticket:
        rule = together([limit.rule(request, enforcer) for limit in route_limits])
        view = view_from_scope(request.scope, enforcer.header_names)
        ticket = await enforcer.admit_async(replace(view, request=request), rule)
        _raise_if_refused(ticket)
        return ticket

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[None]:
        scope = request.scope
        admission: Admission | None = scope.get(ADMISSION)
        if admission is not None:
            await self.check(request)
            yield
            return
        enforcer = self._enforcer_of(request)
        admitted: Ticket | None = scope.get(TICKET)
        if admitted is not None:
            # The plain middleware decided already and will add its headers and count the
            # answer: charge only what its decision did not cover.
            view = view_from_scope(scope, enforcer.header_names)
            rule = self.rule(request, enforcer)
            extra = None if admitted.rule is None else _top_up(rule, admitted.rule)
            if extra is not None:
                _raise_if_refused(await enforcer.admit_async(replace(view, request=request), extra))
            yield
            return
        ticket = await self._admit(request, enforcer, (self,))
        for name, value in ticket.headers:
            response.headers[name] = value
        status = 200
        try:
            yield
        except HTTPException as exc:
            status = exc.status_code
            raise
        except Exception:
            status = 500
            raise
        finally:
            await enforcer.complete_async(ticket, response.status_code or status)


def _raise_if_refused(ticket: Ticket) -> None:
    answer = ticket.answer
    if answer is not None:
        raise RateLimited(answer.status, answer.headers, answer.body)
