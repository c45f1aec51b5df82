"""Prometheus metrics of one enforcer, in a registry of its own, and apps that serve them.

``ratekeeper_requests_total{rule,zone,outcome}`` (outcome: allowed, rejected, shadow_rejected,
refused), ``ratekeeper_store_seconds`` (latency of store calls), ``ratekeeper_store_errors_total``
and ``ratekeeper_fallback_active`` (1 while decisions go to the in-memory fallback store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Metrics", "metrics_asgi_app", "metrics_wsgi_app"]

prometheus_client: Any
try:
    import prometheus_client
except ImportError:  # pragma: no cover - exercised only without the http extra
    prometheus_client = None


class Metrics:
    """Counters for one enforcer; ``enabled=False`` (or no prometheus-client) makes every
    method a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and prometheus_client is not None
        self._children: dict[tuple[str, str, str], Any] = {}
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
        self._store_errors = pc.Counter(
            "ratekeeper_store_errors", "Store calls that failed", registry=self.registry
        )
        self._fallback = pc.Gauge(
            "ratekeeper_fallback_active",
            "1 while decisions use the in-memory fallback store",
            registry=self.registry,
        )

    def count(self, rule: str, zone: str, outcome: str) -> None:
        """Count one request."""
        if not self.enabled:
            return
        key = (rule, zone, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(rule, zone, outcome)
        child.inc()

    def store_latency(self, seconds: float) -> None:
        """Record one store call's duration."""
        if self.enabled:
            self._store_seconds.observe(seconds)

    def store_error(self) -> None:
        """Count one failed store call."""
        if self.enabled:
            self._store_errors.inc()

    def fallback(self, active: bool) -> None:
        """Set the fallback gauge."""
        if self.enabled:
            self._fallback.set(1 if active else 0)

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
