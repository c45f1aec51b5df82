"""The running gateway's operator side: admin listener, key registry, reload, logs.

:class:`OperatedGateway` wraps the :class:`~ratekeeper.gateway.app.Gateway` of one worker:

- requests on the admin listener (``--admin``) reach ``/admin/...`` (the admin API),
  ``/metrics`` and ``/healthz``; on the traffic listener those paths are the API's like any
  other, and ``/_ratekeeper/decide`` and ``/report`` answer only with ``--decision-endpoint``.
  Without ``--admin`` everything stays on one port, as before, but the admin API is not served;
- the key registry's ``blocks`` and ``keys`` stages run after ``identify``;
- every refusal is logged (:mod:`ratekeeper.http.refusals`) and every counted decision feeds
  the near-limit sample, through one observer of admission
  (:class:`~ratekeeper.http.operator_observer.AdmissionObserver`);
- a ticker thread applies reloaded policies (:mod:`ratekeeper.gateway.reload`), publishes the
  sample and flushes refusal counts.

``ratekeeper serve`` passes :class:`OperatorSettings` to its workers in the environment beside
the gateway's own settings; :func:`app_from_environment` is the uvicorn factory.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ratekeeper.gateway.admin.api import AdminAPI
from ratekeeper.gateway.admin.operator import Operator
from ratekeeper.gateway.admin.origin import SameOrigin
from ratekeeper.gateway.admin.page import live_page
from ratekeeper.gateway.app import ENVIRONMENT_VARIABLE, Gateway, ServeSettings
from ratekeeper.gateway.app import app_from_environment as gateway_from_environment
from ratekeeper.gateway.decide_listener import DecideListener, listener_from_environment
from ratekeeper.gateway.logs import AccessLog
from ratekeeper.gateway.reload import PolicyChannel, PolicyFollower, PolicyReloader
from ratekeeper.http.asgi import ASGIApp, Receive, Scope, Send
from ratekeeper.http.near_limits import NearLimits
from ratekeeper.http.operator_observer import AdmissionObserver
from ratekeeper.http.refusals import RefusalLog
from ratekeeper.http.stages.keys import blocks, key_registry
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.registry import Registry, registry_driver

__all__ = [
    "OPERATOR_VARIABLE",
    "SUPERVISOR_VARIABLE",
    "TOKEN_VARIABLE",
    "OperatedGateway",
    "OperatorSettings",
    "app_from_environment",
]

log = logging.getLogger("ratekeeper.gateway")

OPERATOR_VARIABLE = "RATEKEEPER_OPERATOR_SETTINGS"
TOKEN_VARIABLE = "RATEKEEPER_ADMIN_TOKEN"
SUPERVISOR_VARIABLE = "RATEKEEPER_SUPERVISOR_PID"
_OPS_PATHS = ("/metrics", "/healthz")


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSettings:
    """The operator side of ``serve``: plain values, passed to workers as JSON.

    ``admin_server`` is the admin listener as ASGI's ``scope["server"]`` shows it (host and
    port, or the socket's path and ``None``); ``run_dir`` holds the reloaded policy.
    """

    admin: str | None = None
    admin_server: tuple[str, int | None] | None = None
    decision_endpoint: bool = False
    access_log: bool = False
    run_dir: str | None = None
    sample_size: int = 32
    registry_interval_s: float = 0.5

    def to_json(self) -> str:
        """The settings as JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> OperatorSettings:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        server = data.get("admin_server")
        data["admin_server"] = tuple(server) if server is not None else None
        return cls(**data)


