"""The over-limit cache: refusals of keys known to be over their limits, answered from memory.

A store refused ``(limit_set, key)`` a cost ``c`` at ``t`` with a wait ``w``: every algorithm
here only counts up with charges and down with time, so that key cannot pass ``c`` (or more)
before ``t + w`` unless its state is reset or the limits change. :class:`OverLimitCache` wraps
any store and answers such requests without asking it, exactly:

- it never admits anything: a request it does not answer goes to the store;
- it refuses only what the store would refuse. The wait is the store's own (relative to the
  store's clock, read after ours, so the cached deadline is never late), minus the slack the
  algorithms allow at their edges (1 µs of float rounding, and for the sliding window the
  counter's millionth-of-a-request tolerance, 1 µs per second of its period);
- entries are keyed by the limit set's ``spec_id``, which covers its numbers: a policy reload
  that changes a limit never meets an entry of the old one, in this process or any other;
- a reset through this wrapper (the Limiter's, the admin API's) drops the entries at once; a
  reset this process does not see (another process or instance, a store reset behind the
  wrapper's back) is seen within ``max_age_s``, the cap on any entry's life (1 s by default).

Only real refusals are kept: a degraded decision (the store down, see
:class:`~ratekeeper.stores.fallback.FallbackStore`) and a peek never are. Memory is bounded by
``max_entries`` (about 0.6 kB each for a set of three limits): past it, the oldest entries go
first, and since no entry outlives ``max_age_s`` a flood of distinct keys only ever pushes out
entries that are about to expire. A store that forgets live state on its own (a
:class:`~ratekeeper.stores.memory.MemoryStore` over its ``max_entries``, a Redis server evicting
keys under ``maxmemory``) admits such a key afresh; the cache keeps refusing it for at most
``max_age_s``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence

from ratekeeper.algorithms import Algorithm, Step
from ratekeeper.decision import Decision, LimitState
from ratekeeper.errors import LimitConfigError
from ratekeeper.limit import LimitSet
from ratekeeper.stores.base import AsyncStore, Store, decides_on_loop

__all__ = ["OverLimitCache", "RecalledRefusal", "recalled"]

Items = Sequence[tuple[LimitSet, str]]

# Float rounding at epoch scale is ~2.4e-7 s per operation; the algorithms' own slack is 1e-6.
_ROUNDING_S = 1e-5
# The sliding window admits up to 1e-6 of a request over its amount: that much of the previous
# window's weight drains up to 1e-6 * period seconds before the wait it reports.
_SLIDING_SLACK = 1e-6


class _Entry:
    """One refused item: refused for a cost of ``cost`` or more until ``until``."""

    __slots__ = ("binding", "cost", "items", "memo", "refused_at", "results", "retry_at", "until")

    def __init__(
        self,
        until: float,
        cost: int,
        retry_at: float,
        refused_at: float,
        items: tuple[tuple[LimitSet, str]],
        results: list[Step],
    ) -> None:
        self.until = until
        self.cost = cost
        self.retry_at = retry_at
        self.refused_at = refused_at
        self.items = items
        self.results = results
        # What a caller derived from this refusal (a rendered answer), kept for its next hit.
        self.memo: object = None
        # The binding limit as the store reported it, ranked once.
        self.binding: LimitState | None = None


class RecalledRefusal(Decision):
    """A refusal answered by :class:`OverLimitCache`: the store's refusal of the same key, its
    waits counted down to ``now``. ``entries`` are the cached refusals it was made of."""

    __slots__ = ("entries",)

    def __init__(self, now: float, entries: Sequence[_Entry]) -> None:
        # Decision's fields set here directly: a refusal from memory is the hot path.
        self.allowed = False
        self.now = now
        self.entries = entries
        self._states = None
        self._binding = None
        if len(entries) == 1:
            entry = entries[0]
            self.retry_after_s = entry.retry_at - now
            self._items = entry.items
            self._results = entry.results
        else:
            self.retry_after_s = max(e.retry_at for e in entries) - now
            self._items = [item for e in entries for item in e.items]
            self._results = [step for e in entries for step in e.results]

    def _shift(self, state: LimitState) -> LimitState:
        # Each limit's wait was measured when the store refused; count it down to now.
        wait = state.retry_after_s
        if wait in (0.0, math.inf):
            return state
        entries = self.entries
        entry = entries[0]
        if len(entries) > 1:
            entry = next(
                e
                for e in entries
                if e.items[0][0].name == state.limit_set and e.items[0][1] == state.key
            )
        wait -= self.now - entry.refused_at
        return LimitState(
            state.limit,
            state.limit_set,
            state.key,
            state.remaining,
            state.reset_at,
            wait if wait > 1e-6 else 1e-6,
        )

    @property
    def states(self) -> tuple[LimitState, ...]:
        """Every limit's state, as the store reported it, waits counted down to now."""
        states = self._states
        if states is None:
            states = self._states = tuple(self._shift(s) for s in super().states)
        return states

    @property
    def binding(self) -> LimitState:
        """The limit that refused (see :class:`Decision`), its wait counted down to now."""
        binding = self._binding
        if binding is None:
            entries = self.entries
            if len(entries) == 1:
                # Ranked once per entry, not once per request answered from it.
                base = entries[0].binding
                if base is None:
                    base = entries[0].binding = super().binding
            else:
                base = super().binding
            binding = self._binding = self._shift(base)
        return binding


