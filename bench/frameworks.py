"""The decorator path per request: ratekeeper's framework integrations beside the peers doing
the same job, in one run, memory stores: slowapi's ``@limiter.limit`` (FastAPI), Flask-Limiter's
``@limiter.limit`` (Flask) and django-ratelimit's ``@ratelimit`` (Django).

Each app is called in-process by the drivers of ``bench/middleware.py`` (an ASGI scope or a WSGI
environ, no network), so what is timed is the server's CPU for the request. Overhead = CPU per
request with the decorated view minus the same view undecorated, best of ``--repeat`` short
passes taken in turn (the best of many short passes is what survives a loaded machine).

Like with like: every limiter enforces ``100000/minute; 1000000/hour; 10000000/day`` (fixed
windows) per client address on the one route, in process memory (ratekeeper's ``memory://``,
slowapi's and Flask-Limiter's ``memory://``, django-ratelimit's local-memory cache), so every
request passes. ratekeeper, slowapi and Flask-Limiter send the same three ``X-RateLimit-*``
headers (slowapi adds ``Retry-After``); django-ratelimit sends none (ratekeeper still does) and
takes one rate per decorator, hence three stacked. ratekeeper's FastAPI row is the integration
as a user installs it: ``RateKeeper(app, policy)`` (its middleware) and ``@limit`` on the view.

    .venv/bin/python bench/frameworks.py            # about a minute on 2 cores
    .venv/bin/python bench/frameworks.py --quick    # a few seconds
"""

# Peers are optional (bench extra): each is imported when its row is built.
# ruff: noqa: PLC0415
# No `from __future__ import annotations`: FastAPI must see the endpoints' local Request and
# Response classes, not their names.

import argparse
import sys
from collections.abc import Callable
from typing import Any

from middleware import ALLOW, asgi_cpu, measure, report, wsgi_cpu

RATES = [part.strip() for part in ALLOW.split(";")]
# No policy limit on /items: what is timed is the route's own limits, as with the peers.
POLICY = {"limits": {"other": {"rates": "1/second"}}, "default": ["other"]}
ROUTE_RULE = {"rules": [{"routes": ["/items"], "limits": []}]}


def fastapi_rows() -> dict[str, Callable[[], Any]]:
    def app_with(decorate: Callable[[Any], Any], setup: Callable[[Any], None]) -> Any:
        from fastapi import FastAPI, Request, Response

        app = FastAPI()
        setup(app)

        @app.get("/items")
        @decorate
        async def items(request: Request, response: Response) -> str:
            return "ok"

        return app

    def bare() -> Any:
        return app_with(lambda f: f, lambda app: None)

    def ratekeeper() -> Any:
        from ratekeeper import policy_from_mapping
        from ratekeeper.integrations.fastapi import RateKeeper, limit

        policy = policy_from_mapping({**POLICY, **ROUTE_RULE})
        return app_with(limit(ALLOW), lambda app: RateKeeper(app, policy))

    def slowapi() -> Any:
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address, headers_enabled=True)

        def setup(app: Any) -> None:
            app.state.limiter = limiter
            app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

        return app_with(limiter.limit(" ; ".join(RATES)), setup)

    return {
        "fastapi bare": bare,
        "ratekeeper @limit (+ RateKeeper middleware)": ratekeeper,
        "slowapi @limiter.limit, headers on": slowapi,
    }


def flask_rows() -> dict[str, Callable[[], Any]]:
    def app_with(decorate: Callable[[Any], Any], setup: Callable[[Any], None]) -> Any:
        import flask

        app = flask.Flask("bench")
        setup(app)

        @app.route("/items")
        @decorate
        def items() -> str:
            return "ok"

        return app.wsgi_app

    def bare() -> Any:
        return app_with(lambda f: f, lambda app: None)

    def ratekeeper() -> Any:
        from ratekeeper.integrations.flask import RateKeeper

        keeper = RateKeeper()

        def setup(app: Any) -> None:
            app.config["RATEKEEPER_POLICY"] = {**POLICY, **ROUTE_RULE}
            keeper.init_app(app)

        return app_with(keeper.limit(ALLOW), setup)

    def flask_limiter() -> Any:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        limiter = Limiter(get_remote_address, headers_enabled=True)
        return app_with(limiter.limit(" ; ".join(RATES)), limiter.init_app)

    return {
        "flask bare": bare,
        "ratekeeper @rk.limit": ratekeeper,
        "Flask-Limiter @limiter.limit, headers on": flask_limiter,
    }


def django_rows() -> dict[str, Callable[[], Any]]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            RATEKEEPER={"POLICY": {**POLICY, "rules": [{"routes": ["/rk"], "limits": []}]}},
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()

    def at(path: str) -> Callable[[], Any]:
        return lambda: lambda environ, start: handler({**environ, "PATH_INFO": path}, start)

    return {
        "django bare": at("/bare"),
        "ratekeeper @limit": at("/rk"),
        "django-ratelimit @ratelimit x3": at("/peer"),
    }


def _django_views() -> list[Any]:
    """The Django URL patterns (only when Django is what runs)."""
    from django.http import HttpResponse
    from django.urls import path
    from django_ratelimit.decorators import ratelimit

    from ratekeeper.integrations.django import limit

    def bare(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    peer: Any = bare
    for rate in RATES:
        amount, _, unit = rate.partition("/")
        peer = ratelimit(key="ip", rate=f"{amount}/{unit[0]}", block=True)(peer)
    return [path("bare", bare), path("rk", limit(ALLOW)(bare)), path("peer", peer)]


def __getattr__(name: str) -> Any:
    # Django reads urlpatterns from this module (ROOT_URLCONF) once it is configured.
    if name == "urlpatterns":
        return _django_views()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--requests", type=int, default=0, help="requests per pass")
    parser.add_argument("--repeat", type=int, default=0, help="passes per row (best is kept)")
    args = parser.parse_args(argv)
    n = args.requests or (300 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 15)
    print(f"python {sys.version.split()[0]}; {n} requests per pass, best of {repeat}")
    print(
        "overhead = CPU per request minus the bare view's; ratio = overhead / ratekeeper's "
        "overhead; total ratio = CPU per request / ratekeeper's"
    )
    report(
        "FastAPI, decorator, every request allowed",
        measure(fastapi_rows(), asgi_cpu, n, repeat),
        "ratekeeper @limit (+ RateKeeper middleware)",
    )
    report(
        "Flask, decorator, every request allowed",
        measure(flask_rows(), wsgi_cpu, n, repeat),
        "ratekeeper @rk.limit",
    )
    report(
        "Django, decorator, every request allowed",
        measure(django_rows(), wsgi_cpu, n, repeat),
        "ratekeeper @limit",
    )


if __name__ == "__main__":
    main()
