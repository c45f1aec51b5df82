"""``/metrics`` when ``serve`` runs several worker processes: prometheus-client's multiprocess mode.

Each worker counts in its own registry, and a scrape reaches one worker only, so without help a
scrape would show that worker's share. ``serve --workers N`` (N > 1) therefore points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (or keeps the one already set)
before the workers start: prometheus-client then keeps every counter and histogram in a file per
worker there, and :func:`merged_metrics_app` answers with the sums over all workers, the workers
that have exited included, so counters never go backwards.

The store's health (``ratekeeper_store_errors_total``, ``ratekeeper_store_outages_total``,
``ratekeeper_fallback_active``) is read from each worker's store rather than counted per request;
:class:`StoreHealthExport` copies it into those files once a second and at each scrape. Errors and
outages are summed over the workers, ``fallback_active`` is 1 while any live worker's store is
down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily

from ratekeeper.stores.fallback_shards import Guard

__all__ = ["MULTIPROCESS_VARIABLE", "StoreHealthExport", "merged_metrics_app", "multiprocess_dir"]

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_REFRESH_S = 1.0
# prometheus-client leaves its multiprocess functions untyped.
multiprocess: Any = _multiprocess
# Kept as gauges in the files (each worker's running total) and shown as the counters they are.
_COUNTERS = frozenset({"ratekeeper_store_errors", "ratekeeper_store_outages"})


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process counts in it."""
    return os.environ.get(MULTIPROCESS_VARIABLE) or None


class StoreHealthExport:
    """Copies one worker's store health into the shared files (see the module docstring)."""

    def __init__(self, store: Guard) -> None:
        self.store = store
        self._errors = prometheus_client.Gauge(
            "ratekeeper_store_errors",
            "Store calls that failed",
            multiprocess_mode="sum",
            registry=None,
        )
        self._outages = prometheus_client.Gauge(
            "ratekeeper_store_outages",
            "Times the store went down",
            multiprocess_mode="sum",
            registry=None,
        )
        self._fallback = prometheus_client.Gauge(
            "ratekeeper_fallback_active",
            f"1 while the store is down in a worker and decisions follow on_store_error "
            f"({store.mode.value})",
            multiprocess_mode="livemax",
            registry=None,
        )
        self._unenforced = prometheus_client.Gauge(
            "ratekeeper_store_unenforced_decisions",
            "Decisions let through without the store (fail_open), so without any limit",
            multiprocess_mode="sum",
            registry=None,
        )
        self._task: asyncio.Task[None] | None = None

    def refresh(self) -> None:
        """Write this worker's current figures."""
        store = self.store
        self._errors.set(store.failures)
        self._outages.set(store.outages)
        self._fallback.set(1 if store.degraded else 0)
        self._unenforced.set(store.unenforced_decisions)

    async def start(self) -> None:
        """Refresh once a second until :meth:`stop`."""
        self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop refreshing; this worker no longer counts in ``fallback_active``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.refresh()
        multiprocess.mark_process_dead(os.getpid())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_REFRESH_S)
            self.refresh()


class _Merged:
    """The sums over every worker's files, with the store counts typed as counters."""

    def __init__(self, path: str) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Any]:
        for family in self._files.collect():
            if family.name in _COUNTERS:
                total = sum(sample.value for sample in family.samples)
                yield CounterMetricFamily(family.name, family.documentation, value=total)
            else:
                yield family


def merged_metrics_app(path: str, before: Callable[[], None]) -> Callable[..., Any]:
    """An ASGI app answering the workers' merged metrics; ``before`` runs at each scrape."""
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(_Merged(path))
    exposition = prometheus_client.make_asgi_app(registry=registry)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        before()
        await exposition(scope, receive, send)

    return app
