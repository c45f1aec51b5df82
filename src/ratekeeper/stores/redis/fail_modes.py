"""Fail modes per shard of a Redis Cluster: a failed master's keys answer by the fail mode, every
other key keeps deciding on the cluster.

:class:`~ratekeeper.stores.fallback.FallbackStore` switches a whole store: once a call fails,
every key answers by the fail mode until a probe succeeds. On a cluster that turns one failed
master into an outage of all of them. :class:`ShardFallbackStore` keeps one ``FallbackStore``
per set of masters a decision touches (:meth:`RedisStore.shard_of`), all sharing one local
store, so only the decisions that touch a failed master are degraded, each set of masters is
probed on its own, and keys move back as soon as the map names their new master (a promoted
replica is a new shard: its keys start healthy).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from ratekeeper.decision import Decision
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import FallbackStore
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.redis.codec import Items
from ratekeeper.stores.redis.store import RedisStore

__all__ = ["ShardFallbackStore"]


class ShardFallbackStore:
    """:class:`FallbackStore`'s answers, applied per set of masters (see the module).

    Takes ``FallbackStore``'s options and offers its face: ``decide`` and ``reset`` with their
    asyncio twins, ``close``, and for metrics ``degraded`` (some shard is), ``outages``,
    ``failures`` and ``degraded_decisions`` (summed over the shards).
    """

    # Decisions are network round trips: asyncio callers await decide_async.
    decides_on_loop = False

    def __init__(
        self,
        primary: RedisStore,
        mode: FailMode | str = FailMode.FALLBACK,
        *,
        probe_interval_s: float = 0.5,
        retry_after_s: float = 1.0,
        local: MemoryStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.local = local if local is not None else MemoryStore()
        self._make: Callable[[], FallbackStore] = functools.partial(
            FallbackStore,
            primary,
            mode,
            probe_interval_s=probe_interval_s,
            retry_after_s=retry_after_s,
            local=self.local,
            monotonic=monotonic,
        )
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
        """Close the cluster's connections and the local store."""
        self.primary.close()
        self.local.close()

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        await self.primary.close_async()
        await self.local.close_async()

    def _part(self, items: Items) -> FallbackStore:
        shard = self.primary.shard_of(items)
        part = self._parts.get(shard)
        if part is None:
            with self._lock:
                part = self._parts.setdefault(shard, self._make())
        return part
