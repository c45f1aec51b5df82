"""Middleware overhead per request: ratekeeper beside slowapi (Starlette) and Flask-Limiter
(Flask), in one run, memory stores (and Redis with ``--redis URL``).

Each app is called in-process by a minimal driver (an ASGI scope and no-op ``send``; a WSGI
environ and ``start_response``), so what is timed is the server's CPU for the request, not a
network client. Overhead = CPU per request with the limiter minus CPU per request of the bare
app, best of ``--repeat`` passes. Every limiter enforces the same three limits per client IP
(``100000/minute; 1000000/hour; 10000000/day`` so that all requests pass, or ``1/minute``
after a first request for the rejection rows) and sends its rate-limit headers unless a row
says otherwise.

    .venv/bin/python bench/middleware.py            # about a minute on 2 cores
    .venv/bin/python bench/middleware.py --quick    # a few seconds
    .venv/bin/python bench/middleware.py --redis redis://127.0.0.1:6390/0   # and with Redis
"""

# Peers are optional (bench extra): each is imported when its row is built.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import sys
import time
from collections.abc import Callable
from typing import Any

from ratekeeper.http.asgi import RateLimitMiddleware
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.wsgi import RateLimitWSGIMiddleware
from ratekeeper.policy import loads_policy

ALLOW = "100000/minute; 1000000/hour; 10000000/day"
REJECT = "1/minute"


def rk_policy(rates: str) -> str:
    return f"""
apply = ["api"]
metrics = true
[identity]
source = "ip"
[limits.api]
rates = "{rates}"
"""


def peer_rates(rates: str) -> str:
    return rates.replace(";", " ;") if ";" in rates else rates


# -- ASGI ------------------------------------------------------------------------------

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items",
    "raw_path": b"/items",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 80),
}


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items", items)])


