"""WSGI middleware: enforce a policy in front of any WSGI app (Flask, Django).

    app.wsgi_app = RateLimitWSGIMiddleware(app.wsgi_app, "policy.toml")

The client address is ``REMOTE_ADDR``; forwarding headers count only from the policy's
``trusted_proxies``. When a rule of the policy has a ``cache_ttl``, the app is wrapped in a
:class:`~ratekeeper.http.cache_wsgi.ResponseCacheWSGIMiddleware` (answers kept beside an SQLite
or Redis store, else in this process; ``response_cache`` chooses); the admission ticket is
left in the environ under ``"ratekeeper.ticket"`` for it and for the app.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.cache import TICKET, ResponseStore
from ratekeeper.http.cache_shared import middleware_enforcer
from ratekeeper.http.cache_wsgi import ResponseCacheWSGIMiddleware
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.engine import Enforcer, Ticket
from ratekeeper.http.wsgi_environ import (
    Environ,
    StartResponse,
    WSGIApp,
    send_answer,
    view_from_environ,
)
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store

__all__ = ["RateLimitWSGIMiddleware", "view_from_environ"]


class _Body:
    """The app's body iterable, passed through; completes the ticket when closed."""

    __slots__ = ("_body", "_enforcer", "_state", "_ticket")

    def __init__(
        self, enforcer: Enforcer, ticket: Ticket, body: Iterable[bytes], state: list[int]
    ) -> None:
        self._enforcer = enforcer
        self._ticket = ticket
        self._body = body
        self._state = state

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._enforcer.complete(self._ticket, self._state[0])


class RateLimitWSGIMiddleware:
    """Enforce ``policy``: a path, a :class:`Policy`, a :class:`CompiledPolicy` or an
    :class:`Enforcer`."""

    def __init__(
        self,
        app: WSGIApp,
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
        self._inner: WSGIApp = app
        if cache is not None:
            self._inner = ResponseCacheWSGIMiddleware(
                app, enforcer.plan, cache=cache, clock=enforcer.clock
            )
        self._wanted = enforcer.header_names

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        enforcer = self.enforcer
        ticket = enforcer.admit(view_from_environ(environ, self._wanted))
        if ticket.answer is not None:
            return send_answer(ticket.answer, start_response)
        environ[TICKET] = ticket
        extra = ticket.headers
        if not ticket.held and ticket.lock_key is None:
            # Nothing to release or count afterwards (most requests): no completion step.
            if not extra:
                return self._inner(environ, start_response)

            def add_headers(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Any:
                return start_response(status, [*headers, *extra], exc_info)

            return self._inner(environ, add_headers)
        state = [500]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = status[:3]
            state[0] = int(code) if code.isdigit() else 500
            return start_response(status, [*headers, *extra], exc_info)

        try:
            body = self._inner(environ, start)
        except BaseException:
            enforcer.complete(ticket, 500)
            raise
        return _Body(enforcer, ticket, body, state)
