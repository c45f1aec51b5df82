"""WSGI middleware serving the policy's cached GET answers (see :mod:`ratekeeper.http.cache`).

    app.wsgi_app = RateLimitWSGIMiddleware(ResponseCacheWSGIMiddleware(app.wsgi_app, plan), plan)

:class:`~ratekeeper.http.wsgi.RateLimitWSGIMiddleware` composes it by itself when a rule of the
policy has a ``cache_ttl``; inside it, a hit is served after the caller's limits were charged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ratekeeper.clock import Clock, system_clock
from ratekeeper.http.cache import (
    CachedResponse,
    CacheKeys,
    ResponseCache,
    ResponseStore,
    cacheable_headers,
    ticket_of,
)
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.wsgi_environ import (
    Environ,
    StartResponse,
    WSGIApp,
    status_line,
    view_from_environ,
)

__all__ = ["ResponseCacheWSGIMiddleware"]


class ResponseCacheWSGIMiddleware:
    """Answer cacheable GET requests from ``cache`` (in this process by default) while fresh;
    keep the app's complete 200 answers for their rule's TTL."""

    def __init__(
        self,
        app: WSGIApp,
        plan: CompiledPolicy,
        *,
        cache: ResponseStore | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.keys = CacheKeys(plan)
        self.cache: ResponseStore = cache or ResponseCache.for_plan(plan, clock)
        self._max_body = plan.policy.cache.max_body_bytes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        entry = None
        if environ.get("REQUEST_METHOD") == "GET":
            view = view_from_environ(environ, self.keys.wanted)
            entry = self.keys.entry(view, ticket_of(environ))
        if entry is None:
            return self.app(environ, start_response)
        key, ttl_s = entry
        hit = self.cache.get(key)
        if hit is not None:
            headers = [*hit.headers, ("X-Cache", "HIT"), ("Content-Length", str(len(hit.body)))]
            start_response(status_line(hit.status), headers)
            return [hit.body]
        seen: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = status[:3], headers
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        return _Keep(body, self._max_body, lambda data: self._keep(key, ttl_s, seen, data))

    def _keep(self, key: str, ttl_s: float, seen: dict[str, Any], body: bytes) -> None:
        if seen.get("status") == "200":
            cached = CachedResponse(200, cacheable_headers(seen["headers"]), body)
            self.cache.put(key, ttl_s, cached)


class _Keep:
    """The app's body iterable, passed through; hands the whole body on once it was read
    (unless it grew past ``max_body`` bytes: a long stream is not buffered)."""

    __slots__ = ("_body", "_done", "_max_body")

    def __init__(self, body: Iterable[bytes], max_body: int, done: Callable[[bytes], None]) -> None:
        self._body = body
        self._max_body = max_body
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        chunks: list[bytes] | None = []
        left = self._max_body
        for chunk in self._body:
            if chunks is not None:
                left -= len(chunk)
                chunks.append(chunk)
                if left < 0:
                    chunks = None
            yield chunk
        if chunks is not None:
            self._done(b"".join(chunks))

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
