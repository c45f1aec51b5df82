"""Limiter and AsyncLimiter: limit sets + a store + a clock -> :class:`Decision`.

Both are thin: they read the clock once, check the arguments, and hand the items to the store,
which applies the one pure core (:mod:`ratekeeper.core`). Only the I/O differs between them.
Refusals of keys already over their limits are answered from memory by an
:class:`~ratekeeper.stores.over_limit.OverLimitCache` in front of the store (exact: a reset
through the limiter is seen at once, one made elsewhere within ``over_limit_cache_s``; 0 turns
it off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.errors import LimitConfigError
from ratekeeper.limit import LimitSet
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.over_limit import OverLimitCache, recalled
from ratekeeper.stores.url import resolve_store

__all__ = ["AsyncLimiter", "Limiter"]


def _check(items: Sequence[tuple[LimitSet, str]], cost: int) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise LimitConfigError(f"cost must be a whole number >= 1, got {cost!r}")
    if not items:
        raise LimitConfigError("a decision needs at least one (limit_set, key) item")
    for item in items:
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], LimitSet)
            and isinstance(item[1], str)
        ):
            raise LimitConfigError(f"each item must be a (LimitSet, str key) pair, got {item!r}")


def _behind_cache(store: Any, over_limit_cache_s: float) -> Any:
    """``store`` behind an over-limit cache of entries living ``over_limit_cache_s`` at most."""
    if isinstance(over_limit_cache_s, bool) or not isinstance(over_limit_cache_s, int | float):
        raise LimitConfigError(
            f"over_limit_cache_s must be a number of seconds, got {over_limit_cache_s!r}"
        )
    if over_limit_cache_s == 0:
        return store
    return OverLimitCache(store, max_age_s=over_limit_cache_s)


def _one_item(store: Store) -> Callable[[LimitSet, str, int, float], Decision]:
    """``store``'s decision of one ``(limit_set, key)`` item: the memory store's own one-item
    face (no items tuple built), else ``decide`` on a one-item tuple."""
    if isinstance(store, MemoryStore):
        return store.decide_one

    def decide_one(limit_set: LimitSet, key: str, cost: int, now: float) -> Decision:
        return store.decide(((limit_set, key),), cost, now)

    return decide_one


class Limiter:
    """Synchronous limiter over a :class:`~ratekeeper.stores.base.Store` (memory by default)."""

    __slots__ = ("_cache", "_decide_one", "_decider", "clock", "store")

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        clock: Clock = system_clock,
        over_limit_cache_s: float = 1.0,
    ) -> None:
        self.store: Store = resolve_store(store)
        self.clock = clock
        self._decider: Store = _behind_cache(self.store, over_limit_cache_s)
        self._cache = self._decider if isinstance(self._decider, OverLimitCache) else None
        self._decide_one = _one_item(self.store)

    def __repr__(self) -> str:
        return f"<Limiter store={self.store!r}>"

    def hit(self, limits: LimitSet, key: str, cost: int = 1) -> Decision:
        """Charge ``cost`` to ``key`` under every limit of ``limits`` if all allow it."""
        if cost != 1 or type(key) is not str or type(limits) is not LimitSet:
            _check(((limits, key),), cost)
        # Callables read into locals before the call: a method-style call of a callable kept
        # in an attribute takes CPython's slow generic lookup.
        clock = self.clock
        now = clock()
        decide_one = self._decide_one
        cache = self._cache
        if cache is None:
            return decide_one(limits, key, cost, now)
        # The cache's decide and recall, unrolled: this is the hot call of the library.
        if cache.size:
            table = cache.tables.get(limits.spec_id)
            if table is not None:
                entry = table.get(key)
                if entry is not None and now < entry.until and cost >= entry.cost:
                    return recalled(now, entry)
        decision = decide_one(limits, key, cost, now)
        if not decision.allowed:
            cache.remember(((limits, key),), cost, now, decision)
        return decision

    def hit_many(self, items: Sequence[tuple[LimitSet, str]], cost: int = 1) -> Decision:
        """Charge several ``(limit_set, key)`` items at once: all of them, or none."""
        _check(items, cost)
        return self._decider.decide(tuple(items), cost, self.clock())

    def peek(self, limits: LimitSet, key: str) -> Decision:
        """The current state of ``key``, charging nothing."""
        return self.peek_many(((limits, key),))

    def peek_many(self, items: Sequence[tuple[LimitSet, str]]) -> Decision:
        """The current state of several items, charging nothing."""
        _check(items, 1)
        return self._decider.decide(tuple(items), 0, self.clock(), peek=True)

    def reset(self, limits: LimitSet, key: str) -> None:
        """Forget ``key``'s state under ``limits``: it starts afresh."""
        _check(((limits, key),), 1)
        self._decider.reset(((limits, key),))


class AsyncLimiter:
    """The asyncio twin of :class:`Limiter` over an :class:`~ratekeeper.stores.base.AsyncStore`."""

    __slots__ = ("_decider", "clock", "store")

    def __init__(
        self,
        store: AsyncStore | str | None = None,
        *,
        clock: Clock = system_clock,
        over_limit_cache_s: float = 1.0,
    ) -> None:
        self.store: AsyncStore = resolve_store(store)
        self.clock = clock
        self._decider: AsyncStore = _behind_cache(self.store, over_limit_cache_s)

    def __repr__(self) -> str:
        return f"<AsyncLimiter store={self.store!r}>"

    async def hit(self, limits: LimitSet, key: str, cost: int = 1) -> Decision:
        """Charge ``cost`` to ``key`` under every limit of ``limits`` if all allow it."""
        items = ((limits, key),)
        if cost != 1 or type(key) is not str or type(limits) is not LimitSet:
            _check(items, cost)
        return await self._decider.decide_async(items, cost, self.clock())

    async def hit_many(self, items: Sequence[tuple[LimitSet, str]], cost: int = 1) -> Decision:
        """Charge several ``(limit_set, key)`` items at once: all of them, or none."""
        _check(items, cost)
        return await self._decider.decide_async(tuple(items), cost, self.clock())

    async def peek(self, limits: LimitSet, key: str) -> Decision:
        """The current state of ``key``, charging nothing."""
        return await self.peek_many(((limits, key),))

    async def peek_many(self, items: Sequence[tuple[LimitSet, str]]) -> Decision:
        """The current state of several items, charging nothing."""
        _check(items, 1)
        return await self._decider.decide_async(tuple(items), 0, self.clock(), peek=True)

    async def reset(self, limits: LimitSet, key: str) -> None:
        """Forget ``key``'s state under ``limits``: it starts afresh."""
        _check(((limits, key),), 1)
        await self._decider.reset_async(((limits, key),))
