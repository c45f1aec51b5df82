"""ASGI middleware: enforce a policy in front of any ASGI app (Starlette, FastAPI).

    app = RateLimitMiddleware(app, "policy.toml")

The client address is the ASGI ``client`` of the connection; forwarding headers count only
from the policy's ``trusted_proxies``. Run uvicorn with ``proxy_headers=False`` (or
``--no-proxy-headers``): by default it rewrites ``client`` from ``X-Forwarded-For`` sent by
127.0.0.1, which would let the server, not the policy, decide who the caller is. A warning is
logged once when a request looks rewritten that way.

When a rule of the policy has a ``cache_ttl``, the app is wrapped in a
:class:`~ratekeeper.http.cache_asgi.ResponseCacheMiddleware` (``response_cache`` says where
answers are kept; by default beside an SQLite or Redis store, else in this process). The
admission ticket is left in the scope under ``"ratekeeper.ticket"`` for it and for the app.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.asgi_scope import (
    ASGIApp,
    Descriptions,
    Message,
    Receive,
    Scope,
    Send,
    send_answer,
    view_from_scope,
)
from ratekeeper.http.cache import TICKET, ResponseStore
from ratekeeper.http.cache_asgi import ResponseCacheMiddleware
from ratekeeper.http.cache_shared import middleware_enforcer
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store

__all__ = [
    "ASGIApp",
    "RateLimitMiddleware",
    "Receive",
    "Scope",
    "Send",
    "send_answer",
    "view_from_scope",
]

log = logging.getLogger("ratekeeper.http")


class RateLimitMiddleware:
    """Enforce ``policy``: a path, a :class:`Policy`, a :class:`CompiledPolicy` or an
    :class:`Enforcer`."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Enforcer | CompiledPolicy | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
        response_cache: ResponseStore | None = None,
    ) -> None:
        self.app = app
        self.enforcer, cache = middleware_enforcer(
            policy, store=store, clock=clock, response_cache=response_cache
        )
        enforcer = self.enforcer
        self._inner: ASGIApp = app
        if cache is not None:
            self._inner = ResponseCacheMiddleware(
                app, enforcer.plan, cache=cache, clock=enforcer.clock
            )
        self._wanted = enforcer.header_names
        self._warned = False
        # Requests repeat (a client retrying while refused): one view per distinct request, so
        # that a refusal whose key the over-limit cache still knows is answered again at once.
        self._described = Descriptions(view_from_scope).describe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        enforcer = self.enforcer
        view, kept = self._described(scope, self._wanted)
        if not self._warned and "x-forwarded-for" in view.headers:
            self._check_rewritten(view)
        ticket = enforcer.repeated(view) if kept else None
        if ticket is None:
            ticket = await enforcer.admit_async(view, remember=kept)
        answer = ticket.answer
        if answer is not None:
            await send_answer(send, answer)
            return
        scope[TICKET] = ticket
        extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ticket.headers]
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        if not ticket.held and ticket.lock_key is None:
            # Nothing to release or count afterwards (most requests): no completion step.
            await self._inner(scope, receive, send_with_headers if extra else send)
            return
        try:
            await self._inner(scope, receive, send_with_headers)
        finally:
            await enforcer.complete_async(ticket, status)

    def _check_rewritten(self, view: RequestView) -> None:
        hops = [h.strip() for h in view.headers.get("x-forwarded-for", "").split(",")]
        if view.peer in hops and not self.enforcer.plan.policy.identity.trusted_proxies:
            self._warned = True
            log.warning(
                "the ASGI client address %s appears in X-Forwarded-For: the server seems to "
                "rewrite it (uvicorn proxy_headers). Run uvicorn with proxy_headers=False and "
                "list proxies in the policy's identity.trusted_proxies instead.",
                view.peer,
            )
