"""The decision endpoint: the proxy in front forwards, ratekeeper only decides.

Each proxy asks in its own way, and all three are understood:

- nginx ``auth_request``: a subrequest to ``/_ratekeeper/decide`` carrying the original
  request's headers plus ``X-Original-URI`` and ``X-Original-Method`` (set in the config).
- Traefik ForwardAuth: a request to ``/_ratekeeper/decide`` with ``X-Forwarded-Uri`` and
  ``X-Forwarded-Method``.
- Envoy HTTP ext_authz: the original method, with the original path appended to the
  configured ``path_prefix`` (``/_ratekeeper/decide/v1/status?x=1``).

The answer is 200 with the rate-limit headers to pass on when the request may go ahead, or the
refusal itself (429 or 503, with ``Retry-After``, the headers and the policy's body), which
Traefik and Envoy return to the client as is. nginx's ``auth_request`` understands only 2xx,
401 and 403, so a request carrying ``X-Ratekeeper-Deny-Status: 403`` gets its refusals as that
status, with the real one in ``X-Ratekeeper-Status``, the body in ``X-Ratekeeper-Body`` for the
configuration to answer with (``examples/nginx/ratekeeper.conf``) and an empty body of its own,
so that nginx keeps its keepalive connection to ratekeeper.

The caller's address is the peer's (the proxy) unless the policy trusts it as a proxy
(``identity.trusted_proxies`` or ``serve --trust-proxy``): then ``X-Forwarded-For`` decides.
The proxy reports no answer back, so a policy's lockout (which counts failed answers) and
in-flight limits (which last until the answer) are not enforced through this endpoint.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ratekeeper.http.asgi import Send
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView

__all__ = ["DECIDE_PATH", "decide"]

DECIDE_PATH = "/_ratekeeper/decide"
_PREFIX = DECIDE_PATH + "/"
_ORIGINAL = {
    "x-original-uri": 0,
    "x-forwarded-uri": 1,
    "x-original-method": 2,
    "x-forwarded-method": 3,
    "x-ratekeeper-deny-status": 4,
}
_PRINTABLE = bytes(range(0x20, 0x7F))


def _view(
    scope: MutableMapping[str, Any], wanted: frozenset[str] | None
) -> tuple[RequestView, str]:
    """The original request as the proxy describes it, and the asked-for deny status."""
    found: list[str | None] = [None] * 5
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        slot = _ORIGINAL.get(name)
        if slot is not None:
            found[slot] = raw_value.decode("latin-1")
            continue
        if wanted is not None and name not in wanted:
            continue
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    path: str = scope["path"]
    method: str = scope["method"]
    query = scope.get("query_string", b"").decode("latin-1")
    if path.startswith(_PREFIX):
        path = path[len(DECIDE_PATH) :]
    else:
        uri = found[0] or found[1] or "/"
        path, _, query = uri.partition("?")
        method = found[2] or found[3] or method
    client = scope.get("client")
    view = RequestView(method.upper(), path or "/", headers, client[0] if client else None, query)
    return view, found[4] or ""


async def decide(
    enforcer: Enforcer,
    scope: MutableMapping[str, Any],
    send: Send,
    wanted: frozenset[str] | None,
) -> None:
    """Answer one decision request (see the module docstring)."""
    view, deny_as = _view(scope, wanted)
    ticket = await enforcer.admit_async(view)
    # No answer will be reported back: release what admission holds at once.
    await enforcer.complete_async(ticket, 200)
    answer = ticket.answer
    if answer is None or answer.status < 300:
        headers = ticket.headers if answer is None else answer.headers
        out = [
            (n.encode("latin-1"), v.encode("latin-1"))
            for n, v in headers
            if n.lower() not in ("content-type", "content-length")
        ]
        out.append((b"content-length", b"0"))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b""})
        return
    status = answer.status
    out = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
    body = answer.body
    if deny_as.isdigit() and 400 <= int(deny_as) <= 599:
        out.append((b"x-ratekeeper-status", str(status).encode()))
        text = body.strip()
        if not text.translate(None, _PRINTABLE):
            out.append((b"x-ratekeeper-body", text))
        status = int(deny_as)
        # nginx discards an auth_request answer's body without reading it, and closes the
        # keepalive connection unless the body is empty: the refusal travels in the header.
        body = b""
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