class OperatedGateway:
    """A worker's gateway with its operator side (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        settings: ServeSettings,
        operator: OperatorSettings,
        *,
        token: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = operator
        enforcer = gateway.enforcer
        policy = enforcer.plan.policy
        self.registry = Registry(
            registry_driver(settings.store),
            policy.keys.known,
            interval_s=operator.registry_interval_s,
        )
        enforcer.add_stage("blocks", blocks(self.registry), after="identify")
        enforcer.replace_stage("keys", key_registry(self.registry))
        self.sample = NearLimits(operator.sample_size)
        self.refusals = RefusalLog()
        enforcer.observe(AdmissionObserver(self.sample, self.refusals, self.registry.label_of))
        self.channel = PolicyChannel(Path(operator.run_dir)) if operator.run_dir else None
        self.reloader = (
            PolicyReloader(settings.policy_path, self.channel, settings.trusted_proxies)
            if self.channel is not None
            else None
        )
        self.follower = (
            PolicyFollower(self.channel, self.use_policy, settings.trusted_proxies)
            if self.channel is not None
            else None
        )
        self.operator = Operator(
            lambda: self.gateway.enforcer,
            self.registry,
            self.sample,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            policy=self.policy_state,
            reload=self.reload,
        )
        self._admin = (
            SameOrigin(AdminAPI(self.operator, token=token), check_host=token is None)
            if operator.admin
            else None
        )
        self._page = (
            live_page(self.operator, gateway, enforcer, store_url=settings.store, token=token)
            if operator.admin
            else None
        )
        self._traffic: ASGIApp = AccessLog(gateway) if operator.access_log else gateway
        self._limited: ASGIApp = (
            AccessLog(gateway.limited) if operator.access_log else gateway.limited
        )
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        # ``--decide-listen``'s listener and socket: served from the lifespan's start to its end.
        self.decide_listener: tuple[DecideListener, socket.socket] | None = None

    def __repr__(self) -> str:
        return f"<OperatedGateway {self.gateway!r} admin={self.settings.admin}>"

    # -- requests ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._traffic(scope, self._stopping_on_shutdown(receive), send)
            return
        if scope["type"] != "http" or self._admin is None:
            await self._traffic(scope, receive, send)
            return
        path: str = scope["path"]
        if _on_listener(scope.get("server"), self.settings.admin_server):
            if self._page is not None and self._page.serves(path):
                await self._page(scope, receive, send)
            elif path.startswith("/admin/"):
                await self._admin(scope, receive, send)
            elif path in _OPS_PATHS:
                await self.gateway(scope, receive, send)
            else:
                await _not_found(send)
        elif path in _OPS_PATHS or (
            path.startswith("/_ratekeeper/") and not self.settings.decision_endpoint
        ):
            await self._limited(scope, receive, send)
        else:
            await self._traffic(scope, receive, send)

    def _stopping_on_shutdown(self, receive: Receive) -> Receive:
        # The registry holds a connection of its own to the store's file: it must be closed with
        # the store when uvicorn shuts down (atexit does not run when a worker ends by SIGTERM).
        async def wrapped() -> Any:
            message = await receive()
            kind = message.get("type")
            lean = self.decide_listener
            if kind == "lifespan.startup" and lean is not None:
                await lean[0].start(lean[1])
            elif kind == "lifespan.shutdown":
                if lean is not None:
                    await lean[0].stop()
                self.stop()
            return message

        return wrapped

    # -- policy ----------------------------------------------------------------------------

    def use_policy(self, policy: Policy) -> None:
        """Run ``policy`` from now on (the store stays: a changed ``store`` needs a restart)."""
        enforcer = self.gateway.enforcer
        if policy.store != enforcer.plan.policy.store:
            log.warning("policy reload: a changed store takes effect only after a restart")
        enforcer.use_policy(policy)
        self.registry.set_base(policy.keys.known)

    def reload(self) -> dict[str, Any]:
        """Reload the policy file (validated; a broken one is refused and logged)."""
        if self.reloader is None:
            return {"reloaded": False, "generation": 0, "error": "no run directory"}
        result = self.reloader.reload()
        if result["reloaded"] and self.follower is not None:
            self.follower.poll()
        return result

    def policy_state(self) -> dict[str, Any]:
        """What policy this worker runs: its source, generation and when it was loaded."""
        policy = self.gateway.enforcer.plan.policy
        follower = self.follower
        return {
            "source": policy.source,
            "generation": follower.generation if follower else 0,
            "loaded_at": round(follower.loaded_at, 3) if follower else None,
            "limits": {
                name: [str(limit.rate) for limit in spec.limit_set.limits]
                for name, spec in policy.limits.items()
                if spec.limit_set is not None
            },
            "plans": sorted(policy.tiers.plans),
            "unknown_keys": policy.keys.unknown,
        }

    # -- background work -------------------------------------------------------------------

    def start(self) -> None:
        """Start the registry refresh and the ticker (in the worker, not in the supervisor)."""
        if self.follower is not None:
            policy = self.follower.current()
            if policy is not None:
                self.use_policy(policy)
        self.registry.refresh()
        self.registry.start()
        self._ticker = threading.Thread(target=self._tick, name="ratekeeper-ticker", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the background threads and flush the refusal counts (once; later calls return)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self.registry.stop()
        self.refusals.flush()

    def _tick(self) -> None:
        next_publish = 0.0
        while not self._stop.wait(0.25):
            now = time.time()
            try:
                if self.follower is not None:
                    self.follower.poll()
                if now >= next_publish:
                    next_publish = now + 1.0
                    self.refusals.flush(now)
                    self.operator.publish_sample()
            except Exception:
                log.warning("operator ticker step failed", exc_info=True)


def _on_listener(server: Any, listener: tuple[str, int | None] | None) -> bool:
    """Whether a request's local address (``scope["server"]``) is on ``listener``: the same
    port (a wildcard listener answers on any local address), or the same socket path."""
    if not server or listener is None:
        return False
    if listener[1] is None:
        return bool(server[0] == listener[0])
    if listener[0] in ("0.0.0.0", "::"):
        return bool(server[1] == listener[1])
    return bool(server[0] == listener[0] and server[1] == listener[1])


async def _not_found(send: Send) -> None:
    body = (
        b'{"error":"not_found",'
        b'"message":"the admin listener serves /, /admin/, /metrics, /healthz"}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def app_from_environment() -> OperatedGateway:
    """The uvicorn factory of ``ratekeeper serve`` workers (settings in the environment)."""
    _ignore_hangup_in_workers()
    gateway = gateway_from_environment()
    settings = ServeSettings.from_json(os.environ[ENVIRONMENT_VARIABLE])
    text = os.environ.get(OPERATOR_VARIABLE)
    operator = OperatorSettings.from_json(text) if text else OperatorSettings()
    app = OperatedGateway(gateway, settings, operator, token=os.environ.get(TOKEN_VARIABLE) or None)
    app.decide_listener = listener_from_environment(gateway.enforcer)
    app.start()
    atexit.register(app.stop)
    return app


def _ignore_hangup_in_workers() -> None:
    """In a worker process started by the supervisor, ignore SIGHUP (the supervisor reloads)."""
    supervisor = os.environ.get(SUPERVISOR_VARIABLE)
    if (
        supervisor
        and supervisor != str(os.getpid())
        and threading.current_thread() is (threading.main_thread())
    ):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
