"""Keeps other web sites out of the admin listener, now that operators open it in a browser.

A page on another origin can make the operator's browser send requests to the admin listener:
simple ``POST``/``DELETE`` requests go out without a preflight, and with no token to ask for (a
loopback listener) they would reset keys or block addresses. So:

- a request a browser marks as coming from elsewhere (an ``Origin`` other than the ``Host`` it
  was sent to, or ``Sec-Fetch-Site`` other than ``same-origin``/``none``) is refused, except a
  plain navigation to the page itself (a link the operator follows);
- without a token, a TCP listener also answers only ``Host`` names that cannot be rebound: IP
  addresses and ``localhost`` (DNS rebinding would otherwise make another site same-origin).

Command-line clients (``ratekeeper admin``, ``top``, curl) send neither header and are unaffected.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from ratekeeper.http.asgi import ASGIApp, Receive, Scope, Send

__all__ = ["SameOrigin", "refusal"]

_LOCAL_FETCH = frozenset({b"same-origin", b"none"})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _unbindable(host: str) -> bool:
    name = _host_name(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refusal(scope: Scope, *, check_host: bool, navigation: bool = False) -> str | None:
    """Why this request must be refused, or ``None``. ``check_host``: refuse ``Host`` names
    that could be rebound; ``navigation``: a top-level ``GET`` from a link is allowed."""
    headers = dict(scope["headers"])
    host = headers.get(b"host", b"").decode("latin-1")
    server = scope.get("server")
    if check_host and host and server and server[1] is not None and not _unbindable(host):
        return (
            f"Host {host[:60]!r}: this admin listener has no token, so it answers only IP "
            "addresses and localhost (set RATEKEEPER_ADMIN_TOKEN to use another name)"
        )
    if navigation and headers.get(b"sec-fetch-mode") == b"navigate":
        return None
    site = headers.get(b"sec-fetch-site")
    origin = headers.get(b"origin")
    if site is not None and site not in _LOCAL_FETCH:
        return "requests from other web sites are refused (Sec-Fetch-Site)"
    if origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != host.lower():
        return "requests from other web sites are refused (Origin)"
    return None


class SameOrigin:
    """Wraps an admin app: requests :func:`refusal` names a reason for get a 403 JSON answer."""

    def __init__(self, app: ASGIApp, *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = refusal(scope, check_host=self.check_host) if scope["type"] == "http" else None
        if reason is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "forbidden", "message": reason}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