_new = object.__new__


def recalled(now: float, entry: _Entry) -> RecalledRefusal:
    """The :class:`RecalledRefusal` of one cached refusal at ``now`` (the Limiter's hot path)."""
    # Slots set here rather than by __init__: a class call runs __init__ in a nested
    # interpreter frame, which costs as much as the rest of the recall.
    refusal: RecalledRefusal = _new(RecalledRefusal)
    refusal.allowed = False
    refusal.now = now
    refusal.entries = (entry,)
    refusal._states = None
    refusal._binding = None
    refusal.retry_after_s = entry.retry_at - now
    refusal._items = entry.items
    refusal._results = entry.results
    return refusal


def _remembered(
    limit_set: LimitSet, key: str, results: list[Step], cost: int, now: float, max_age_s: float
) -> _Entry | None:
    """The entry for one item of a refused decision (its ``results``), or ``None`` if every
    limit of the item let the request through."""
    retry = 0.0
    certain = -math.inf
    for step, limit in zip(results, limit_set.limits, strict=True):
        if step[0]:
            continue
        wait = step[4]
        slack = _ROUNDING_S
        if limit.algorithm is Algorithm.SLIDING_WINDOW:
            slack += _SLIDING_SLACK * limit.period_s
        retry = max(retry, wait)
        certain = max(certain, wait - slack)
    if certain == -math.inf:
        return None
    until = min(now + certain, now + max_age_s)
    return _Entry(until, cost, now + retry, now, ((limit_set, key),), results)


