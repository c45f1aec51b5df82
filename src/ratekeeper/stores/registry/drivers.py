"""Where registry entries live: in memory (one process) or a table in the SQLite store's file.

A driver keeps entries (id -> JSON body) and a version that each write raises by one; a
deletion leaves the id with no body, so a reader asking for the changes since its version
sees it go. Beside the entries, each worker publishes a small sample (the callers nearest
their limits) under its own name with an expiry; :meth:`samples` returns the live ones.
The Redis driver is :mod:`ratekeeper.stores.registry.redis`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeAlias, TypeVar

from ratekeeper.errors import StoreError

__all__ = ["Changes", "MemoryRegistry", "RegistryDriver", "SQLiteRegistry"]

T = TypeVar("T")
# (version now, whether the changes are the whole registry, [(id, body or None if deleted)])
Changes: TypeAlias = tuple[int, bool, list[tuple[str, str | None]]]


class RegistryDriver(Protocol):
    """Entries with a version, and the workers' published samples (synchronous, thread-safe)."""

    def changes(self, since: int) -> Changes:
        """The entries written after version ``since`` (all of them when ``since`` is unknown
        here, e.g. the store was emptied)."""
        ...

    def write(self, entry_id: str, body: str | None) -> int:
        """Set (or, with ``None``, delete) an entry; returns the new version."""
        ...

    def publish(self, name: str, body: str, ttl_s: float) -> None:
        """Publish this worker's sample under ``name``, valid for ``ttl_s``."""
        ...

    def samples(self) -> list[str]:
        """The samples published and not yet expired."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MemoryRegistry:
    """Entries in this process's memory: for ``memory://`` stores and tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, str | None]] = {}
        self._version = 0
        self._samples: dict[str, tuple[float, str]] = {}
        self._clock = clock

    def __repr__(self) -> str:
        return f"<MemoryRegistry version={self._version}>"

    def changes(self, since: int) -> Changes:
        """See :meth:`RegistryDriver.changes`."""
        with self._lock:
            if since == self._version:
                return since, False, []
            full = since > self._version or since == 0
            after = 0 if full else since
            found = [(i, body) for i, (v, body) in self._entries.items() if v > after]
            return self._version, full, found

    def write(self, entry_id: str, body: str | None) -> int:
        """See :meth:`RegistryDriver.write`."""
        with self._lock:
            self._version += 1
            self._entries[entry_id] = (self._version, body)
            return self._version

    def publish(self, name: str, body: str, ttl_s: float) -> None:
        """See :meth:`RegistryDriver.publish`."""
        with self._lock:
            self._samples[name] = (self._clock() + ttl_s, body)

    def samples(self) -> list[str]:
        """See :meth:`RegistryDriver.samples`."""
        now = self._clock()
        with self._lock:
            return [body for until, body in self._samples.values() if until > now]

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ratekeeper_registry ("
    " id TEXT PRIMARY KEY, body TEXT, version INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS ratekeeper_registry_version ON ratekeeper_registry (version)",
    "CREATE TABLE IF NOT EXISTS ratekeeper_samples ("
    " name TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID",
)


class SQLiteRegistry:
    """Entries in two tables of the SQLite store's file (the store creates and checks the
    file first: see :func:`ratekeeper.stores.registry.registry_driver`)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite registry {str(path)!r}: cannot open it: {exc}") from None

    def __repr__(self) -> str:
        return f"<SQLiteRegistry {str(self.path)!r}>"

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"SQLite registry {str(self.path)!r}: {exc}") from None

    def changes(self, since: int) -> Changes:
        """See :meth:`RegistryDriver.changes`."""

        def read(db: sqlite3.Connection) -> Changes:
            db.execute("BEGIN")
            try:
                version = db.execute(
                    "SELECT coalesce(max(version), 0) FROM ratekeeper_registry"
                ).fetchone()[0]
                if version == since:
                    return version, False, []
                full = since > version or since == 0
                rows = db.execute(
                    "SELECT id, body FROM ratekeeper_registry WHERE version > ?",
                    (0 if full else since,),
                ).fetchall()
                return version, full, rows
            finally:
                db.execute("COMMIT")

        return self._run(read)

    def write(self, entry_id: str, body: str | None) -> int:
        """See :meth:`RegistryDriver.write`."""

        def write(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            version: int = db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM ratekeeper_registry"
            ).fetchone()[0]
            db.execute(
                "INSERT OR REPLACE INTO ratekeeper_registry VALUES (?, ?, ?)",
                (entry_id, body, version),
            )
            db.execute("COMMIT")
            return version

        return self._run(write)

    def publish(self, name: str, body: str, ttl_s: float) -> None:
        """See :meth:`RegistryDriver.publish`."""
        now = time.time()

        def publish(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM ratekeeper_samples WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO ratekeeper_samples VALUES (?, ?, ?)",
                (name, body, now + ttl_s),
            )
            db.execute("COMMIT")

        self._run(publish)

    def samples(self) -> list[str]:
        """See :meth:`RegistryDriver.samples`."""
        now = time.time()

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT body FROM ratekeeper_samples WHERE expires_at >= ?", (now,)
            ).fetchall()
            return [row[0] for row in rows]

        return self._run(read)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
