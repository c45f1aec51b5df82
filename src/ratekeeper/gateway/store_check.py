"""What ``serve`` checks of its store before it takes traffic.

A damaged SQLite file (valid header, corrupted pages) opens without complaint and then fails
every decision, which on_store_error would treat as a short outage for ever. So before serving,
the file gets SQLite's own consistency check (``PRAGMA quick_check``, read-only), and every limit
of the policy is decided once without charging (a peek on a key no caller has), which also
catches numbers a store cannot work with. A store that fails either is refused with a message
naming it; the file is left as it is, for the operator to restore or move away. (A Redis store
checks itself when opened: it must answer, and load its script.)
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from ratekeeper.errors import StoreError
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import Store
from ratekeeper.stores.sqlite import SQLiteStore

__all__ = ["check_store"]

_PROBE_KEY = "ratekeeper:start-check"


def check_store(store: object, policy: Policy) -> None:
    """Raise :class:`StoreError` naming the store when it cannot serve ``policy``."""
    if isinstance(store, SQLiteStore):
        _check_sqlite_file(store.path)
    if not isinstance(store, Store):
        # An asyncio-only store (Redis) is reached once the loop runs; its failures then go
        # through on_store_error, bounded by fail_open_max.
        return
    now = time.time()
    for name, spec in policy.limits.items():
        if spec.limit_set is None:
            continue
        try:
            store.decide([(spec.limit_set, _PROBE_KEY)], 1, now, peek=True)
        except Exception as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise StoreError(
                f"store {store!r} cannot decide limit {name!r} ({detail}); not serving with a "
                "store that fails every decision"
            ) from None


def _check_sqlite_file(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            rows = db.execute("PRAGMA quick_check(5)").fetchall()
        # One line for the whole message: quick_check's findings may span several.
        found = "; ".join(" ".join(str(row[0]).split()) for row in rows)
        problem = None if rows == [("ok",)] else found
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem is not None:
        raise StoreError(
            f"SQLite store {str(path)!r} is damaged ({problem}); restore it from a backup or "
            "move it away (a new file is created in its place) and start again"
        )