def asgi_cpu(app: Any, n: int) -> tuple[float, int]:
    """CPU seconds per request and the last status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def drive() -> float:
        await app(dict(SCOPE), receive, send)
        gc.collect()
        started = time.process_time()
        for _ in range(n):
            await app(dict(SCOPE), receive, send)
        return time.process_time() - started

    return asyncio.run(drive()) / n, status


def asgi_rows(rates: str, storage: str) -> dict[str, Callable[[], Any]]:
    def bare() -> Any:
        return starlette_app()

    def ratekeeper() -> Any:
        enforcer = Enforcer(loads_policy(rk_policy(rates)), store=storage)
        return RateLimitMiddleware(starlette_app(), enforcer)

    def slowapi(middleware: str, headers: bool) -> Callable[[], Any]:
        def build() -> Any:
            from slowapi import Limiter, _rate_limit_exceeded_handler
            from slowapi import middleware as mw
            from slowapi.errors import RateLimitExceeded
            from slowapi.util import get_remote_address

            app = starlette_app()
            limiter = Limiter(
                key_func=get_remote_address,
                default_limits=[peer_rates(rates)],
                headers_enabled=headers,
                storage_uri=storage,
            )
            app.state.limiter = limiter
            app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
            app.add_middleware(getattr(mw, middleware))
            return app

        return build

    return {
        "starlette bare": bare,
        "ratekeeper RateLimitMiddleware": ratekeeper,
        "slowapi SlowAPIMiddleware, headers off": slowapi("SlowAPIMiddleware", False),
        "slowapi SlowAPIMiddleware, headers on": slowapi("SlowAPIMiddleware", True),
        "slowapi SlowAPIASGIMiddleware, headers on": slowapi("SlowAPIASGIMiddleware", True),
    }


# -- WSGI ------------------------------------------------------------------------------

ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/items",
    "SCRIPT_NAME": "",
    "QUERY_STRING": "",
    "SERVER_NAME": "bench",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "bench",
    "HTTP_USER_AGENT": "bench/1",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def flask_app() -> Any:
    import flask

    app = flask.Flask("bench")

    @app.route("/items")
    def items() -> str:
        return "ok"

    return app


def wsgi_cpu(app: Any, n: int) -> tuple[float, int]:
    """CPU seconds per request and the last status."""
    status = [""]

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status[0] = line
        return None

    def one() -> None:
        environ = dict(ENVIRON)
        environ["wsgi.input"] = io.BytesIO()
        body = app(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    one()
    gc.collect()
    started = time.process_time()
    for _ in range(n):
        one()
    return (time.process_time() - started) / n, int(status[0][:3])


def wsgi_rows(rates: str, storage: str) -> dict[str, Callable[[], Any]]:
    def bare() -> Any:
        return flask_app().wsgi_app

    def ratekeeper() -> Any:
        app = flask_app()
        enforcer = Enforcer(loads_policy(rk_policy(rates)), store=storage)
        return RateLimitWSGIMiddleware(app.wsgi_app, enforcer)

    def flask_limiter() -> Any:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        app = flask_app()
        Limiter(
            get_remote_address,
            app=app,
            default_limits=[peer_rates(rates)],
            headers_enabled=True,
            storage_uri=storage,
        )
        return app.wsgi_app

    return {
        "flask bare": bare,
        "ratekeeper RateLimitWSGIMiddleware": ratekeeper,
        "Flask-Limiter, headers on": flask_limiter,
    }


# -- the table -------------------------------------------------------------------------


def measure(
    rows: dict[str, Callable[[], Any]],
    cpu: Callable[[Any, int], tuple[float, int]],
    n: int,
    repeat: int,
) -> dict[str, tuple[float, int] | str]:
    """Best CPU per request of each row; a peer that is not installed gets a note."""
    apps: dict[str, Any] = {}
    results: dict[str, tuple[float, int] | str] = {}
    for name, build in rows.items():
        try:
            apps[name] = build()
        except ImportError as exc:
            results[name] = f"not installed ({exc.name})"
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeat):
        for name, app in apps.items():
            seconds, status = cpu(app, n)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, status)
    results.update(best)
    return results


def report(title: str, results: dict[str, tuple[float, int] | str], ours: str) -> None:
    names = list(results)
    bare = results[names[0]]
    assert isinstance(bare, tuple)
    ours_value = results[ours]
    assert isinstance(ours_value, tuple)
    ours_overhead = ours_value[0] - bare[0]
    print(f"\n{title}")
    print(
        f"{'row':46} {'status':>6} {'us/request':>11} {'overhead us':>12} {'ratio':>7} "
        f"{'total ratio':>11}"
    )
    for name in names:
        value = results[name]
        if isinstance(value, str):
            print(f"{name:46} {value}")
            continue
        seconds, status = value
        if name == names[0]:
            print(f"{name:46} {status:>6} {seconds * 1e6:>11.1f} {'-':>12} {'-':>7} {'-':>11}")
            continue
        overhead = seconds - bare[0]
        # A rejection that skips the app can cost less than the bare app: then only the
        # total ratio means something.
        ratio = f"{overhead / ours_overhead:>6.1f}x" if ours_overhead > 0 else f"{'n/a':>7}"
        print(
            f"{name:46} {status:>6} {seconds * 1e6:>11.1f} {overhead * 1e6:>12.1f} {ratio} "
            f"{seconds / ours_value[0]:>10.1f}x"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--requests", type=int, default=0, help="requests per pass")
    parser.add_argument("--repeat", type=int, default=0, help="passes per row (best is kept)")
    parser.add_argument(
        "--redis", default="", help="also run every table against this Redis URL (redis://...)"
    )
    args = parser.parse_args(argv)
    n = args.requests or (300 if args.quick else 5000)
    repeat = args.repeat or (1 if args.quick else 3)
    print(f"python {sys.version.split()[0]}; {n} requests per pass, best of {repeat}")
    print(
        "overhead = CPU per request minus the bare app's; ratio = overhead / ratekeeper's "
        "overhead; total ratio = CPU per request / ratekeeper's"
    )
    storages = ["memory://", *([args.redis] if args.redis else [])]
    for storage in storages:
        where = "memory" if storage == "memory://" else "Redis"
        for verdict, rates in (("allowed", ALLOW), ("rejected", REJECT)):
            report(
                f"Starlette (ASGI), {where}, every request {verdict}",
                measure(asgi_rows(rates, storage), asgi_cpu, n, repeat),
                "ratekeeper RateLimitMiddleware",
            )
            report(
                f"Flask (WSGI), {where}, every request {verdict}",
                measure(wsgi_rows(rates, storage), wsgi_cpu, n, repeat),
                "ratekeeper RateLimitWSGIMiddleware",
            )


if __name__ == "__main__":
    main()
