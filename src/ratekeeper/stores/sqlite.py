"""The SQLite store: state in one file, shared exactly by the processes of one machine.

Each decision runs the pure core on the rows of its items, read from one snapshot, and writes
back only what was charged. A decision expected to write nothing (a peek, or a rejection: the
cached rows below say so, or else the store's previous decision charged nothing) reads with one
``SELECT`` outside any transaction (a statement reads one snapshot, and takes no write lock nor
waits behind other processes' writers); if the core charges after all, it goes on as a charge.
A charge is decided under the write lock on the newest rows. For one item with a row that is
one statement: an ``UPDATE`` of the row whose new state SQLite asks of the core through a
callback (a refusal raises there, aborting the statement: nothing is written). Otherwise it is
a transaction under ``BEGIN IMMEDIATE``: read, decide, write. Either way a charge is written
only over the state it was decided on, so two processes can never both read the same count and
both charge it; a rejection is exact as of its snapshot, taken during the call. WAL mode with
``synchronous=NORMAL``: what a power cut may lose is in ``docs/stores.md``.

The store also keeps the rows it last read or wrote (a bounded cache) with the file's
``PRAGMA data_version`` read with them (before them, or in their transaction), which changes
exactly when another connection has committed: while it is unchanged the cached rows are the
file's rows, and a decision that writes nothing is decided on them after that one pragma. A
charge always reads under the write lock (the cached decision reused if the rows are the same).
While other processes keep committing, the cache is dropped each time, and tried again only
after a pause that doubles: a busy shared file pays for at most an occasional pragma.

Rows are keyed by the limit set's ``id`` and a BLAKE2b hash of the key, so API keys never reach
the file. A row carries ``expires_at`` (last write + the set's TTL, after which its state equals
a fresh key's). Every ``purge_interval_s`` a sweep walks the table in key order, a slice of rows
per decision inside the decision's own transaction, and deletes the expired ones. There is
deliberately no index on ``expires_at``: each charge moves the row's entry in such an index,
which tripled the pages written per commit and halved the decisions per second.

The file must be on a local disk (SQLite's locks do not work over network file systems). Paths
follow SQLAlchemy's spelling: ``sqlite:///relative/file.db``, ``sqlite:////absolute/file.db``.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import struct
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ratekeeper.core import EntryState, decide
from ratekeeper.decision import Decision
from ratekeeper.errors import LimitConfigError, StoreError, StoreURLError
from ratekeeper.limit import LimitSet
from ratekeeper.stores.sqlite_file import (
    BusyWait,
    initialise,
    store_error,
    switch_to_wal,
)
from ratekeeper.stores.sqlite_rows import RowCodec, hash_key, select_rows

__all__ = ["SQLiteStore"]

_SWEEP_SLICE = 500

_UPSERT = "INSERT OR REPLACE INTO ratekeeper_state VALUES (?, ?, ?, ?)"
_DELETE = "DELETE FROM ratekeeper_state WHERE limit_set = ? AND key_hash = ?"
# A charge of one item in one statement: SQLite takes the write lock, reads the row and calls
# back into Python, which decides on it (see SQLiteStore._charge_row).
_CHARGE = (
    "UPDATE ratekeeper_state SET state = ratekeeper_charge(state), expires_at = ?"
    " WHERE limit_set = ? AND key_hash = ?"
)
_SWEEP = (
    "SELECT limit_set, key_hash, expires_at FROM ratekeeper_state"
    " WHERE (limit_set, key_hash) > (?, ?) ORDER BY limit_set, key_hash LIMIT ?"
)
# Sorts before every row: limit set names are never empty.
_SWEEP_START = ("", b"")

_URL_OPTIONS = {"busy_timeout_s", "purge_interval_s"}
# Recent keys only: the memos save work per decision, not memory per key.
_HASHES_CACHED = 4096
_ROWS_CACHED = 4096
_DATA_VERSION = "PRAGMA data_version"
# After the file changed under the row cache, wait this many transactions (doubling up to the
# maximum while it keeps changing) before trusting a cache again.
_MAX_PAUSE = 1024

# A connection inherited across fork() must be neither used nor closed in the child (SQLite's
# "How To Corrupt", 2.6): the child drops its stores' connections here and opens its own.
_OPEN_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class _Refused(Exception):
    """Raised in SQLite's callback to abort an in-place charge the limits refused."""


