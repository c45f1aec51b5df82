"""Fail modes per shard of a sharded store (Redis Cluster): a failed master's keys answer by the
fail mode, every other key keeps deciding on the store.

:class:`~ratekeeper.stores.fallback.FallbackStore` switches a whole store: once a call fails,
every key answers by the fail mode until a probe succeeds. On a cluster that turns one failed
master into an outage of all of them. :class:`ShardFallbackStore` keeps one ``FallbackStore``
per set of masters a decision touches (:meth:`~ratekeeper.stores.base.Sharded.shard_of`), all
sharing one local store, so only the decisions that touch a failed master are degraded, each
set of masters is probed on its own, and keys move back as soon as the map names their new
master (a promoted replica is a new shard: its keys start healthy). :func:`guard` picks the
wrapper a store needs.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, TypeAlias

from ratekeeper.decision import Decision
from ratekeeper.stores.base import AsyncStore, Items, Sharded, Store
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import FallbackStore
from ratekeeper.stores.memory import MemoryStore

__all__ = ["Guard", "ShardFallbackStore", "guard"]


class ShardFallbackStore:
    """:class:`FallbackStore`'s answers, applied per set of masters (see the module).

    Takes ``FallbackStore``'s options and offers its face: ``decide`` and ``reset`` with their
    asyncio twins, ``close``, and for metrics and health ``degraded`` (some shard is),
    ``outages``, ``failures``, ``degraded_decisions``, ``unenforced_decisions`` (summed over the
    shards), ``down_for_s`` and ``effective_mode`` (of the shard down longest). ``store`` is
    what the shards' decisions go through (``primary`` itself by default, or a wrapper of it
    such as the over-limit cache); ``primary`` says which shard items live on.
    """

    # Decisions are network round trips: asyncio callers await decide_async.
    decides_on_loop = False

    def __init__(
        self,
        primary: Sharded,
        mode: FailMode | str = FailMode.FALLBACK,
        *,
        store: Store | AsyncStore | None = None,
        local: MemoryStore | None = None,
        **options: Any,
    ) -> None:
        self.primary = primary
        self.local = local if local is not None else MemoryStore()
        inner: Any = store if store is not None else primary
        self._make = functools.partial(FallbackStore, inner, mode, local=self.local, **options)
        # Made once here so that bad options fail now, with FallbackStore's messages.
        self.mode = self._make().mode
        self._parts: dict[str, FallbackStore] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        down = sorted(shard for shard, part in self._parts.items() if part.degraded)
        return f"<ShardFallbackStore {self.mode.value} degraded={down} primary={self.primary!r}>"

    @property
    def degraded(self) -> bool:
        """Whether some shard answers by the fail mode now."""
        return any(part.degraded for part in list(self._parts.values()))

    @property
    def outages(self) -> int:
        """Outages so far, summed over the shards."""
        return sum(part.outages for part in list(self._parts.values()))

    @property
    def failures(self) -> int:
        """Failed calls to the cluster so far."""
        return sum(part.failures for part in list(self._parts.values()))

    @property
    def degraded_decisions(self) -> int:
        """Decisions answered by the fail mode so far."""
        return sum(part.degraded_decisions for part in list(self._parts.values()))

    @property
    def unenforced_decisions(self) -> int:
        """Requests admitted without a count (failing open) so far, summed over the shards."""
        return sum(part.unenforced_decisions for part in list(self._parts.values()))

    @property
    def down_for_s(self) -> float:
        """Seconds since the longest current outage of a shard began; 0 while all are healthy."""
        return max((part.down_for_s for part in list(self._parts.values())), default=0.0)

    @property
    def effective_mode(self) -> FailMode:
        """How the shard down longest decides now (see :attr:`FallbackStore.effective_mode`)."""
        parts = [part for part in list(self._parts.values()) if part.degraded]
        if not parts:
            return self.mode
        return max(parts, key=lambda part: part.down_for_s).effective_mode

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide on the cluster, or by the fail mode while a master of these items is down."""
        return self._part(items).decide(items, cost, now, peek=peek)

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """The asyncio twin of :meth:`decide`."""
        return await self._part(items).decide_async(items, cost, now, peek=peek)

    def reset(self, items: Items) -> None:
        """Forget these keys on the cluster (if their master answers) and the local store."""
        self._part(items).reset(items)

    async def reset_async(self, items: Items) -> None:
        """The asyncio twin of :meth:`reset`."""
        await self._part(items).reset_async(items)

    def close(self) -> None:
        """Close the store's connections and the local store."""
        # A fresh part closes exactly what every part shares: the store and the local store.
        self._make().close()

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        await self._make().close_async()

    def _part(self, items: Items) -> FallbackStore:
        shard = self.primary.shard_of(items)
        part = self._parts.get(shard)
        if part is None:
            with self._lock:
                part = self._parts.setdefault(shard, self._make())
        return part


Guard: TypeAlias = FallbackStore | ShardFallbackStore
"""What decisions go through: the store, its fail mode applied while it (or a shard) is down."""


def guard(
    primary: Store | AsyncStore,
    mode: FailMode | str,
    *,
    store: Store | AsyncStore | None = None,
    **options: Any,
) -> Guard:
    """The fail-mode wrapper ``primary`` needs: per shard for a sharded store (Redis Cluster), whole
    otherwise. Decisions go through ``store`` (``primary`` by default)."""
    inner = store if store is not None else primary
    if isinstance(primary, Sharded) and primary.sharded:
        return ShardFallbackStore(primary, mode, store=inner, **options)
    return FallbackStore(inner, mode, **options)
