"""Opening an SQLite store's file: WAL mode, the schema, and waiting for its write lock."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ratekeeper.errors import StoreError

__all__ = ["SQLITE_BUSY", "BusyWait", "initialise", "store_error", "switch_to_wal"]

# ``PRAGMA application_id`` marks the file as ours ("rkpr"), so pointing the store at another
# program's database fails instead of adding a table to it.
_APPLICATION_ID = 0x726B7072
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ratekeeper_state ("
    " limit_set TEXT NOT NULL,"
    " key_hash BLOB NOT NULL,"
    " state BLOB NOT NULL,"
    " expires_at REAL NOT NULL,"
    " PRIMARY KEY (limit_set, key_hash)"
    ") WITHOUT ROWID",
)
# The primary result code of a lock held by another connection.
SQLITE_BUSY = 5
# Waits for another process's write lock, doubling: it is held for tens of µs per decision.
_FIRST_PAUSE_S = 0.00005
_LAST_PAUSE_S = 0.005


class BusyWait:
    """Waits out another process's write lock. SQLite's own busy handler sleeps 1 ms, then 2,
    5, 10...: far longer than a decision holds the lock (tens of µs). So the connection has no
    busy timeout, and a decision waits here, in short pauses, up to ``busy_timeout_s``."""

    __slots__ = ("deadline", "pause")

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.pause = _FIRST_PAUSE_S

    def waited(self, exc: sqlite3.Error) -> bool:
        """Pause and return True if ``exc`` is a busy lock and time is left, else False."""
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_BUSY:
            return False
        if time.monotonic() + self.pause > self.deadline:
            return False
        time.sleep(self.pause)
        self.pause = min(2 * self.pause, _LAST_PAUSE_S)
        return True


def switch_to_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> str:
    """Set WAL mode, waiting up to ``busy_timeout_s`` for other openers.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another process is doing the same: two
    processes opening one new file together would otherwise fail.
    """
    deadline = time.monotonic() + busy_timeout_s
    pause = 0.005
    while True:
        try:
            mode: str = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.1)
        else:
            return mode


def initialise(conn: sqlite3.Connection, path: Path) -> None:
    """Check that the file is ours (or new) at the schema version we read, and create the
    table."""
    # The pragma writes double as the read-only check: SQLite opens an unwritable file
    # read-only without complaint, and would only fail at the first charge.
    conn.execute("BEGIN IMMEDIATE")
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if app_id != _APPLICATION_ID and (app_id or tables):
            raise StoreError(
                f"SQLite store {str(path)!r} is not a ratekeeper file (it holds "
                f"{tables} other schema object(s), application_id {app_id}); "
                "give ratekeeper a file of its own"
            )
        if app_id == _APPLICATION_ID and version != _SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {str(path)!r} has schema version {version}, this "
                f"ratekeeper reads version {_SCHEMA_VERSION}; move the file aside to start "
                "afresh"
            )
        conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def store_error(path: Path, busy_timeout_s: float, exc: sqlite3.Error, action: str) -> StoreError:
    """``exc`` as the store's error: what failed, on which file, and what to check."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_READONLY"):
        hint = (
            "the file or its directory is read-only; the store needs write access to both "
            "(SQLite creates -wal and -shm files beside the database)"
        )
    elif name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT"):
        hint = "the file is corrupted or not an SQLite database; move it aside to start afresh"
    elif name.startswith("SQLITE_BUSY"):
        hint = (
            f"another connection held the database for more than {busy_timeout_s:g} s "
            "(busy_timeout_s)"
        )
    elif name.startswith("SQLITE_CANTOPEN"):
        hint = "check that the directory exists and is writable"
    else:
        hint = "the SQLite file could not be used"
    return StoreError(f"SQLite store {str(path)!r}: {action} failed ({exc}): {hint}")
