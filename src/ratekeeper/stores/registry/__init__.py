"""The key registry: known keys (label, plan, account) and blocks, changed at run time.

:class:`Registry` holds the current :class:`RegistryView` for the hot path (a dict lookup, no
I/O) and refreshes it from its driver: a background thread asks the driver for the changes since
its version every ``interval_s`` (0.5 s by default), so every worker and every instance sharing
the store sees an edit within about that long. A write through this process's registry is seen
here at once. The driver is chosen by the store URL (:func:`registry_driver`): the SQLite store's
file, the Redis server, or this process's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ratekeeper.errors import StoreError
from ratekeeper.stores.registry.drivers import MemoryRegistry, RegistryDriver, SQLiteRegistry
from ratekeeper.stores.registry.model import (
    Block,
    KeyRecord,
    RegistryView,
    entry_of,
    key_digest,
)

__all__ = [
    "Block",
    "KeyRecord",
    "Registry",
    "RegistryDriver",
    "RegistryView",
    "key_digest",
    "registry_driver",
]

log = logging.getLogger("ratekeeper.registry")


def registry_driver(url: str) -> RegistryDriver:
    """The registry driver beside the store of ``url`` (SQLite file, Redis server or memory)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from ratekeeper.stores.sqlite import SQLiteStore  # noqa: PLC0415 (checks the file)

        store = SQLiteStore.from_url(url)
        path = Path(store.path)
        store.reset([])  # opens the file: creates it, or checks that it is ratekeeper's
        store.close()
        return SQLiteRegistry(path, busy_timeout_s=store.busy_timeout_s)
    if scheme.startswith(("redis", "rediss", "valkey", "valkeys")):
        from ratekeeper.stores.registry.redis import RedisRegistry  # noqa: PLC0415 (extra)

        return RedisRegistry(url)
    return MemoryRegistry()


class Registry:
    """The registry as this process sees it: ``view`` for lookups, writes through the driver.

    ``base`` are the keys of the policy file: entries written at run time win over them.
    """

    def __init__(
        self,
        driver: RegistryDriver,
        base: Iterable[KeyRecord] = (),
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.interval_s = interval_s
        self.clock = clock
        self._base = tuple(base)
        self._entries: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.view = RegistryView.build(0, self._base, {})

    def __repr__(self) -> str:
        return f"<Registry {self.driver!r} version={self.view.version} keys={len(self.view.keys)}>"

    def label_of(self, digest: str) -> str | None:
        """The label of the key with this digest, if the registry knows one."""
        record = self.view.keys.get(digest)
        return record.label if record is not None else None

    def set_base(self, base: Iterable[KeyRecord]) -> None:
        """Replace the policy file's keys (after a policy reload)."""
        with self._lock:
            self._base = tuple(base)
            self.view = RegistryView.build(self.view.version, self._base, self._entries)

    def refresh(self) -> bool:
        """Apply the driver's changes since this view; whether anything changed."""
        with self._lock:
            version, full, found = self.driver.changes(self.view.version)
            if version == self.view.version and not found:
                return False
            entries = {} if full else dict(self._entries)
            for entry_id, body in found:
                if body is None:
                    entries.pop(entry_id, None)
                else:
                    entries[entry_id] = body
            self._entries = entries
            self.view = RegistryView.build(version, self._base, entries)
            return True

    def put(self, item: KeyRecord | Block) -> None:
        """Add or replace a key record or a block, for every process sharing the store."""
        entry_id, body = entry_of(item)
        self.driver.write(entry_id, body)
        self.refresh()

    def remove(self, entry_id: str) -> bool:
        """Delete an entry (``key:<digest>``, ``block:<kind>:<value>``); whether it existed."""
        if entry_id not in self._entries:
            return False
        self.driver.write(entry_id, None)
        self.refresh()
        return True

    def start(self) -> None:
        """Start refreshing in a background thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._poll, name="ratekeeper-registry", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and close the driver."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.driver.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except StoreError as exc:
                if not self._failing:
                    log.warning("key registry: cannot refresh, keeping the last view: %s", exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("key registry: refreshing again")
                self._failing = False
