"""ASGI middleware: enforce a policy in front of any ASGI app (Starlette, FastAPI).

    app = RateLimitMiddleware(app, "policy.toml")

The client address is the ASGI ``client`` of the connection; forwarding headers count only
from the policy's ``trusted_proxies``. Run uvicorn with ``proxy_headers=False`` (or
``--no-proxy-headers``): by default it rewrites ``client`` from ``X-Forwarded-For`` sent by
127.0.0.1, which would let the server, not the policy, decide who the caller is. A warning is
logged once when a request looks rewritten that way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.compiled import Plan
from ratekeeper.http.engine import Answer, Enforcer
from ratekeeper.http.identity import RequestView
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store

__all__ = ["RateLimitMiddleware", "send_answer", "view_from_scope"]

log = logging.getLogger("ratekeeper.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def view_from_scope(scope: Scope, wanted: frozenset[str] | None) -> RequestView:
    """The request view of an HTTP scope; only ``wanted`` headers (all when ``None``)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if wanted is not None and name not in wanted:
            continue
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    client = scope.get("client")
    query = scope.get("query_string", b"")
    return RequestView(
        scope["method"],
        scope["path"],
        headers,
        client[0] if client else None,
        query.decode("latin-1") if query else "",
    )


async def send_answer(send: Send, answer: Answer) -> None:
    """Send one of ratekeeper's own answers."""
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class RateLimitMiddleware:
    """Enforce ``policy`` (a path, :class:`Policy`, :class:`Plan` or :class:`Enforcer`)."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Enforcer | Plan | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.enforcer = Enforcer.of(policy, store=store, clock=clock)
        self._wanted = self.enforcer.header_names
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        enforcer = self.enforcer
        view = view_from_scope(scope, self._wanted)
        if not self._warned and "x-forwarded-for" in view.headers:
            self._check_rewritten(view)
        ticket = await enforcer.admit_async(view)
        answer = ticket.answer
        if answer is not None:
            await send_answer(send, answer)
            return
        extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ticket.headers]
        status = 500
        capture: list[bytes] | None = [] if ticket.cache_key is not None else None
        start_headers: list[tuple[str, str]] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal status, capture
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
                if capture is not None:
                    start_headers.extend(
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in message.get("headers", ())
                    )
            elif message["type"] == "http.response.body" and capture is not None:
                capture.append(message.get("body", b""))
                if not message.get("more_body", False):
                    enforcer.store_response(ticket, status, start_headers, b"".join(capture))
                    capture = None
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
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