class OverLimitCache:
    """Wraps ``store``; answers refusals of keys known to be over their limits from memory (see
    the module docstring): for at most ``max_age_s`` each, ``max_entries`` at most.

    With ``recalls=False`` :meth:`decide` always asks the store and only remembers its
    refusals, for a caller that calls :meth:`recall` itself when it chooses (the enforcer does,
    while its :class:`~ratekeeper.stores.fallback.FallbackStore` is healthy: a probe of a store
    that is down must reach it).
    """

    def __init__(
        self,
        store: Store | AsyncStore,
        *,
        max_age_s: float = 1.0,
        max_entries: int = 10_000,
        recalls: bool = True,
    ) -> None:
        if not isinstance(max_age_s, int | float) or not 0 < max_age_s < math.inf:
            raise LimitConfigError(
                f"max_age_s must be a finite number > 0 of seconds, got {max_age_s!r}"
            )
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise LimitConfigError(f"max_entries must be a whole number >= 1, got {max_entries!r}")
        self.store = store
        self.max_age_s = float(max_age_s)
        self.max_entries = max_entries
        self.recalls = recalls
        self.decides_on_loop = decides_on_loop(store)
        self._sync: Store | None = store if isinstance(store, Store) else None
        self._async: AsyncStore | None = store if isinstance(store, AsyncStore) else None
        # spec_id -> key -> entry: a lookup hashes two strings whose hashes are cached. Read
        # (never written) by Limiter.hit, whose allowed keys are not in it: a membership test
        # there costs a fifth of a call to recall.
        self.tables: dict[str, dict[str, _Entry]] = {}
        # How many refusals are kept (0: recall has nothing to look up).
        self.size = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<OverLimitCache refusals={self.size} over {self.store!r}>"

    def __len__(self) -> int:
        return self.size

    def recall(self, items: Items, cost: int, now: float) -> RecalledRefusal | None:
        """The refusal of ``items`` for ``cost`` at ``now`` if one of them is known to be over
        its limit, else ``None`` (then only the store can tell)."""
        tables = self.tables
        if len(items) == 1:
            limit_set, key = items[0]
            table = tables.get(limit_set.spec_id)
            if table is None:
                return None
            entry = table.get(key)
            if entry is None or now >= entry.until or cost < entry.cost:
                return None
            return recalled(now, entry)
        found = []
        for limit_set, key in items:
            table = tables.get(limit_set.spec_id)
            if table is not None:
                entry = table.get(key)
                if entry is not None and now < entry.until and cost >= entry.cost:
                    found.append(entry)
        return RecalledRefusal(now, found) if found else None

    def remember(self, items: Items, cost: int, now: float, decision: Decision) -> None:
        """Keep what a refusal the store made says about each of its items."""
        # Only the store's own refusals: a degraded one (a Decision subclass) counted nothing.
        if decision.allowed or type(decision) is not Decision:
            return
        # The raw steps: building every LimitState would cost more than the refusal.
        results = decision._results
        index = 0
        fresh = []
        for limit_set, key in items:
            size = len(limit_set.limits)
            steps = list(results[index : index + size])
            index += size
            entry = _remembered(limit_set, key, steps, cost, now, self.max_age_s)
            if entry is not None:
                fresh.append((limit_set.spec_id, key, entry))
        with self._lock:
            for spec_id, key, entry in fresh:
                table = self.tables.get(spec_id)
                if table is None:
                    table = self.tables[spec_id] = {}
                if table.pop(key, None) is None:
                    if self.size >= self.max_entries:
                        self._make_room(table)
                    self.size += 1
                table[key] = entry

    def forget(self, items: Items) -> None:
        """Drop the entries of ``items`` (their state was reset)."""
        with self._lock:
            for limit_set, key in items:
                # The same state under other numbers too (a policy reloaded since): a reset
                # is of the stored state, which every spec_id of one id shares.
                prefix = limit_set.id + ":"
                for spec_id, table in self.tables.items():
                    if spec_id.startswith(prefix) and table.pop(key, None) is not None:
                        self.size -= 1

    def _make_room(self, table: dict[str, _Entry]) -> None:
        victim = table if table else max(self.tables.values(), key=len)
        # A slice at once: dropping one key per insert would rescan the dict's freed slots.
        for key in list(itertools.islice(victim, max(1, self.max_entries // 100))):
            del victim[key]
            self.size -= 1

    # -- the store faces -------------------------------------------------------------------

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """A cached refusal, or the store's decision (its refusals remembered)."""
        if self.size and self.recalls and not peek:
            recalled = self.recall(items, cost, now)
            if recalled is not None:
                return recalled
        store = self._sync
        if store is None:
            raise LimitConfigError(f"{self.store!r} has no synchronous face: use decide_async")
        decision = store.decide(items, cost, now, peek=peek)
        if not peek and not decision.allowed:
            self.remember(items, cost, now, decision)
        return decision

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """The asyncio twin of :meth:`decide`."""
        if self.size and self.recalls and not peek:
            recalled = self.recall(items, cost, now)
            if recalled is not None:
                return recalled
        store = self._async
        if store is None:
            return self.decide(items, cost, now, peek=peek)
        decision = await store.decide_async(items, cost, now, peek=peek)
        if not peek and not decision.allowed:
            self.remember(items, cost, now, decision)
        return decision

    def reset(self, items: Items) -> None:
        """Forget these keys' refusals here and their state in the store."""
        self.forget(items)
        store = self._sync
        if store is None:
            raise LimitConfigError(f"{self.store!r} has no synchronous face: use reset_async")
        store.reset(items)

    async def reset_async(self, items: Items) -> None:
        """The asyncio twin of :meth:`reset`."""
        self.forget(items)
        if self._async is None:
            self.reset(items)
        else:
            await self._async.reset_async(items)

    def close(self) -> None:
        """Drop every entry and close the store."""
        self._clear()
        if self._sync is not None:
            self._sync.close()

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        self._clear()
        if self._async is None:
            self.close()
        else:
            await self._async.close_async()

    def _clear(self) -> None:
        with self._lock:
            self.tables.clear()
            self.size = 0
