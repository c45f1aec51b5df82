"""The response cache shared through the store, so every worker and instance answers alike.

With one process per worker, an in-process cache gives each worker its own copy: two identical
requests within the cache window could get different data ("two identical requests within the
cache window return the same data", as the radio API promises). When the store is shared
(SQLite file, Redis), answers are kept beside it instead (:mod:`ratekeeper.stores.expiring`).

A cache that fails is a miss, never an error answer: the request goes to the app, and one log
line says the cache is unavailable (one more when it works again).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ratekeeper.clock import Clock
from ratekeeper.errors import StoreError
from ratekeeper.http.cache import CachedResponse, ResponseCache, ResponseStore, caches
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.workers import warn_if_split
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.expiring import ExpiringValues, RedisValues, SQLiteValues

__all__ = ["SharedResponseCache", "middleware_enforcer", "response_cache_beside"]

log = logging.getLogger("ratekeeper.http")


def _encode(response: CachedResponse) -> bytes:
    head = json.dumps([response.status, response.headers], separators=(",", ":"))
    return head.encode() + b"\n" + response.body


def _decode(data: bytes) -> CachedResponse | None:
    head, _, body = data.partition(b"\n")
    try:
        status, headers = json.loads(head)
        pairs = tuple((str(name), str(value)) for name, value in headers)
    except (ValueError, TypeError):
        return None  # not ours, or from another version: a miss
    return CachedResponse(int(status), pairs, body)


class SharedResponseCache:
    """Cached answers in ``values`` (shared by every process using the same store)."""

    def __init__(self, values: ExpiringValues, *, max_body_bytes: int, clock: Clock) -> None:
        self.values = values
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._failing = False

    def __repr__(self) -> str:
        return f"<SharedResponseCache {self.values!r}>"

    def _failed(self, exc: StoreError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("response cache unavailable, answering without it: %s", exc)

    def _worked(self) -> None:
        if self._failing:
            self._failing = False
            log.info("response cache available again")

    def get(self, key: str) -> CachedResponse | None:
        """The fresh answer under ``key`` (``None`` also when the cache cannot be read)."""
        try:
            data = self.values.get(key, self._clock())
        except StoreError as exc:
            self._failed(exc)
            return None
        self._worked()
        return None if data is None else _decode(data)

    def put(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """Keep ``response`` for ``ttl_s`` seconds (if small enough; never raises)."""
        if len(response.body) > self.max_body_bytes:
            return
        try:
            self.values.put(key, _encode(response), self._clock(), ttl_s)
        except StoreError as exc:
            self._failed(exc)
        else:
            self._worked()

    async def get_async(self, key: str) -> CachedResponse | None:
        """The asyncio twin of :meth:`get`."""
        try:
            data = await self.values.get_async(key, self._clock())
        except StoreError as exc:
            self._failed(exc)
            return None
        self._worked()
        return None if data is None else _decode(data)

    async def put_async(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """The asyncio twin of :meth:`put`."""
        if len(response.body) > self.max_body_bytes:
            return
        try:
            await self.values.put_async(key, _encode(response), self._clock(), ttl_s)
        except StoreError as exc:
            self._failed(exc)
        else:
            self._worked()

    def close(self) -> None:
        """Release the backend's connections."""
        self.values.close()


def response_cache_beside(
    store: Store | AsyncStore, url: str, plan: CompiledPolicy, clock: Clock
) -> ResponseStore:
    """The response cache for a policy served on ``store`` (opened from ``url``): shared beside
    an SQLite or Redis store, in this process otherwise."""
    from ratekeeper.stores.sqlite import SQLiteStore  # noqa: PLC0415 (no cycle, only lazy)

    max_body = plan.policy.cache.max_body_bytes
    if isinstance(store, SQLiteStore):
        values: ExpiringValues = SQLiteValues(store.path, busy_timeout_s=store.busy_timeout_s)
        return SharedResponseCache(values, max_body_bytes=max_body, clock=clock)
    if url.split("://", 1)[0].lower().startswith(("redis", "valkey")):
        return SharedResponseCache(RedisValues(url), max_body_bytes=max_body, clock=clock)
    return ResponseCache.for_plan(plan, clock)


def middleware_enforcer(
    policy: Enforcer | CompiledPolicy | Policy | str | Path,
    *,
    store: Store | AsyncStore | str | None,
    clock: Clock,
    response_cache: ResponseStore | None,
) -> tuple[Enforcer, ResponseStore | None]:
    """What a middleware (ASGI or WSGI) runs ``policy`` with: its enforcer (a warning when the
    store would split the limits across workers), and its response cache when a rule caches."""
    enforcer = Enforcer.of(policy, store=store, clock=clock)
    warn_if_split(enforcer.store, enforcer.plan.policy.source)
    if not caches(enforcer.plan):
        return enforcer, None
    url = enforcer.store_url or ""
    cache = response_cache or response_cache_beside(enforcer.store, url, enforcer.plan, clock)
    return enforcer, cache
