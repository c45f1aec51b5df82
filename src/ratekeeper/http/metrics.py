"""Prometheus metrics of one enforcer, in a registry of its own, and apps that serve them.

``ratekeeper_requests_total{rule,zone,outcome}`` (outcome: allowed, rejected, shadow_rejected,
refused, unchecked, store_unavailable), ``ratekeeper_store_seconds`` (latency of store calls),
and, read from the enforcer's :class:`~ratekeeper.stores.fallback.FallbackStore` when scraped,
``ratekeeper_store_errors_total``, ``ratekeeper_store_outages_total`` and
``ratekeeper_fallback_active`` (1 while the store is down and ``on_store_error`` decides).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ratekeeper.stores.fallback_shards import Guard

__all__ = ["Metrics", "metrics_asgi_app", "metrics_wsgi_app"]

prometheus_client: Any
try:
    import prometheus_client
    import prometheus_client.core
except ImportError:  # pragma: no cover - exercised only without the http extra
    prometheus_client = None


class Metrics:
    """Counters for one enforcer; ``enabled=False`` (or no prometheus-client) makes every
    method a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and prometheus_client is not None
        self._children: dict[tuple[str, str, str], Any] = {}
        # Record one store call's duration (seconds).
        self.store_latency: Callable[[float], None] = _ignore
        if not self.enabled:
            self.registry = None
            return
        pc: Any = prometheus_client
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self._requests = pc.Counter(
            "ratekeeper_requests",
            "Requests seen by ratekeeper, by rule, zone and outcome",
            ("rule", "zone", "outcome"),
            registry=self.registry,
        )
        self._store_seconds = pc.Histogram(
            "ratekeeper_store_seconds",
            "Latency of store decisions",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.store_latency = _observer(self._store_seconds)

    def count(self, rule: str, zone: str, outcome: str) -> None:
        """Count one request."""
        if not self.enabled:
            return
        key = (rule, zone, outcome)
        inc = self._children.get(key)
        if inc is None:
            inc = self._children[key] = _incrementer(self._requests.labels(rule, zone, outcome))
        inc()

    def watch_store(self, store: Guard) -> None:
        """Export the store's failures, outages and health, read when scraped."""
        if self.registry is not None:
            self.registry.register(_StoreCollector(store))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent), for tests and status pages."""
        if self.registry is None:
            return 0.0
        found = self.registry.get_sample_value(name, labels or {})
        return float(found) if found is not None else 0.0

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        if self.registry is None:
            return b""
        return bytes(prometheus_client.generate_latest(self.registry))


def _ignore(seconds: float) -> None:
    """Metrics off: nothing to record."""


def _observer(histogram: Any) -> Callable[[float], None]:
    """``histogram.observe`` with its values' own ``inc`` bound once (the same sum and first
    bucket at or above the amount as ``observe`` finds, without its checks and its loop over
    the bounds), where prometheus-client keeps them so; else ``observe`` itself."""
    bounds = getattr(histogram, "_upper_bounds", None)
    values: list[Any] = [getattr(b, "inc", None) for b in getattr(histogram, "_buckets", ())]
    add: Any = getattr(getattr(histogram, "_sum", None), "inc", None)
    if not bounds or len(values) != len(bounds) or not callable(add) or None in values:
        return histogram.observe  # type: ignore[no-any-return]
    incs = tuple(values)
    find = bisect.bisect_left

    def observe(seconds: float) -> None:
        add(seconds)
        incs[find(bounds, seconds)](1)

    return observe


def _incrementer(child: Any) -> Callable[[], None]:
    """A call adding 1 to a counter's child, looked up once per label set: its value's own
    ``inc`` where prometheus-client keeps one (``Counter.inc`` adds only checks of the amount
    and exemplar to it, per call), else the child's ``inc``."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    if callable(inc):
        return functools.partial(inc, 1)
    return child.inc  # type: ignore[no-any-return]


class _StoreCollector:
    """Reads a FallbackStore's counters at scrape time: nothing to do per request."""

    def __init__(self, store: Guard) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        pc: Any = prometheus_client
        store = self.store
        yield pc.core.CounterMetricFamily(
            "ratekeeper_store_errors", "Store calls that failed", value=store.failures
        )
        yield pc.core.CounterMetricFamily(
            "ratekeeper_store_outages", "Times the store went down", value=store.outages
        )
        yield pc.core.GaugeMetricFamily(
            "ratekeeper_fallback_active",
            f"1 while the store is down and decisions follow on_store_error ({store.mode.value})",
            value=1 if store.degraded else 0,
        )
        yield pc.core.CounterMetricFamily(
            "ratekeeper_store_unenforced_decisions",
            "Decisions let through without the store (fail_open), so without any limit",
            value=store.unenforced_decisions,
        )


def _need(metrics: Metrics) -> Any:
    if not metrics.enabled:
        raise RuntimeError(
            "metrics are off: install prometheus-client (pip install 'ratekeeper[http]') "
            "and leave 'metrics = true' in the policy"
        )
    return prometheus_client


def metrics_asgi_app(metrics: Metrics) -> Callable[..., Any]:
    """An ASGI app answering the Prometheus text format; mount it at ``/metrics``."""
    return _need(metrics).make_asgi_app(registry=metrics.registry)  # type: ignore[no-any-return]


def metrics_wsgi_app(metrics: Metrics) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """A WSGI app answering the Prometheus text format; mount it at ``/metrics``."""
    return _need(metrics).make_wsgi_app(registry=metrics.registry)  # type: ignore[no-any-return]
