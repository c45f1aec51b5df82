"""FastAPI and Starlette: ``RateKeeper(app, policy)`` and per-route limits written in code.

    from fastapi import FastAPI
    from ratekeeper.integrations.fastapi import RateKeeper, exempt, limit

    app = FastAPI()
    RateKeeper(app, "policy.toml")                 # every request: the policy's limits

    @app.get("/search")
    @limit("5/minute", key=lambda request: request.client.host)
    async def search(q: str) -> list[str]: ...

    @app.get("/export", dependencies=[limit("2/hour", cost=3)])
    async def export() -> dict[str, str]: ...

A limited route's own limits and the policy's are one decision with one set of headers: the
middleware leaves such requests to the route's dependency and adds the headers it decided. The
OpenAPI document lists the 429 (and the 503 where a limit answers one) with the rate-limit
headers on each limited operation; ``/docs``, ``/redoc`` and ``/openapi.json`` are exempt unless
``exempt_docs=False``. WebSocket connections are admitted like requests (a refusal is the
policy's answer where the server supports it, else close code 1008), and
``websocket_messages="10/second"`` limits what each connection may send (beyond: close 1008).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from fastapi.params import Depends
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket

from ratekeeper.clock import Clock, system_clock
from ratekeeper.core import EntryState, decide_entry
from ratekeeper.http.asgi_scope import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    send_answer,
    view_from_scope,
)
from ratekeeper.http.cache import TICKET, caches
from ratekeeper.http.cache_asgi import ResponseCacheMiddleware
from ratekeeper.http.compiled import CompiledPolicy, CompiledRule
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.fastapi import ADMISSION, Admission, RateLimit, RateLimited, install
from ratekeeper.http.identity import RequestView
from ratekeeper.http.route_limits import CostFunction, KeyFunction, together
from ratekeeper.http.workers import warn_if_split
from ratekeeper.limit import LimitSet
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.fail_mode import FailMode

__all__ = ["RateKeeper", "RateKeeperMiddleware", "RateLimited", "RouteLimit", "exempt", "limit"]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
_PARAMETER = "_ratekeeper_request"
_LIMITS = "__ratekeeper_limits__"
_CONNECTION = (HTTPConnection, "HTTPConnection")
_MEMO_MAX = 8192


class _Check:
    """The dependency FastAPI calls: :meth:`RateLimit.check`, under :class:`RateKeeper`."""

    __slots__ = ("rate_limit",)

    def __init__(self, rate_limit: RateLimit) -> None:
        self.rate_limit = rate_limit

    async def __call__(self, request: Request) -> None:
        await self.rate_limit.check(request)


class RouteLimit(Depends):
    """What :func:`limit` returns: a dependency (``dependencies=[limit(...)]``) that is also a
    decorator of an endpoint (written below ``@app.get``, so FastAPI sees it)."""

    def __init__(self, rate_limit: RateLimit) -> None:
        super().__init__(dependency=_Check(rate_limit))

    @property
    def rate_limit(self) -> RateLimit:
        """The limits that decide."""
        check: _Check = self.dependency  # type: ignore[assignment]
        return check.rate_limit

    def __call__(self, endpoint: Endpoint) -> Endpoint:
        """Give ``endpoint`` this limit, named after the endpoint. No dependency is added (FastAPI
        solves one at a cost per request): the middleware finds the limit on the endpoint and
        decides before routing, and the wrapper decides only where it did not (a key or cost
        function, which gets the routed request, or a route the middleware cannot see)."""
        owner = f"{endpoint.__module__}.{endpoint.__qualname__}"
        bound = self.rate_limit.named(owner)
        signature = inspect.signature(endpoint)
        params = list(signature.parameters.values())
        # FastAPI passes the request to a parameter typed HTTPConnection, a slot of its own that
        # an endpoint's ``request: Request`` does not take (a stacked limit's is shared).
        name = next((p.name for p in params if p.annotation in _CONNECTION), None)
        ours = name is None
        if name is None:
            name = _PARAMETER
            extra = inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=HTTPConnection
            )
            at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
            params.insert(at, extra)
        run = endpoint if inspect.iscoroutinefunction(endpoint) else _in_threadpool(endpoint)

        @functools.wraps(endpoint)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.pop(name) if ours else kwargs[name]
            admission: Admission | None = request.scope.get(ADMISSION)
            if admission is None or not admission.by_route:
                await bound.check(request)
            return await run(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        setattr(wrapper, _LIMITS, (bound, *getattr(endpoint, _LIMITS, ())))
        return wrapper  # type: ignore[return-value]


def _in_threadpool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` (a plain function) run as FastAPI runs one: in the thread pool."""

    async def run(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return run


def limit(
    *limits: str,
    key: KeyFunction | None = None,
    cost: int | CostFunction | None = None,
) -> RouteLimit:
    """A route's limits: names of the policy's limits or rates (``"5/minute"``: the route's own
    budget, counted per ``key(request)`` when given, else per caller), ``cost`` units a request
    (a number or a function of the request; default: the policy rule's cost)."""
    return RouteLimit(RateLimit(None, limits, key=key, cost=cost))


exempt = RouteLimit(RateLimit(None, (), exempt=True))
"""A route free of every limit, the policy's included (``@exempt`` or ``dependencies=[exempt]``)."""


def _endpoints(routes: Iterable[BaseRoute]) -> Iterator[Any]:
    """Everything FastAPI routes to (``path_regex``, ``path_format``, ``methods``,
    ``dependant``): its routes, and those of included routers it keeps whole."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from contexts()
        elif isinstance(route, APIRoute):
            yield route


def _rate_limits(endpoint: Any) -> tuple[RateLimit, ...]:
    """The ratekeeper dependencies of an endpoint (its routers' and its own)."""
    found: list[RateLimit] = []
    pending = [endpoint.dependant]
    while pending:
        dependant = pending.pop()
        call = dependant.call
        found.extend(getattr(call, _LIMITS, ()))
        if isinstance(call, _Check):
            found.append(call.rate_limit)
        elif isinstance(call, RateLimit):
            found.append(call)
        pending.extend(dependant.dependencies)
    return tuple(found)


_REFUSAL_HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
_RATE_HEADERS = {
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the window that binds",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in that window",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Epoch second at which that window resets",
        "schema": {"type": "integer"},
    },
}
_IETF_HEADERS = {
    "RateLimit": {"description": "IETF RateLimit field", "schema": {"type": "string"}},
    "RateLimit-Policy": {
        "description": "IETF RateLimit-Policy field",
        "schema": {"type": "string"},
    },
}


class _Route:
    """The ratekeeper limits of the route a method and path go to, whether the middleware
    ``decides`` for them before routing, and their one ``rule`` under ``plan``."""

    __slots__ = ("decides", "limits", "plan", "rule")

    def __init__(self, limits: tuple[RateLimit, ...], decides: bool) -> None:
        self.limits = limits
        self.decides = decides
        self.plan: CompiledPolicy | None = None
        self.rule: CompiledRule | None = None


class RateKeeper:
    """Enforces ``policy`` on ``app`` (FastAPI or Starlette) and answers its route limits.

    ``policy`` is a path, a :class:`~ratekeeper.Policy` (``PolicyBuilder(...).build()``), a
    compiled policy or an :class:`~ratekeeper.Enforcer`; ``store`` overrides the policy's.
    """

    def __init__(
        self,
        app: Any,
        policy: Enforcer | CompiledPolicy | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
        exempt_docs: bool = True,
        websocket_messages: str | None = None,
    ) -> None:
        self.enforcer = Enforcer.of(policy, store=store, clock=clock)
        docs = ("docs_url", "redoc_url", "openapi_url", "swagger_ui_oauth2_redirect_url")
        paths = [getattr(app, name, None) for name in docs] if exempt_docs else []
        self.exempt_paths = frozenset(p for p in paths if p)
        self.messages = (
            LimitSet("websocket-messages", websocket_messages) if websocket_messages else None
        )
        # (method, path) -> its route's ratekeeper dependencies; routes are fixed once it serves.
        self._limited: dict[tuple[str, str], _Route] = {}
        app.state.ratekeeper = self
        install(app)
        app.add_middleware(RateKeeperMiddleware, keeper=self)
        if callable(getattr(app, "openapi", None)):
            self._document(app)
        warn_if_split(self.enforcer.store, self.enforcer.plan.policy.source)

    def __repr__(self) -> str:
        return f"<RateKeeper {self.enforcer!r}>"

    def route_limits(self, scope: Scope) -> tuple[RateLimit, ...]:
        """The ratekeeper limits of the route ``scope`` goes to (which decide for it)."""
        return self.route(scope).limits

    def route(self, scope: Scope) -> _Route:
        """What the middleware knows of the route ``scope`` goes to (memoised per method and
        path: routes are fixed once the app serves)."""
        method, path = scope["method"], scope["path"]
        found = self._limited.get((method, path))
        if found is None:
            limits: tuple[RateLimit, ...] = ()
            router = getattr(scope.get("app"), "router", None)
            for endpoint in _endpoints(getattr(router, "routes", ())):
                if endpoint.path_regex.match(path) and method in (endpoint.methods or ()):
                    limits = _rate_limits(endpoint)
                    break
            if len(self._limited) >= _MEMO_MAX:
                self._limited.clear()
            found = self._limited[(method, path)] = _Route(limits, self._decides(limits))
        return found

    def _decides(self, limits: tuple[RateLimit, ...]) -> bool:
        # Before routing the middleware knows neither the route's path (a dependency's budget is
        # named after it) nor what the routed request holds (a key or cost function's input).
        return all(
            limit.owner is not None
            and limit.spec.key is None
            and not callable(limit.spec.cost)
            and limit.enforcer in (None, self.enforcer)
            for limit in limits
        )

    def rule_of(self, route: _Route, method: str, path: str) -> CompiledRule | None:
        """The one rule of ``route``'s limits and the policy's (``None``: the policy's alone),
        made once per plan."""
        plan = self.enforcer.plan
        if route.plan is not plan:
            route.rule = (
                together(
                    [
                        limit.guard(self.enforcer, limit.owner or path).rule(method, path)
                        for limit in route.limits
                    ]
                )
                if route.limits
                else None
            )
            route.plan = plan
        return route.rule

    def _document(self, app: Any) -> None:
        original = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = original()
                for endpoint in _endpoints(app.routes):
                    if endpoint.include_in_schema:
                        paths = schema.get("paths", {})
                        self._describe(endpoint, paths.get(endpoint.path_format, {}))
                app.openapi_schema = schema
            return app.openapi_schema  # type: ignore[no-any-return]

        app.openapi = openapi

    def _rule(self, route: Any, method: str) -> CompiledRule:
        plan = self.enforcer.plan
        owned = _rate_limits(route)
        if not owned:
            return plan.routes.match(method, route.path_format)
        return together(
            [
                limit.guard(self.enforcer, limit.owner or route.path_format).rule(
                    method, route.path_format
                )
                for limit in owned
            ]
        )

    def _describe(self, route: Any, operations: dict[str, Any]) -> None:
        plan = self.enforcer.plan
        ietf = plan.policy.ietf_headers
        for method in route.methods or ():
            operation = operations.get(method.lower())
            rule = self._rule(route, method)
            pairs = [*rule.enforced, *(p for e, _ in rule.tiers.values() for p in e)]
            if operation is None or rule.exempt or not (pairs or rule.in_flight):
                continue
            statuses = {plan.status_of.get(limit_set.name, 429) for limit_set, _ in pairs}
            if rule.in_flight or plan.policy.on_store_error is FailMode.FAIL_CLOSED:
                statuses.add(503)
            headers = {**_RATE_HEADERS, **(_IETF_HEADERS if ietf else {})}
            responses = operation.setdefault("responses", {})
            for code, answer in responses.items():
                if code.startswith("2"):
                    answer.setdefault("headers", {}).update(headers)
            for status in sorted(statuses):
                words = "a rate limit" if status == 429 else "an overload or store limit"
                responses.setdefault(
                    str(status),
                    {
                        "description": f"Refused: {words} of this route is spent",
                        "headers": {**_REFUSAL_HEADERS, **headers},
                    },
                )


class RateKeeperMiddleware:
    """The ASGI middleware :class:`RateKeeper` installs (see the module's docstring)."""

    def __init__(self, app: ASGIApp, keeper: RateKeeper) -> None:
        self.app = app
        self.keeper = keeper
        enforcer = keeper.enforcer
        self._inner: ASGIApp = app
        if caches(enforcer.plan):
            self._inner = ResponseCacheMiddleware(app, enforcer.plan, clock=enforcer.clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"] not in self.keeper.exempt_paths:
            await self._websocket(scope, receive, send)
            return
        if kind != "http" or scope["path"] in self.keeper.exempt_paths:
            await self.app(scope, receive, send)
            return
        keeper = self.keeper
        enforcer = keeper.enforcer
        route = keeper.route(scope)
        if route.decides:
            view = view_from_scope(scope, enforcer.header_names)
            rule = keeper.rule_of(route, view.method, view.path)
            request = Request(scope)
            ticket = await enforcer.admit_async(
                RequestView(view.method, view.path, view.headers, view.peer, view.query, request),
                rule,
            )
            if ticket.answer is not None:
                await send_answer(send, ticket.answer)
                return
            scope[TICKET] = ticket
            admission = Admission(enforcer, ticket, route.limits, rule is not None)
        else:
            admission = Admission(enforcer, None, route.limits)
        scope[ADMISSION] = admission
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ticket = admission.ticket
                headers = admission.headers
                if headers is None and ticket is not None:
                    headers = ticket.headers
                if headers:
                    extra = [(_encoded(n), v.encode("latin-1")) for n, v in headers]
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self._inner(scope, receive, send_with_headers)
        finally:
            if admission.ticket is not None:
                await enforcer.complete_async(admission.ticket, status)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        enforcer = self.keeper.enforcer
        view = view_from_scope({**scope, "method": "GET"}, enforcer.header_names)
        request = WebSocket(scope, receive, send)
        ticket = await enforcer.admit_async(replace(view, request=request))
        answer = ticket.answer
        if answer is not None:
            await receive()  # websocket.connect
            if "websocket.http.response" in scope.get("extensions", {}):
                headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
                start = {"type": "websocket.http.response.start", "status": answer.status}
                await send({**start, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": answer.body})
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
            return
        if self.keeper.messages is not None:
            receive = _metered(receive, send, self.keeper.messages, enforcer.clock)
        try:
            await self.app(scope, receive, send)
        finally:
            await enforcer.complete_async(ticket, 101)


_NAMES: dict[str, bytes] = {}


def _encoded(name: str) -> bytes:
    """A header name as bytes; a policy sends few names, so each is encoded once."""
    found = _NAMES.get(name)
    if found is None:
        found = name.encode("latin-1")
        if len(_NAMES) < _MEMO_MAX:
            _NAMES[name] = found
    return found


def _metered(receive: Receive, send: Send, messages: LimitSet, clock: Clock) -> Receive:
    """``receive`` counting this connection's messages; past the limit it closes (1008)."""
    entry: EntryState | None = None
    closed = False

    async def metered() -> Message:
        nonlocal entry, closed
        if closed:
            return {"type": "websocket.disconnect", "code": 1008}
        message = await receive()
        if message["type"] == "websocket.receive":
            _, entry_after = decide_entry(messages, entry, clock(), 1)
            if entry_after is None:
                closed = True
                await send({"type": "websocket.close", "code": 1008, "reason": "too many messages"})
                return {"type": "websocket.disconnect", "code": 1008}
            entry = entry_after
        return message

    return metered
