"""An HTTP cache in front of the pacing transport, so a cache hit spends no budget.

Built on hishel (RFC 9111 caching for httpx). Endpoints given a TTL (the radio API's table:
``/now-playing`` 15 s, ``/stations`` 1 h) are cached for exactly that long whatever the server's
headers say; every other GET follows the server's ``Cache-Control``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import anysqlite
import httpx
from hishel import AsyncBaseStorage, AsyncSqliteStorage, BaseStorage, SqliteStorage
from hishel.httpx import AsyncCacheTransport, CacheTransport

from ratekeeper.errors import ClientConfigError

__all__ = [
    "AsyncCachingTransport",
    "CachingTransport",
    "async_memory_storage",
    "endpoint_ttl",
    "memory_storage",
]


def memory_storage() -> SqliteStorage:
    """A hishel storage in this process's memory (hishel's own default is a file in the
    current directory)."""
    return SqliteStorage(connection=sqlite3.connect(":memory:", check_same_thread=False))


async def async_memory_storage() -> AsyncSqliteStorage:
    """The asyncio twin of :func:`memory_storage` (SQLite through ``anysqlite``); await it
    inside the event loop that will use it."""
    connection = await anysqlite.connect(":memory:", isolation_level=None)
    return AsyncSqliteStorage(connection=connection)


def _check_ttls(ttls: Mapping[str, float] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for prefix, ttl in (ttls or {}).items():
        if not isinstance(ttl, int | float) or ttl < 0:
            raise ClientConfigError(f"cache TTL for {prefix!r} must be seconds >= 0, got {ttl!r}")
        checked[prefix] = float(ttl)
    return checked


def endpoint_ttl(url: httpx.URL, ttls: Mapping[str, float]) -> float | None:
    """The TTL of the longest key of ``ttls`` that prefixes ``url`` (keys are full URL
    prefixes or paths such as ``/now-playing``), else ``None``."""
    text = str(url)
    path = url.path
    for prefix, ttl in sorted(ttls.items(), key=lambda item: -len(item[0])):
        if text.startswith(prefix) if "://" in prefix else path.startswith(prefix):
            return ttl
    return None


class CachingTransport(CacheTransport):
    """hishel's cache with per-endpoint TTLs; wrap a
    :class:`~ratekeeper.client.transport.RateLimitTransport` with it."""

    def __init__(
        self,
        transport: httpx.BaseTransport,
        *,
        ttls: Mapping[str, float] | None = None,
        storage: BaseStorage | None = None,
    ) -> None:
        super().__init__(transport, storage=storage or memory_storage(), rfc=True)
        self.ttls = _check_ttls(ttls)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer from the cache when fresh, else from the wrapped transport."""
        ttl = endpoint_ttl(request.url, self.ttls) if self.ttls else None
        if ttl is not None and "caching" not in request.extensions:
            request.extensions = {**request.extensions, "caching": {"rfc": False, "ttl": ttl}}
        return super().handle_request(request)


class AsyncCachingTransport(AsyncCacheTransport):
    """The asyncio twin of :class:`CachingTransport`. Its storage opens in the event loop, so
    it is given: ``await async_memory_storage()``, or any hishel async storage."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        storage: AsyncBaseStorage,
        ttls: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(transport, storage=storage, rfc=True)
        self.ttls = _check_ttls(ttls)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer from the cache when fresh, else from the wrapped transport."""
        ttl = endpoint_ttl(request.url, self.ttls) if self.ttls else None
        if ttl is not None and "caching" not in request.extensions:
            request.extensions = {**request.extensions, "caching": {"rfc": False, "ttl": ttl}}
        return await super().handle_async_request(request)
