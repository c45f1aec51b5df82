"""WSGI plumbing shared by the middlewares: the types, an environ's request view, our answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ratekeeper.http.flow import Answer
from ratekeeper.http.identity import RequestView

__all__ = [
    "Environ",
    "StartResponse",
    "WSGIApp",
    "send_answer",
    "status_line",
    "view_from_environ",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_REASONS = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def view_from_environ(environ: Environ, wanted: frozenset[str] | None) -> RequestView:
    """The request view of a WSGI environ; only ``wanted`` headers (all when ``None``)."""
    headers: dict[str, str] = {}
    if wanted is None:
        for name, value in environ.items():
            if name.startswith("HTTP_"):
                headers[name[5:].replace("_", "-").lower()] = value
    else:
        for name in wanted:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value is not None:
                headers[name] = value
    return RequestView(
        environ.get("REQUEST_METHOD", "GET"),
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        headers,
        environ.get("REMOTE_ADDR"),
        environ.get("QUERY_STRING", ""),
    )


def status_line(status: int) -> str:
    """The WSGI status line of a status code."""
    return f"{status} {_REASONS.get(status, 'Error')}"


def send_answer(answer: Answer, start_response: StartResponse) -> list[bytes]:
    """Start one of ratekeeper's own answers (its length added here, once); the body."""
    headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
    start_response(status_line(answer.status), headers)
    return [answer.body]
