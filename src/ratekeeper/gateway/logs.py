"""The gateway's logs: text or JSON lines (``--log-format``), and the access log switch.

With ``json`` every record is one JSON object: ``time``, ``level``, ``logger``, ``message``, and
the structured ``fields`` a record carries (refusal lines do: see
:mod:`ratekeeper.http.refusals`). :class:`AccessLog` writes one line per request to the
``ratekeeper.access`` logger: method, path (never the query string, which may carry a key),
status, duration and the client's address.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from ratekeeper.http.asgi import ASGIApp, Receive, Scope, Send

__all__ = ["LOG_FORMATS", "AccessLog", "JSONFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access_log = logging.getLogger("ratekeeper.access")


class JSONFormatter(logging.Formatter):
    """One JSON object per record, with the record's ``fields`` merged in."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        data: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record to stderr as text or JSON lines; refusal and access lines are
    INFO, so they show whatever ``level`` is."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("ratekeeper.refusals", "ratekeeper.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


class AccessLog:
    """One log line per request answered by ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            address = client[0] if client else "-"
            ms = (time.perf_counter() - started) * 1000
            path = scope["path"][:200]
            access_log.info(
                "%s %s %s %.1fms %s",
                scope["method"],
                path,
                status or "-",
                ms,
                address,
                extra={
                    "fields": {
                        "event": "access",
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round(ms, 2),
                        "address": address,
                    }
                },
            )
