"""The gateway app: a policy's limits in front of an upstream API (or a demo), as one ASGI app.

Requests go through the same :class:`~ratekeeper.http.asgi.RateLimitMiddleware` as in-process
users get, then to the :class:`~ratekeeper.gateway.proxy.UpstreamProxy` or the demo API. Beside
them: ``/_ratekeeper/decide`` (for nginx, Traefik and Envoy), ``/_ratekeeper/report`` (answers'
statuses, for the lockout), ``/healthz`` and ``/metrics``.

Several worker processes build the app from :class:`ServeSettings` passed in the environment
(:func:`app_from_environment`), each with its own connection to the shared store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import prometheus_client

from ratekeeper.errors import GatewayConfigError, PolicyError, StoreError
from ratekeeper.gateway.decide import DECIDE_PATH, REPORT_PATH, decide, report
from ratekeeper.gateway.demo import DEMOS, demo_app
from ratekeeper.gateway.metrics import StoreHealthExport, merged_metrics_app, multiprocess_dir
from ratekeeper.gateway.paths import normal_scope, refuse_path
from ratekeeper.gateway.proxy import UpstreamProxy, error_answer, quiet_uvicorn_errors
from ratekeeper.gateway.store_check import check_store
from ratekeeper.http.asgi import ASGIApp, RateLimitMiddleware, Receive, Scope, Send
from ratekeeper.http.cache import ResponseStore, caches
from ratekeeper.http.cache_shared import SharedResponseCache, response_cache_beside
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.metrics import metrics_asgi_app
from ratekeeper.policy import load_policy, preset_path
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.fallback_shards import Guard
from ratekeeper.stores.sqlite import SQLiteStore
from ratekeeper.stores.url import mask_url, store_from_url

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "Gateway",
    "ServeSettings",
    "app_from_environment",
    "build_gateway",
    "open_store",
]

log = logging.getLogger("ratekeeper.gateway")

ENVIRONMENT_VARIABLE = "RATEKEEPER_SERVE_SETTINGS"
DEFAULT_STORE = "sqlite:///ratekeeper.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeSettings:
    """What ``ratekeeper serve`` was asked to run; plain values, so workers can rebuild it."""

    preset: str | None = None
    config: str | None = None
    upstream: str | None = None
    store: str = DEFAULT_STORE
    trusted_proxies: tuple[str, ...] = ()
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0

    def to_json(self) -> str:
        """The settings as JSON (for the environment of worker processes)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["trusted_proxies"] = tuple(data.get("trusted_proxies", ()))
        return cls(**data)

    @property
    def policy_path(self) -> Path:
        """The policy file: the preset's or the ``--config`` one."""
        if self.preset:
            return preset_path(self.preset)
        if self.config:
            return Path(self.config)
        raise PolicyError("no policy: give --preset NAME or --config FILE")

    def load_policy(self) -> Policy:
        """The validated policy, with ``trusted_proxies`` added to its identity."""
        policy = load_policy(self.policy_path)
        if self.trusted_proxies:
            identity = policy.identity
            trusted = tuple(dict.fromkeys((*identity.trusted_proxies, *self.trusted_proxies)))
            policy = replace(policy, identity=replace(identity, trusted_proxies=trusted))
        return policy

    @property
    def demo_names(self) -> tuple[str, ...]:
        """The demo APIs served when there is no upstream: the preset's, or all of them."""
        if self.preset in DEMOS:
            return (self.preset,)
        return tuple(DEMOS)


def open_store(url: str) -> Store | AsyncStore:
    """The store a URL names; an SQLite store decides on the event loop."""
    try:
        store = store_from_url(url)
    except ImportError as exc:
        raise StoreError(
            f"--store {mask_url(url)}: a driver is missing ({exc.name}); "
            "install ratekeeper[redis] for redis:// and valkey:// stores"
        ) from None
    if isinstance(store, SQLiteStore):
        # A decision takes ~0.1 ms here, less than the hop to a worker thread that the async
        # face takes (~0.25 ms in all).
        store.decides_on_loop = True
    return store  # type: ignore[no-any-return]


