"""The in-memory store: a lock around the pure core, for one process.

Memory stays bounded. Every key's state carries the time after which it equals a fresh key's;
new keys are filed in an expiry wheel (a bucket per slice of time), and due buckets are swept a
few hundred keys at a time on the decision path, so there is no thread or timer per key and no
long pause. ``max_entries`` is a hard cap: when a flood of distinct live keys reaches it, expired
keys go first, then the oldest keys of the limit set being written, which restart as fresh keys.
Size the cap above the number of keys that are live at once (about 135 bytes per key for three
fixed windows, 200 for three GCRA limits, resident).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from ratekeeper.algorithms import Algorithm
from ratekeeper.core import EntryState, decide, refusal
from ratekeeper.decision import Decision, charged
from ratekeeper.errors import LimitConfigError, StoreURLError
from ratekeeper.limit import STATE_WIDTHS, LimitSet

__all__ = ["MemoryStore"]

_SWEEP_BATCH = 64


class _Table:
    """The keys of one limit set: their states, and the expiry wheel of its keys.

    A key's states are kept as one flat tuple of numbers (``(start, count, start, count, ...)``
    for three fixed windows): a tuple per limit would cost 56 bytes more each. Window starts
    shared by many keys (the aligned windows') are kept as one float object.
    """

    __slots__ = ("entries", "granularity_s", "limit_set", "spans", "starts", "wheel")

    def __init__(self, limit_set: LimitSet) -> None:
        self.limit_set = limit_set
        # Values are the bare states: the expiry is derived from them when a bucket is due,
        # which saves a tuple and a float per key.
        self.entries: dict[str, tuple[float, ...]] = {}
        self.wheel: dict[int, list[str]] = {}
        self.granularity_s = max(limit_set.ttl_s / 4, 0.05)
        spans = []
        at = 0
        for limit in limit_set.limits:
            width = STATE_WIDTHS[limit.algorithm]
            spans.append((at, at + width))
            at += width
        self.spans = tuple(spans)
        # Offsets of the aligned window starts, and the last one seen at each.
        self.starts = {
            span[0]: 0.0
            for span, limit in zip(spans, limit_set.limits, strict=True)
            if limit.algorithm in (Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW)
        }

    def unpack(self, flat: tuple[float, ...]) -> EntryState:
        """The states of a stored flat tuple, one per limit."""
        return tuple([flat[a:b] for a, b in self.spans])

    def pack(self, entry: EntryState) -> tuple[float, ...]:
        """One flat tuple of a new key's states (every state present: it was charged)."""
        flat = list(itertools.chain.from_iterable(entry))  # type: ignore[arg-type]
        return self.interned(tuple(flat))

    def interned(self, flat: tuple[float, ...]) -> tuple[float, ...]:
        """``flat`` with its aligned window starts replaced by the last equal float object: keys
        written in one window share it (a key's later charges keep the object it holds)."""
        starts = self.starts
        if not starts:
            return flat
        numbers = list(flat)
        for at, last in starts.items():
            start = numbers[at]
            if start == last:
                numbers[at] = last
            else:
                starts[at] = start
        return tuple(numbers)

    def expires_at(self, flat: tuple[float, ...]) -> float:
        """When the key stored as ``flat`` becomes equal to a fresh key's state."""
        return max(
            flat[a] + limit.state_lifetime_s
            for (a, _), limit in zip(self.spans, self.limit_set.limits, strict=True)
        )

    def file(self, key: str, expires_at: float) -> float:
        """File ``key`` in the bucket due after ``expires_at``; returns when that bucket is due."""
        slot = int(expires_at // self.granularity_s) + 1
        bucket = self.wheel.get(slot)
        if bucket is None:
            self.wheel[slot] = [key]
        else:
            bucket.append(key)
        return slot * self.granularity_s


class MemoryStore:
    """State in this process's memory; thread-safe and usable from asyncio."""

    # A decision holds the lock for microseconds: asyncio callers decide on the loop.
    decides_on_loop = True

    def __init__(self, *, max_entries: int = 2_000_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise LimitConfigError(f"max_entries must be a whole number >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._tables: dict[str, _Table] = {}
        self._size = 0
        self._next_sweep = 0.0

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` or ``memory://?max_entries=N``."""
        query = parse_qs(urlsplit(url).query)
        unknown = set(query) - {"max_entries"}
        if unknown:
            raise StoreURLError(f"unknown option(s) {sorted(unknown)} in store URL {url!r}")
        raw = query.get("max_entries", ["2000000"])[-1]
        if not raw.isdigit():
            raise StoreURLError(f"max_entries must be a whole number in {url!r}, got {raw!r}")
        return cls(max_entries=int(raw))

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<MemoryStore keys={self._size} max_entries={self.max_entries}>"

    def decide(
        self,
        items: Sequence[tuple[LimitSet, str]],
        cost: int,
        now: float,
        *,
        peek: bool = False,
    ) -> Decision:
        """Decide and charge (unless ``peek``) atomically, under the store's lock."""
        if len(items) == 1:
            limit_set, key = items[0]
            return self.decide_one(limit_set, key, cost, now, peek)
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            tables = self._tables
            states: list[EntryState | None] = []
            for limit_set, key in items:
                table = tables.get(limit_set.id)
                flat = None if table is None else table.entries.get(key)
                states.append(None if flat is None else table.unpack(flat))  # type: ignore[union-attr]
            new_states, decision = decide(items, states, now, cost)
            if new_states is not None and not peek:
                for (limit_set, key), entry in zip(items, new_states, strict=True):
                    table = tables.get(limit_set.id)
                    if table is None or key not in table.entries:
                        self._insert(limit_set, key, entry, now)
                    else:
                        table.entries[key] = table.pack(entry)
            return decision

    def decide_one(
        self, limit_set: LimitSet, key: str, cost: int, now: float, peek: bool = False
    ) -> Decision:
        """:meth:`decide` for one ``(limit_set, key)`` item (most decisions; the Limiter's)."""
        # The lock's bound methods, not ``with``: a with-statement looks both up and calls its
        # exit with three arguments, which costs a tenth of this whole decision. Callables are
        # read into locals first: a method-style call of a callable kept in an attribute takes
        # CPython's slow generic lookup.
        acquire = self._acquire
        acquire()
        try:
            if now >= self._next_sweep:
                self._sweep(now)
            table = self._tables.get(limit_set.id)
            flat = None if table is None else table.entries.get(key)
            charge = limit_set.charge_flat
            new_flat = charge(flat, now, cost)
            if new_flat is not None:
                # A peek is decided as the charge would be, and nothing is kept.
                if not peek and flat is None:
                    self._insert_flat(limit_set, key, new_flat, now)
                elif not peek:
                    table.entries[key] = new_flat  # type: ignore[union-attr]
                return charged(now, limit_set, key, flat, cost)
            # The charger refuses exactly when a limit's step does: the steps give the waits.
            results, _ = limit_set.decide_flat(flat, now, cost)
            return refusal(((limit_set, key),), results, now)
        finally:
            release = self._release
            release()

    async def decide_async(
        self,
        items: Sequence[tuple[LimitSet, str]],
        cost: int,
        now: float,
        *,
        peek: bool = False,
    ) -> Decision:
        """The asyncio twin of :meth:`decide`: the lock is held for microseconds, never across
        an await, so calling it from the event loop does not block it."""
        return self.decide(items, cost, now, peek=peek)

    def reset(self, items: Sequence[tuple[LimitSet, str]]) -> None:
        """Forget the state of these keys."""
        with self._lock:
            for limit_set, key in items:
                table = self._tables.get(limit_set.id)
                if table is not None and table.entries.pop(key, None) is not None:
                    self._size -= 1

    async def reset_async(self, items: Sequence[tuple[LimitSet, str]]) -> None:
        """The asyncio twin of :meth:`reset`."""
        self.reset(items)

    def close(self) -> None:
        """Drop all state."""
        with self._lock:
            self._tables.clear()
            self._size = 0

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        self.close()

    def _insert(self, limit_set: LimitSet, key: str, entry: EntryState, now: float) -> None:
        self._insert_flat(limit_set, key, tuple(itertools.chain.from_iterable(entry)), now)  # type: ignore[arg-type]

    def _insert_flat(
        self, limit_set: LimitSet, key: str, flat: tuple[float, ...], now: float
    ) -> None:
        table = self._tables.get(limit_set.id)
        if table is None:
            table = self._tables[limit_set.id] = _Table(limit_set)
        if self._size >= self.max_entries:
            self._make_room(table, now)
        self._size += 1
        expires_at = now + limit_set.ttl_s
        due = table.file(key, expires_at)
        if due < self._next_sweep:
            self._next_sweep = due
        table.entries[key] = table.interned(flat)

    def _make_room(self, table: _Table, now: float) -> None:
        self._sweep(now, budget=None)
        if self._size < self.max_entries:
            return
        # Evict a slice at once: deleting from the front one key at a time would rescan the
        # dict's deleted slots on every insert.
        entries = table.entries
        for key in list(itertools.islice(entries, max(1, self.max_entries // 100))):
            del entries[key]
            self._size -= 1

    def _sweep(self, now: float, budget: int | None = _SWEEP_BATCH) -> None:
        """Drop expired keys from due wheel buckets, at most ``budget`` keys per call."""
        for table in self._tables.values():
            wheel = table.wheel
            due_slot = int(now // table.granularity_s)
            while wheel and budget != 0:
                slot = min(wheel)
                if slot > due_slot:
                    break
                keys = wheel.pop(slot)
                if budget is not None:
                    if len(keys) > budget:
                        wheel[slot] = keys[budget:]
                        keys = keys[:budget]
                    budget -= len(keys)
                self._expire(table, keys, now)
        if budget == 0:
            # More may be due: keep sweeping a batch per decision.
            self._next_sweep = now
        else:
            self._next_sweep = min(
                (min(t.wheel) * t.granularity_s for t in self._tables.values() if t.wheel),
                default=math.inf,
            )

    def _expire(self, table: _Table, keys: list[str], now: float) -> None:
        entries = table.entries
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                continue
            expires_at = table.expires_at(entry)
            if expires_at <= now:
                del entries[key]
                self._size -= 1
            else:
                # Written again since it was filed: file it under its new expiry.
                table.file(key, expires_at)
