"""Real servers for the HTTP tests: uvicorn (ASGI, Starlette app) and wsgiref (WSGI, Flask app),
each on a free loopback port in a background thread. No tests here; the helpers are imported."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import flask
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ratekeeper import ManualClock
from ratekeeper.http.asgi import RateLimitMiddleware
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.metrics import metrics_asgi_app, metrics_wsgi_app
from ratekeeper.http.wsgi import RateLimitWSGIMiddleware
from ratekeeper.policy import loads_policy
from servers import uvicorn_in_thread

KINDS = ("asgi", "wsgi")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Calls made to the hook below, so tests can check the TTL cache.
plan_hook_calls: list[str] = []


def plan_hook(api_key: str) -> str | None:
    """A tier hook as a provider would write it (plans live in a database)."""
    plan_hook_calls.append(api_key)
    return "gold" if api_key.startswith("gold-") else None


def failing_hook(api_key: str) -> str | None:
    """A hook that breaks: the request must still be answered."""
    raise RuntimeError("database down")


def user_from_header(view: Any) -> str | None:
    """An identity callable: the session user from a header."""
    value: str | None = view.headers.get("x-user")
    return value


@dataclass
class AppState:
    """What the app saw: calls per path, and gates for in-flight tests."""

    calls: dict[str, int] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def seen(self, path: str) -> int:
        self.calls[path] = self.calls.get(path, 0) + 1
        return self.calls[path]


def starlette_app(state: AppState, enforcer: Enforcer) -> Any:
    async def handler(request: Request) -> Response:
        path = request.url.path
        count = state.seen(path)
        if path.startswith("/slow"):
            state.entered.set()
            while not state.gate.is_set():
                await asyncio.sleep(0.002)
        status = int(request.query_params.get("status", "200"))
        return JSONResponse({"path": path, "count": count}, status_code=status)

    app = Starlette(routes=[Route("/{path:path}", handler, methods=METHODS)])
    limited = RateLimitMiddleware(app, enforcer)
    metrics = metrics_asgi_app(enforcer.metrics)

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await limited(scope, receive, send)

    return dispatch


def flask_app(state: AppState, enforcer: Enforcer) -> Any:
    app = flask.Flask("ratekeeper-test")

    @app.route("/", defaults={"path": ""}, methods=METHODS)
    @app.route("/<path:path>", methods=METHODS)
    def handler(path: str) -> Any:
        full = "/" + path
        count = state.seen(full)
        if full.startswith("/slow"):
            state.entered.set()
            state.gate.wait(5)
        status = int(flask.request.args.get("status", "200"))
        return flask.jsonify({"path": full, "count": count}), status

    metrics = metrics_wsgi_app(enforcer.metrics)
    limited = RateLimitWSGIMiddleware(app.wsgi_app, enforcer)

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)
        return limited(environ, start_response)

    return dispatch


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Running:
    """A running server: its base URL, the enforcer, the app's state and the clock."""

    url: str
    enforcer: Enforcer
    state: AppState
    clock: ManualClock
    kind: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)


@contextlib.contextmanager
def serve(
    kind: str, policy_text: str, *, store: Any = None, **policy_kwargs: Any
) -> Iterator[Running]:
    """Run ``policy_text`` in front of the test app under ``kind`` ("asgi" or "wsgi")."""
    clock = ManualClock(1_700_000_000.25)
    policy = loads_policy(policy_text, "test-policy.toml")
    enforcer = Enforcer(policy, clock=clock, store=store)
    state = AppState()
    if kind == "asgi":
        with uvicorn_in_thread(
            starlette_app(state, enforcer), h11_max_incomplete_event_size=256 * 1024
        ) as base:
            yield Running(base, enforcer, state, clock, kind)
    else:
        httpd = make_server(
            "127.0.0.1",
            0,
            flask_app(state, enforcer),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.daemon = True
        thread.start()
        try:
            yield Running(f"http://127.0.0.1:{httpd.server_port}", enforcer, state, clock, kind)
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)


def raw_request(url: str, request: bytes) -> bytes:
    """Send raw bytes (headers httpx would refuse) and return the raw answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)
