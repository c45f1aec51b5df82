"""Small values with an expiry, kept beside a shared store so that every process sees them.

What the response cache needs when several workers or instances share one store: a value put by
one is read by all until it expires. :class:`SQLiteValues` keeps them in a table of the SQLite
store's file (opened after the store has created and checked it), :class:`RedisValues` on the
Redis server of the store URL (``redis`` package, the ``redis`` extra). Keys are digested before
they reach the backend, so whatever the caller keys by (paths, queries, callers) is not stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol

from ratekeeper.errors import StoreError

__all__ = ["ExpiringValues", "RedisValues", "SQLiteValues", "digest_key"]

# Expired rows are swept once per this many writes, so a busy cache does not grow unbounded
# and a quiet one costs nothing.
_SWEEP_EVERY = 64


def digest_key(key: str) -> str:
    """The backend's name for ``key``: a BLAKE2b digest (hex)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class ExpiringValues(Protocol):
    """Values with an expiry, with sync and async twins; ``now`` is the caller's clock."""

    def get(self, key: str, now: float) -> bytes | None:
        """The value under ``key`` if it has not expired at ``now``."""
        ...

    def put(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds from ``now``."""
        ...

    async def get_async(self, key: str, now: float) -> bytes | None:
        """The asyncio twin of :meth:`get`."""
        ...

    async def put_async(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """The asyncio twin of :meth:`put`."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ratekeeper_values ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
)


class SQLiteValues:
    """Values in a table of the SQLite store's file. A read or write takes tens of
    microseconds, so the async twins run on the event loop, as the store's decisions do."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._writes = 0
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite values {str(self.path)!r}: cannot open them: {exc}") from None

    def __repr__(self) -> str:
        return f"<SQLiteValues {str(self.path)!r}>"

    def get(self, key: str, now: float) -> bytes | None:
        """See :meth:`ExpiringValues.get`."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT value FROM ratekeeper_values WHERE key = ? AND expires_at > ?",
                    (digest_key(key), now),
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite values {str(self.path)!r}: {exc}") from None
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """See :meth:`ExpiringValues.put`."""
        with self._lock:
            self._writes += 1
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO ratekeeper_values VALUES (?, ?, ?)",
                    (digest_key(key), value, now + ttl_s),
                )
                if self._writes % _SWEEP_EVERY == 0:
                    self._db.execute("DELETE FROM ratekeeper_values WHERE expires_at <= ?", (now,))
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite values {str(self.path)!r}: {exc}") from None

    async def get_async(self, key: str, now: float) -> bytes | None:
        """See :meth:`ExpiringValues.get` (on the event loop)."""
        return self.get(key, now)

    async def put_async(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """See :meth:`ExpiringValues.put` (on the event loop)."""
        self.put(key, value, now, ttl_s)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


class RedisValues:
    """Values on the Redis server of a ``redis://`` store URL, expiring by Redis's own clock
    (``SET ... PX``), so ``now`` is not needed there."""

    def __init__(self, url: str) -> None:
        import redis  # noqa: PLC0415 (the redis extra)

        from ratekeeper.stores.redis.url import parse_url  # noqa: PLC0415

        parsed = parse_url(url, prefix=None, timeout_s=None, key_salt=None)
        if parsed.cluster:
            raise StoreError(f"{parsed.masked}: a shared response cache needs a standalone Redis")
        self.url = parsed.masked
        self._prefix = f"{parsed.prefix}:values:"
        options: dict[str, Any] = {
            "socket_timeout": parsed.timeout_s,
            "socket_connect_timeout": parsed.timeout_s,
        }
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(parsed.target, **options)
        self._async_target = parsed.target
        self._async_options = options
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<RedisValues {self.url}>"

    def _fail(self, exc: BaseException) -> StoreError:
        return StoreError(f"Redis values {self.url}: {type(exc).__name__}: {exc}")

    def get(self, key: str, now: float) -> bytes | None:
        """See :meth:`ExpiringValues.get`."""
        try:
            found = self._client.get(self._prefix + digest_key(key))
        except self._errors as exc:
            raise self._fail(exc) from None
        return None if found is None else bytes(found)

    def put(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """See :meth:`ExpiringValues.put`."""
        try:
            self._client.set(self._prefix + digest_key(key), value, px=max(1, int(ttl_s * 1000)))
        except self._errors as exc:
            raise self._fail(exc) from None

    def _loop_client(self) -> Any:
        # One asyncio client per event loop: a client's connections belong to the loop that
        # made them.
        import redis.asyncio  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(self._async_target, **self._async_options)
            self._async[loop] = client
        return client

    async def get_async(self, key: str, now: float) -> bytes | None:
        """See :meth:`ExpiringValues.get`."""
        try:
            found = await self._loop_client().get(self._prefix + digest_key(key))
        except self._errors as exc:
            raise self._fail(exc) from None
        return None if found is None else bytes(found)

    async def put_async(self, key: str, value: bytes, now: float, ttl_s: float) -> None:
        """See :meth:`ExpiringValues.put`."""
        try:
            await self._loop_client().set(
                self._prefix + digest_key(key), value, px=max(1, int(ttl_s * 1000))
            )
        except self._errors as exc:
            raise self._fail(exc) from None

    def close(self) -> None:
        """Close the synchronous client (asyncio clients close with their loop)."""
        self._client.close()
