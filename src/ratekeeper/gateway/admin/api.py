"""The admin API: the operator's tasks as JSON over HTTP, on the admin listener only.

Every path is under ``/admin/`` (described in ``docs/operating.md``); ``/metrics`` and
``/healthz`` are served beside it by the gateway's admin listener. A token
(``Authorization: Bearer``, compared in constant time) is required unless the listener is on
loopback or a unix socket, which :func:`admin_token_needed` decides when the listener is set up.
Bodies are JSON objects of at most 64 KiB; every refusal is a JSON ``{"error", "message"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import parse_qs, unquote

from ratekeeper.errors import RatekeeperError
from ratekeeper.gateway.admin.operator import Operator
from ratekeeper.http.asgi import Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "AdminAPI", "admin_token_needed", "bearer_authorised"]

MAX_BODY_BYTES = 65_536


def admin_token_needed(address: str) -> bool:
    """Whether an admin listener on ``address`` (``host:port`` or ``unix:PATH``) needs a token:
    always, unless it is a unix socket or a loopback address."""
    if address.startswith("unix:"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def bearer_authorised(scope: Scope, token: bytes | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant
    time); always true when ``token`` is ``None``. The admin API and the live page share it."""
    if token is None:
        return True
    given = b""
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
    return hmac.compare_digest(given, token)


Result = tuple[int, dict[str, Any]]


def _error(status: int, code: str, message: str) -> Result:
    return status, {"error": code, "message": message}


class _Request:
    __slots__ = ("body", "method", "parts", "query")

    def __init__(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> None:
        self.method = method
        self.parts = parts
        self.query = query
        self.body = body


class AdminAPI:
    """The ASGI app of ``/admin/...`` over an :class:`Operator`; ``token`` (when not ``None``)
    is required of every request."""

    def __init__(self, operator: Operator, *, token: str | None) -> None:
        self.operator = operator
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, data = await self._answer(scope, receive)
        body = json.dumps(data).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> Result:
        if not bearer_authorised(scope, self._token):
            return _error(401, "unauthorized", "a valid admin token is required (Bearer)")
        request = await _read(scope, receive)
        if not isinstance(request, _Request):
            return request
        try:
            return await self._route(request)
        except RatekeeperError as exc:
            return _error(400, "invalid", str(exc))

    async def _route(self, request: _Request) -> Result:
        op = self.operator
        parts, method, query = request.parts, request.method, request.query
        data = request.body if isinstance(request.body, dict) else None
        needs_object = method == "POST" and parts in (["keys"], ["blocks"], ["lockouts", "lift"])
        if needs_object and data is None:
            return _error(400, "bad_request", "expected a JSON object as the request body")
        body = data or {}
        match parts, method:
            case ["keys"], "GET":
                return 200, op.keys()
            case ["keys"], "POST":
                return 200, await asyncio.to_thread(op.put_key, body)
            case ["keys", digest], "GET":
                return 200, await op.inspect(digest, query.get("address"))
            case ["keys", digest], "DELETE":
                if not await asyncio.to_thread(op.remove_key, digest):
                    return _error(404, "not_found", "no such key was added at run time")
                return 200, {"removed": digest}
            case ["keys", digest, "reset"], "POST":
                return 200, await op.reset_key(digest, query.get("address"))
            case ["lockouts", "lift"], "POST":
                return 200, await op.lift_lockout(body.get("hash"), body.get("address"))
            case ["blocks"], "GET":
                return 200, op.blocks()
            case ["blocks"], "POST":
                return 200, await asyncio.to_thread(op.block, body)
            case ["blocks"], "DELETE":
                kind, value = query.get("kind", ""), query.get("value", "")
                if not await asyncio.to_thread(op.unblock, kind, value):
                    return _error(404, "not_found", f"no {kind} block on {value!r}")
                return 200, {"unblocked": {"kind": kind, "value": value}}
            case ["near-limits"], "GET":
                top = query.get("top", "10")
                if not top.isdigit() or len(top) > 6:
                    return _error(400, "bad_request", f"top: expected a whole number, got {top!r}")
                return 200, await asyncio.to_thread(op.near_limits, int(top))
            case ["policy"], "GET":
                return 200, op.policy()
            case ["policy", "reload"], "POST":
                return 200, await asyncio.to_thread(op.reload)
        return _error(404, "not_found", f"no admin endpoint {method} /admin/{'/'.join(parts)}")


async def _read(scope: Scope, receive: Receive) -> _Request | Result:
    path: str = scope["path"]
    if not path.startswith("/admin/"):
        return _error(404, "not_found", "admin endpoints are under /admin/")
    parts = [unquote(p) for p in path[len("/admin/") :].split("/") if p]
    raw_query = scope.get("query_string", b"").decode("latin-1")
    query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _error(413, "too_large", f"expected a body of at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    body: Any = None
    if size:
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "expected a JSON body")
    return _Request(scope["method"], parts, query, body)