class SQLiteStore:
    """State in an SQLite file: survives restarts, exact across the processes of one machine.

    ``busy_timeout_s`` bounds how long a decision waits for another process's transaction
    before raising :class:`StoreError`. The file is opened, checked and initialised here, so a
    corrupted, foreign or read-only file fails at start-up with the path in the message.
    Thread-safe (one connection per store, used under a lock); the ``*_async`` twins run the
    same code in a worker thread. Set ``decides_on_loop`` (as the gateway does) to have asyncio
    callers (:func:`~ratekeeper.stores.base.decides_on_loop`) use the synchronous face on the
    event loop instead: a decision takes ~0.1 ms, less than the hop to a worker thread.
    """

    decides_on_loop = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        purge_interval_s: float = 30.0,
    ) -> None:
        if not isinstance(busy_timeout_s, int | float) or not 0 <= busy_timeout_s < math.inf:
            raise LimitConfigError(
                f"busy_timeout_s must be a finite number >= 0 of seconds, got {busy_timeout_s!r}"
            )
        if not isinstance(purge_interval_s, int | float) or not 0 < purge_interval_s < math.inf:
            raise LimitConfigError(
                f"purge_interval_s must be a finite number > 0 of seconds, got {purge_interval_s!r}"
            )
        self.path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StoreURLError(
                f"SQLiteStore needs a file path, got {str(path)!r}: "
                "use memory:// (MemoryStore) for state that lives in this process only"
            )
        self.busy_timeout_s = float(busy_timeout_s)
        self.purge_interval_s = float(purge_interval_s)
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._sweep_after: tuple[str, bytes] = _SWEEP_START
        self._closed = False
        self._hashes: dict[str, bytearray] = {}
        self._codecs: dict[str, RowCodec] = {}
        # (limit set id, key) -> the row's state (None: no row).
        self._rows: dict[tuple[str, str], EntryState | None] = {}
        self._version: int | None = None
        self._pause = 0
        self._backoff = 1
        self._charging = False
        # An in-place charge's arguments, and what SQLite's callback made of the row.
        # (items, now, cost, known rows, guess), read by _charge_row.
        self._in_place: tuple[Any, ...] | None = None
        self._outcome: tuple[EntryState, Decision, bool] | None = None
        self._callback_error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._connection()
        _OPEN_STORES.add(self)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db``, with optional
        ``?busy_timeout_s=5&purge_interval_s=30``."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite" or parts.netloc or len(parts.path) < 2:
            raise StoreURLError(
                f"cannot read SQLite store URL {url!r}: expected sqlite:///relative/file.db "
                "or sqlite:////absolute/file.db"
            )
        query = parse_qs(parts.query)
        unknown = set(query) - _URL_OPTIONS
        if unknown:
            raise StoreURLError(
                f"unknown option(s) {sorted(unknown)} in store URL {url!r}: "
                f"known options are {sorted(_URL_OPTIONS)}"
            )
        options: dict[str, float] = {}
        for name, values in query.items():
            try:
                options[name] = float(values[-1])
            except ValueError:
                raise StoreURLError(
                    f"{name} must be a number of seconds in {url!r}, got {values[-1]!r}"
                ) from None
        try:
            return cls(unquote(parts.path[1:]), **options)
        except LimitConfigError as exc:
            raise StoreURLError(f"{exc}, in store URL {url!r}") from None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SQLiteStore path={str(self.path)!r} {state}>"

    def decide(
        self,
        items: Sequence[tuple[LimitSet, str]],
        cost: int,
        now: float,
        *,
        peek: bool = False,
    ) -> Decision:
        """Decide and charge (unless ``peek``) in one transaction; see
        :class:`~ratekeeper.stores.base.Store`. Raises :class:`StoreError` naming the file."""
        with self._lock:
            cursor = self._cursor or self._connection()
            hashes = self._hashes
            params: list[str | bytearray] = []
            # A key not seen lately most likely has no row: no UPDATE is tried for it first.
            new = False
            for limit_set, key in items:
                digest = hashes.get(key)
                if digest is None:
                    if len(hashes) >= _HASHES_CACHED:
                        hashes.clear()
                    digest = hashes[key] = bytearray(hash_key(key))
                    new = True
                params += (limit_set.id, digest)
            wait = None
            while True:
                try:
                    return self._decide_once(cursor, items, params, cost, now, peek, new)
                except sqlite3.Error as exc:
                    wait = wait or BusyWait(self.busy_timeout_s)
                    if not wait.waited(exc):
                        raise self._error(exc, "deciding") from exc

    def _decide_once(
        self,
        cursor: sqlite3.Cursor,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
        cost: int,
        now: float,
        peek: bool,
        new: bool,
    ) -> Decision:
        """One attempt at a decision (see the module docstring); sqlite3 errors propagate."""
        # A due sweep deletes rows: that decision takes the write lock from the start.
        sweep = not peek and now >= self._next_purge
        known = None if sweep or self._version is None else self._known(items)
        guess = None
        if known is not None:
            guess = decide(items, known, now, cost)
            # A decision that writes nothing needs no transaction when no other connection has
            # committed since the cached rows were read.
            if (peek or guess[0] is None) and self._unchanged(cursor):
                self._charging = False
                return guess[1]
        # A decision that will likely charge skips the read: it reads under the write lock.
        likely = self._charging if guess is None else guess[0] is not None
        if not sweep and (peek or not likely):
            known = self._read(cursor, items, params)
            guess = decide(items, known, now, cost)
            if peek or guess[0] is None:
                self._charging = False
                return guess[1]
        has_row = not new if known is None else known[0] is not None
        if not sweep and len(items) == 1 and has_row:
            decision = self._charge_in_place(cursor, items, params, cost, now, known, guess)
            if decision is not None:
                return decision
        return self._decide_in(cursor, items, params, cost, now, known, guess)

    def _read(
        self,
        cursor: sqlite3.Cursor,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
    ) -> list[EntryState | None]:
        """Every item's row, read by one statement (one snapshot, no lock), into the row
        cache."""
        version, entries = self._read_rows(cursor, items, params)
        if version is not None:
            self._version = version
        if self._version is not None:
            self._remember(items, entries)
        return entries

    def _read_rows(
        self,
        cursor: sqlite3.Cursor,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
    ) -> tuple[int | None, list[EntryState | None]]:
        """Every item's row by one statement, and the file's data version when the row cache
        is to be refreshed: read first, so never newer than the rows (a commit in between only
        makes the cache look stale)."""
        version = None
        if self._version is None:
            if self._pause:
                self._pause -= 1
            else:
                version = cursor.execute(_DATA_VERSION).fetchone()[0]
        entries: list[EntryState | None] = [None] * len(items)
        for index, blob in cursor.execute(select_rows(len(items)), params):
            entries[index] = self._decode(blob, items[index][0])
        return version, entries

    def _charge_in_place(
        self,
        cursor: sqlite3.Cursor,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
        cost: int,
        now: float,
        known: list[EntryState | None] | None,
        guess: tuple[list[EntryState] | None, Decision] | None,
    ) -> Decision | None:
        """One item decided by one ``UPDATE`` in SQLite's own transaction (write lock, read,
        decide, write: one statement instead of four), or ``None`` when it has no row yet.
        A refusal aborts the statement from the callback, so nothing is written."""
        self._in_place = (items, now, cost, known, guess)
        self._outcome = self._callback_error = None
        try:
            cursor.execute(_CHARGE, (now + items[0][0].ttl_s, *params))
        except sqlite3.OperationalError:
            error = self._callback_error
            if error is None:
                raise
            if not isinstance(error, _Refused):
                raise error from None
        finally:
            self._in_place = None
        outcome = self._outcome
        if outcome is None:
            return None
        entry, decision, self._charging = outcome
        if self._version is not None:
            self._remember(items, (entry,))
        return decision

    def _charge_row(self, blob: bytes) -> bytearray:
        """``ratekeeper_charge(state)``: the row's new state, the decision kept in
        ``_outcome``; a refusal raises (SQLite then aborts the statement, writing nothing)."""
        try:
            items, now, cost, known, guess = self._in_place  # type: ignore[misc]
            limit_set = items[0][0]
            entry = self._decode(blob, limit_set)
            if guess is not None and known == [entry]:
                new_entries, decision = guess
            else:
                new_entries, decision = decide(items, [entry], now, cost)
            if new_entries is None:
                self._outcome = (entry, decision, False)
                raise _Refused
            self._outcome = (new_entries[0], decision, True)
            return self._codec(limit_set).encode(new_entries[0])
        except BaseException as exc:
            # SQLite reports any exception here as "user-defined function raised exception":
            # the refusal and the store's own errors (a corrupted row) are kept to be told apart.
            self._callback_error = exc
            raise

    async def decide_async(
        self,
        items: Sequence[tuple[LimitSet, str]],
        cost: int,
        now: float,
        *,
        peek: bool = False,
    ) -> Decision:
        """The asyncio twin of :meth:`decide`, run in a worker thread."""
        return await asyncio.to_thread(self.decide, items, cost, now, peek=peek)

    def reset(self, items: Sequence[tuple[LimitSet, str]]) -> None:
        """Forget the state of these keys."""
        rows = [(limit_set.id, bytearray(hash_key(key))) for limit_set, key in items]
        with self._lock:
            cursor = self._connection()
            wait = BusyWait(self.busy_timeout_s)
            while True:
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    try:
                        cursor.executemany(_DELETE, rows)
                        cursor.execute("COMMIT")
                    finally:
                        self._forget()
                        if cursor.connection.in_transaction:
                            cursor.execute("ROLLBACK")
                    return
                except sqlite3.Error as exc:
                    if not wait.waited(exc):
                        raise self._error(exc, "resetting keys") from exc

    async def reset_async(self, items: Sequence[tuple[LimitSet, str]]) -> None:
        """The asyncio twin of :meth:`reset`."""
        await asyncio.to_thread(self.reset, items)

    def close(self) -> None:
        """Close the file; later calls raise :class:`StoreError`. Closing twice is harmless."""
        with self._lock:
            self._closed = True
            self._forget()
            conn, self._conn, self._cursor = self._conn, None, None
            if conn is not None:
                conn.close()

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        await asyncio.to_thread(self.close)

    def _connection(self) -> sqlite3.Cursor:
        """The cursor every statement runs on (one per connection: no cursor per call)."""
        cursor = self._cursor
        if cursor is None:
            if self._closed:
                raise StoreError(f"SQLite store {str(self.path)!r} is closed")
            self._conn = self._open()
            self._conn.create_function("ratekeeper_charge", 1, self._charge_row)
            cursor = self._cursor = self._conn.cursor()
            # Data versions count per connection: a new one shares nothing with the cache.
            self._forget()
        return cursor

    def _forget(self) -> None:
        """Drop the row cache (it is refilled, and trusted again, after a transaction)."""
        self._rows.clear()
        self._version = None

    def _known(self, items: Sequence[tuple[LimitSet, str]]) -> list[EntryState | None] | None:
        """Every item's cached state, or ``None`` unless all are cached."""
        rows = self._rows
        known = []
        for limit_set, key in items:
            row = (limit_set.id, key)
            if row not in rows:
                return None
            known.append(rows[row])
        return known

    def _unchanged(self, cursor: sqlite3.Cursor) -> bool:
        """Whether no other connection committed since the cache's data version was read.

        ``PRAGMA data_version`` changes exactly when another connection (of any process) has
        committed; this connection's own writes are in the cache already.
        """
        if cursor.execute(_DATA_VERSION).fetchone()[0] == self._version:
            self._backoff = 1
            return True
        self._forget()
        self._pause = self._backoff
        self._backoff = min(2 * self._backoff, _MAX_PAUSE)
        return False

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "opening") from exc
        try:
            mode = switch_to_wal(conn, self.busy_timeout_s)
            if mode != "wal":
                raise StoreError(
                    f"SQLite store {str(self.path)!r}: cannot switch to WAL mode "
                    f"(journal_mode is {mode!r}); put the file on a local file system"
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            initialise(conn, self.path)
            # Decisions and resets wait for the write lock themselves (see decide).
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "opening") from exc
            raise
        return conn

    def _decide_in(
        self,
        cursor: sqlite3.Cursor,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
        cost: int,
        now: float,
        known: list[EntryState | None] | None,
        guess: tuple[list[EntryState] | None, Decision] | None,
    ) -> Decision:
        """One transaction under the write lock: read, decide, write what was charged.
        ``guess`` is the core's answer for the states ``known``, reused when the rows read are
        the same. The rows read or written go into the row cache."""
        cursor.execute("BEGIN IMMEDIATE")
        try:
            if now >= self._next_purge:
                self._forget()
                self._purge(cursor, now)
            version, entries = self._read_rows(cursor, items, params)
            if guess is not None and entries == known:
                new_entries, decision = guess
            else:
                new_entries, decision = decide(items, entries, now, cost)
            if new_entries is not None:
                if len(items) == 1:
                    limit_set = items[0][0]
                    blob = self._codec(limit_set).encode(new_entries[0])
                    cursor.execute(_UPSERT, (*params, blob, now + limit_set.ttl_s))
                else:
                    cursor.executemany(
                        _UPSERT, self._rows_to_write(items, params, new_entries, now)
                    )
            cursor.execute("COMMIT")
        except BaseException:
            self._forget()
            if cursor.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        self._charging = new_entries is not None
        if version is not None:
            self._version = version
        if self._version is not None:
            self._remember(items, entries if new_entries is None else new_entries)
        return decision

    def _rows_to_write(
        self,
        items: Sequence[tuple[LimitSet, str]],
        params: list[str | bytearray],
        new_entries: list[EntryState],
        now: float,
    ) -> list[tuple[str | bytearray | float, ...]]:
        return [
            (
                params[2 * i],
                params[2 * i + 1],
                self._codec(items[i][0]).encode(entry),
                now + items[i][0].ttl_s,
            )
            for i, entry in enumerate(new_entries)
        ]

    def _remember(
        self, items: Sequence[tuple[LimitSet, str]], entries: Sequence[EntryState | None]
    ) -> None:
        """File the rows a transaction read or wrote in the row cache (emptied when full)."""
        cache = self._rows
        if len(cache) >= _ROWS_CACHED:
            cache.clear()
        for (limit_set, key), entry in zip(items, entries, strict=True):
            cache[limit_set.id, key] = entry

    def _codec(self, limit_set: LimitSet) -> RowCodec:
        codec = self._codecs.get(limit_set.id)
        if codec is None:
            codec = self._codecs[limit_set.id] = RowCodec(limit_set)
        return codec

    def _decode(self, blob: bytes, limit_set: LimitSet) -> EntryState:
        try:
            return self._codec(limit_set).decode(blob)
        except (ValueError, TypeError, struct.error) as exc:
            raise StoreError(
                f"SQLite store {str(self.path)!r}: unreadable state row for limit set "
                f"{limit_set.id!r} ({exc}); the file is corrupted, move it aside to start afresh"
            ) from exc

    def _purge(self, cursor: sqlite3.Cursor, now: float) -> None:
        rows = cursor.execute(_SWEEP, (*self._sweep_after, _SWEEP_SLICE)).fetchall()
        expired = [(limit_set, key) for limit_set, key, expires_at in rows if expires_at < now]
        if expired:
            cursor.executemany(_DELETE, expired)
        if len(rows) < _SWEEP_SLICE:
            self._sweep_after = _SWEEP_START
            self._next_purge = now + self.purge_interval_s
        else:
            # More rows to look at: the next decision sweeps the next slice.
            self._sweep_after = (rows[-1][0], rows[-1][1])

    def _error(self, exc: sqlite3.Error, action: str) -> StoreError:
        return store_error(self.path, self.busy_timeout_s, exc, action)


def _after_fork_in_child() -> None:
    for store in list(_OPEN_STORES):
        store._lock = threading.Lock()
        if store._conn is not None:
            _INHERITED_CONNECTIONS.append(store._conn)
            store._conn = store._cursor = None


os.register_at_fork(after_in_child=_after_fork_in_child)