def _plain(status: int, body: bytes, content_type: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class Gateway:
    """The ``serve`` app: ``enforcer`` in front of ``target`` (proxy or demo), plus the
    decision endpoint, ``/healthz`` and ``/metrics`` (the enforcer's own, unless ``metrics``
    gives another app). ``on_start``/``on_stop`` run in the ASGI lifespan; the store is closed
    after the last request. ``response_cache`` keeps the policy's cached answers (see
    :func:`~ratekeeper.http.cache_shared.response_cache_beside`)."""

    def __init__(
        self,
        enforcer: Enforcer,
        target: ASGIApp,
        *,
        on_start: Sequence[Callable[[], Any]] = (),
        on_stop: Sequence[Callable[[], Any]] = (),
        metrics: ASGIApp | None = None,
        response_cache: ResponseStore | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.limited = RateLimitMiddleware(target, enforcer, response_cache=response_cache)
        self._wanted = enforcer.header_names
        self._on_start = on_start
        self._on_stop = on_stop
        if metrics is None and enforcer.metrics.enabled:
            metrics = metrics_asgi_app(enforcer.metrics)
        self._metrics = metrics
        self._healthy = _plain(200, b'{"status":"ok"}', b"application/json")

    def __repr__(self) -> str:
        return f"<Gateway {self.enforcer!r} -> {self.limited.app!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                if scope["path"] == DECIDE_PATH:
                    # The hot path of a proxy asking, one coroutine less.
                    await decide(self.enforcer, scope, send, self._wanted)
                else:
                    await self._http(scope, receive, send)
            except asyncio.CancelledError:
                # uvicorn cancels requests still running when --graceful-timeout runs out.
                await _shutting_down(send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/_ratekeeper/") and (
            path == DECIDE_PATH or path.startswith(DECIDE_PATH + "/")
        ):
            await decide(self.enforcer, scope, send, self._wanted)
        elif path == REPORT_PATH:
            await report(self.enforcer, scope, send, self._wanted)
        elif path == "/healthz":
            fallback = self.enforcer.fallback
            start, body = _store_down(fallback) if fallback.degraded else self._healthy
            await send(start)
            await send(body)
        elif path == "/metrics" and self._metrics is not None:
            await self._metrics(scope, receive, send)
        else:
            # Routes are matched, and requests forwarded, on the path's one spelling.
            normal = normal_scope(scope)
            if normal is None:
                await refuse_path(send)
            else:
                await self.limited(normal, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self._on_start:
                        await hook()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self._on_stop:
                    try:
                        await hook()
                    except Exception:
                        log.warning("shutdown step %r failed", hook, exc_info=True)
                try:
                    await self.enforcer.fallback.close_async()
                except Exception:
                    log.warning("closing the store failed", exc_info=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _store_down(fallback: Guard) -> tuple[dict[str, Any], dict[str, Any]]:
    """/healthz while the store is down: 503, so that a load balancer or an orchestrator sees
    a gateway that is not enforcing its policy as it should."""
    body = json.dumps(
        {
            "status": "degraded",
            "store": "down",
            "down_for_s": round(fallback.down_for_s, 1),
            "on_store_error": fallback.effective_mode.value,
            "unenforced_decisions": fallback.unenforced_decisions,
        },
        separators=(",", ":"),
    ).encode()
    return _plain(503, body, b"application/json")


async def _shutting_down(send: Send) -> None:
    """Answer 503 to a request cancelled at shutdown; one whose answer had started is cut."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    headers, body = error_answer(
        503, "shutting_down", "The gateway is shutting down; retry in a moment."
    )
    headers += [(b"retry-after", b"1"), (b"connection", b"close")]
    try:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except (RuntimeError, OSError):
        log.warning("an answer in progress was cut at shutdown (--graceful-timeout ran out)")


def _upstream_counter(enforcer: Enforcer) -> Callable[[str], None] | None:
    registry = enforcer.metrics.registry
    if registry is None:
        return None
    counter = prometheus_client.Counter(
        "ratekeeper_upstream_errors",
        "Requests the upstream could not answer, by kind",
        ("kind",),
        registry=registry,
    )
    return lambda kind: counter.labels(kind).inc()


def build_gateway(settings: ServeSettings) -> Gateway:
    """The gateway app for ``settings``: opens the store and, if any, prepares the upstream."""
    policy = settings.load_policy()
    store = open_store(settings.store)
    try:
        check_store(store, policy)
    except StoreError:
        if isinstance(store, Store):
            store.close()
        raise
    enforcer = Enforcer(policy, store=store)
    on_start: list[Callable[[], Any]] = []
    on_stop: list[Callable[[], Any]] = []
    metrics: ASGIApp | None = None
    shared = multiprocess_dir()
    if shared is not None and enforcer.metrics.enabled:
        health = StoreHealthExport(enforcer.fallback)
        metrics = merged_metrics_app(shared, health.refresh)
        on_start.append(health.start)
        on_stop.append(health.stop)
    target: ASGIApp
    if settings.upstream:
        proxy = UpstreamProxy(
            settings.upstream,
            timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            on_error=_upstream_counter(enforcer),
        )
        target = proxy
        on_start.append(proxy.start)
        on_stop.append(proxy.close)
    else:
        target = demo_app(settings.demo_names)
    response_cache = _response_cache(settings, enforcer, on_stop)
    return Gateway(
        enforcer,
        target,
        on_start=on_start,
        on_stop=on_stop,
        metrics=metrics,
        response_cache=response_cache,
    )


def _response_cache(
    settings: ServeSettings, enforcer: Enforcer, on_stop: list[Callable[[], Any]]
) -> ResponseStore | None:
    """Cached answers beside a shared store, so every worker and instance answers alike."""
    if not caches(enforcer.plan):
        return None
    cache = response_cache_beside(enforcer.store, settings.store, enforcer.plan, enforcer.clock)
    if isinstance(cache, SharedResponseCache):

        async def close() -> None:
            cache.close()

        on_stop.append(close)
    return cache


def app_from_environment() -> Gateway:
    """The uvicorn factory of ``ratekeeper serve`` workers (settings in the environment)."""
    text = os.environ.get(ENVIRONMENT_VARIABLE)
    if not text:
        raise GatewayConfigError(
            f"{ENVIRONMENT_VARIABLE} is not set: start workers with ratekeeper serve"
        )
    quiet_uvicorn_errors()
    return build_gateway(ServeSettings.from_json(text))
