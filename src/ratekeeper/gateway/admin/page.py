"""The operator's live page on the admin listener: ``/`` (the page), ``/live/...`` (its
script, styles and the vendored uPlot chart library) and ``GET /admin/live`` (the snapshot it
polls, see :mod:`ratekeeper.gateway.admin.live`).

The page and its files are the package's own and hold no data, so they are served without the
token; the snapshot asks for the same ``Authorization: Bearer`` token as the admin API. Every
answer forbids framing and any request leaving the admin listener (``Content-Security-Policy``),
so the page's buttons cannot be clicked from another site and nothing is fetched from a CDN;
requests from other sites (and, without a token, rebound host names) are refused
(:mod:`ratekeeper.gateway.admin.origin`).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ratekeeper.gateway.admin.api import bearer_authorised
from ratekeeper.gateway.admin.live import LiveSnapshot, LockoutSightings, scraper
from ratekeeper.gateway.admin.operator import Operator
from ratekeeper.gateway.admin.origin import refusal
from ratekeeper.http.asgi import ASGIApp, Receive, Scope, Send
from ratekeeper.http.engine import Enforcer

__all__ = ["LIVE_PATH", "LivePage", "live_page"]

LIVE_PATH = "/admin/live"
_STATIC = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/live/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/live/app.css": ("app.css", b"text/css; charset=utf-8"),
    "/live/uPlot.iife.min.js": ("uPlot.iife.min.js", b"text/javascript; charset=utf-8"),
    "/live/uPlot.min.css": ("uPlot.min.css", b"text/css; charset=utf-8"),
    "/live/uPlot.LICENSE": ("uPlot.LICENSE", b"text/plain; charset=utf-8"),
}
_SECURITY = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class LivePage:
    """The ASGI app of the live page's paths (:meth:`serves` says which)."""

    def __init__(self, live: LiveSnapshot, *, token: str | None) -> None:
        self.live = live
        self._token = token.encode() if token else None
        self._files: dict[str, bytes] = {}

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of the page's."""
        return path == LIVE_PATH or path in _STATIC

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        reason = refusal(scope, check_host=self._token is None, navigation=path != LIVE_PATH)
        if reason is not None:
            await _send(send, 403, _json("forbidden", reason), b"application/json")
        elif scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, _json("method_not_allowed", "expected GET"), b"application/json")
        elif path == LIVE_PATH:
            status, data = await self._snapshot(scope)
            await _send(send, status, json.dumps(data).encode(), b"application/json", status == 401)
        else:
            name, content_type = _STATIC[path]
            await _send(send, 200, self._file(name), content_type)

    async def _snapshot(self, scope: Scope) -> tuple[int, dict[str, Any]]:
        if not bearer_authorised(scope, self._token):
            return 401, {"error": "unauthorized", "message": "a valid admin token is required"}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        top = query.get("top", ["10"])[-1]
        size = self.live.operator.sample.size
        if not top.isdigit() or not 1 <= int(top) <= size:
            message = f"top: expected a whole number from 1 to {size}, got {top[:20]!r}"
            return 400, {"error": "bad_request", "message": message}
        return 200, await self.live.snapshot(int(top))

    def _file(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            data = (resources.files(__package__) / "static" / name).read_bytes()
            self._files[name] = data
        return data


def live_page(
    operator: Operator, gateway: ASGIApp, enforcer: Enforcer, *, store_url: str, token: str | None
) -> LivePage:
    """The live page of a worker: ``gateway`` answers ``/metrics`` for ``enforcer``, whose
    lockout refusals are noted from now on (see :class:`LockoutSightings`)."""
    enforcer.observe(LockoutSightings(operator.sample, lambda: enforcer))
    live = LiveSnapshot(operator, lambda: enforcer, scraper(gateway, enforcer), store_url=store_url)
    return LivePage(live, token=token)


def _json(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, challenge: bool = False
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *_SECURITY,
    ]
    if challenge:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
