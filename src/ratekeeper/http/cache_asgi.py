"""ASGI middleware serving the policy's cached GET answers (see :mod:`ratekeeper.http.cache`).

    app = RateLimitMiddleware(ResponseCacheMiddleware(app, plan), plan)

:class:`~ratekeeper.http.asgi.RateLimitMiddleware` composes it by itself when a rule of the
policy has a ``cache_ttl``; inside it, a hit is served after the caller's limits were charged.
"""

from __future__ import annotations

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.asgi_scope import ASGIApp, Message, Receive, Scope, Send, view_from_scope
from ratekeeper.http.cache import (
    CachedResponse,
    CacheKeys,
    ResponseCache,
    ResponseStore,
    cacheable_headers,
    ticket_of,
)
from ratekeeper.http.compiled import CompiledPolicy

__all__ = ["ResponseCacheMiddleware"]


class ResponseCacheMiddleware:
    """Answer cacheable GET requests from ``cache`` (in this process by default) while fresh;
    keep the app's complete 200 answers for their rule's TTL."""

    def __init__(
        self,
        app: ASGIApp,
        plan: CompiledPolicy,
        *,
        cache: ResponseStore | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.keys = CacheKeys(plan)
        self.cache: ResponseStore = cache or ResponseCache.for_plan(plan, clock)
        self._max_body = plan.policy.cache.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = None
        if scope["type"] == "http" and scope["method"] == "GET":
            entry = self.keys.entry(view_from_scope(scope, self.keys.wanted), ticket_of(scope))
        if entry is None:
            await self.app(scope, receive, send)
            return
        key, ttl_s = entry
        hit = await self.cache.get_async(key)
        if hit is not None:
            await _send_hit(send, hit)
            return
        await self.app(scope, receive, _Capture(send, self.cache, key, ttl_s, self._max_body))


async def _send_hit(send: Send, hit: CachedResponse) -> None:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in hit.headers]
    headers += [(b"x-cache", b"HIT"), (b"content-length", str(len(hit.body)).encode())]
    await send({"type": "http.response.start", "status": hit.status, "headers": headers})
    await send({"type": "http.response.body", "body": hit.body})


class _Capture:
    """The ``send`` of a cacheable request: passes messages on, keeps a complete 200 answer
    (stops keeping one that grows past ``max_body`` bytes: a long stream is not buffered)."""

    __slots__ = ("_chunks", "_headers", "_key", "_left", "_send", "_store", "_ttl_s")

    def __init__(
        self, send: Send, store: ResponseStore, key: str, ttl_s: float, max_body: int
    ) -> None:
        self._send = send
        self._store = store
        self._key = key
        self._ttl_s = ttl_s
        self._left = max_body
        self._headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and message["status"] == 200:
            self._chunks = []
            self._headers = [
                (n.decode("latin-1"), v.decode("latin-1")) for n, v in message.get("headers", ())
            ]
        elif kind == "http.response.body" and self._chunks is not None:
            chunk = message.get("body", b"")
            self._left -= len(chunk)
            self._chunks.append(chunk)
            if self._left < 0:
                self._chunks = None
            elif not message.get("more_body", False):
                body = b"".join(self._chunks)
                self._chunks = None
                cached = CachedResponse(200, cacheable_headers(self._headers), body)
                await self._store.put_async(self._key, self._ttl_s, cached)
        await self._send(message)
