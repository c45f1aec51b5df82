"""WSGI middleware: enforce a policy in front of any WSGI app (Flask, Django).

    app.wsgi_app = RateLimitWSGIMiddleware(app.wsgi_app, "policy.toml")

The client address is ``REMOTE_ADDR``; forwarding headers count only from the policy's
``trusted_proxies``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.compiled import Plan
from ratekeeper.http.engine import Answer, Enforcer, Ticket
from ratekeeper.http.identity import RequestView
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store

__all__ = ["RateLimitWSGIMiddleware", "view_from_environ"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_REASONS = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def view_from_environ(environ: Environ, wanted: frozenset[str] | None) -> RequestView:
    """The request view of a WSGI environ; only ``wanted`` headers (all when ``None``)."""
    headers: dict[str, str] = {}
    if wanted is None:
        for name, value in environ.items():
            if name.startswith("HTTP_"):
                headers[name[5:].replace("_", "-").lower()] = value
    else:
        for name in wanted:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value is not None:
                headers[name] = value
    return RequestView(
        environ.get("REQUEST_METHOD", "GET"),
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        headers,
        environ.get("REMOTE_ADDR"),
        environ.get("QUERY_STRING", ""),
    )


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"


def _send(answer: Answer, start_response: StartResponse) -> list[bytes]:
    headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
    start_response(_status_line(answer.status), headers)
    return [answer.body]


class _Body:
    """The app's body iterable, passed through; completes the ticket when closed."""

    def __init__(
        self,
        enforcer: Enforcer,
        ticket: Ticket,
        body: Iterable[bytes],
        state: dict[str, Any],
    ) -> None:
        self._enforcer = enforcer
        self._ticket = ticket
        self._body = body
        self._state = state
        self._chunks: list[bytes] | None = [] if ticket.cache_key is not None else None

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._chunks
        for chunk in self._body:
            if chunks is not None:
                chunks.append(chunk)
            yield chunk
        if chunks is not None:
            state = self._state
            self._enforcer.store_response(
                self._ticket, state["status"], state["headers"], b"".join(chunks)
            )

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._enforcer.complete(self._ticket, self._state["status"])


class RateLimitWSGIMiddleware:
    """Enforce ``policy`` (a path, :class:`Policy`, :class:`Plan` or :class:`Enforcer`)."""

    def __init__(
        self,
        app: WSGIApp,
        policy: Enforcer | Plan | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.enforcer = Enforcer.of(policy, store=store, clock=clock)
        self._wanted = self.enforcer.header_names

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        enforcer = self.enforcer
        ticket = enforcer.admit(view_from_environ(environ, self._wanted))
        if ticket.answer is not None:
            return _send(ticket.answer, start_response)
        extra = ticket.headers
        state: dict[str, Any] = {"status": 500, "headers": []}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = status[:3]
            state["status"] = int(code) if code.isdigit() else 500
            state["headers"] = headers
            return start_response(status, [*headers, *extra], exc_info)

        try:
            body = self.app(environ, start)
        except BaseException:
            enforcer.complete(ticket, 500)
            raise
        return _Body(enforcer, ticket, body, state)
