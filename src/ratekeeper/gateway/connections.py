"""What one ``serve`` worker does with its connections: a cap, a deadline for the request head,
a bound on its size, and a log line when it sheds.

uvicorn keeps a connection that never sends a request for ever and reads request heads of any
size (httptools), so idle or dribbling connections (slowloris) could hold every file descriptor
and leave real clients with resets. The protocols here are uvicorn's own, with four additions:

- a request head must be complete ``header_timeout_s`` after its first byte (or after the
  connection opened); otherwise the connection is closed;
- a request head larger than ``max_header_bytes`` is answered 431 and the connection closed;
- a request body must keep coming: after ``header_timeout_s`` of grace it must have averaged
  ``_MIN_BODY_RATE`` bytes a second (Apache's ``mod_reqtimeout`` default), else the connection
  is closed, so a body dripped a byte at a time cannot hold a connection either (time while
  the app is not reading does not count);
- above ``max_connections`` open connections, a newcomer closes the connection that has waited
  longest for a request head (idle keep-alive ones included), so held-open connections cannot
  crowd real clients out; when every connection is busy with a request, the newcomer's request
  is answered 503 at once (``Retry-After: 1``) instead;
- what was shed is logged as one warning line per ``_LOG_EVERY_S``, with counts.

The limits travel in :class:`GatewayConfig`, which worker processes receive pickled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import weakref
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "ConnectionLimits",
    "GatewayConfig",
    "GuardedH11Protocol",
    "GuardedHttpToolsProtocol",
    "connection_cap",
]

log = logging.getLogger("ratekeeper.gateway")

_LOG_EVERY_S = 10.0
# How long a connection refused for want of room may take to send the head of the request it
# is answered 503 to, and how many such connections may wait at once beyond the cap.
_REFUSED_HEAD_S = 1.0
_MAX_REFUSING = 64
# Descriptors kept for what is not a client: the upstream pool, the store, logs, the listener.
_RESERVED_FDS = 320
# Bytes a second a request body must average once its grace has passed.
_MIN_BODY_RATE = 500


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per worker process: open client connections at most, seconds to send a request head,
    bytes a request head may have."""

    max_connections: int = 4096
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32_768


class GatewayConfig(uvicorn.Config):
    """uvicorn's configuration plus the :class:`ConnectionLimits` the guarded protocols read."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connection_limits = limits

    def configure_logging(self) -> None:
        """uvicorn's logging, with its per-request warnings about clients thinned out."""
        super().configure_logging()
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _ThinClientWarnings) for f in logger.filters):
            logger.addFilter(_ThinClientWarnings())


class _ThinClientWarnings(logging.Filter):
    """One line per ``_LOG_EVERY_S`` for each of uvicorn's warnings that any client can cause
    at will (a malformed request each), with the number left out: they must not fill a disk."""

    _THINNED = frozenset(
        {
            "Invalid HTTP request received.",
            "Unsupported upgrade request.",
            "Exceeded concurrency limit.",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str) or message not in self._THINNED:
            return True
        if record.created - self._last.get(message, float("-inf")) < _LOG_EVERY_S:
            self._quiet[message] = self._quiet.get(message, 0) + 1
            return False
        quiet = self._quiet.pop(message, 0)
        if quiet:
            record.msg = f"{message} ({quiet} more since the last report)"
        self._last[message] = record.created
        return True


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered so that the connections fit under this process's file limit
    (whose soft value is first raised to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - _RESERVED_FDS))


class _Ledger:
    """One server's guarded connections: how many are open, which wait for a request head
    (oldest first), and what was shed since the last log line."""

    def __init__(self) -> None:
        self.open = 0
        self.refusing = 0
        self.waiting: dict[Any, None] = {}
        self.counts = {
            "evicted": 0,
            "refused": 0,
            "head_timeout": 0,
            "head_too_large": 0,
            "body_too_slow": 0,
        }
        self.flush: asyncio.TimerHandle | None = None

    def note(self, kind: str, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.counts[kind] += 1
        if self.flush is None:
            self.report(limits)
            self.flush = loop.call_later(_LOG_EVERY_S, self._flush, limits, loop)

    def _flush(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.flush = None
        if any(self.counts.values()):
            self.report(limits)
            self.flush = loop.call_later(_LOG_EVERY_S, self._flush, limits, loop)

    def report(self, limits: ConnectionLimits) -> None:
        counts = self.counts
        log.warning(
            "shedding connections (%d open, cap %d): %d idle closed for newcomers, %d refused "
            "503 (all busy), %d closed without a request head after %gs, %d request heads over "
            "%d bytes, %d request bodies slower than %d bytes/s",
            self.open,
            limits.max_connections,
            counts["evicted"],
            counts["refused"],
            counts["head_timeout"],
            limits.header_timeout_s,
            counts["head_too_large"],
            limits.max_header_bytes,
            counts["body_too_slow"],
            _MIN_BODY_RATE,
        )
        for kind in counts:
            counts[kind] = 0


_LEDGERS: weakref.WeakKeyDictionary[Any, _Ledger] = weakref.WeakKeyDictionary()


def _ledger(server_state: Any) -> _Ledger:
    found = _LEDGERS.get(server_state)
    if found is None:
        found = _LEDGERS[server_state] = _Ledger()
    return found


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps(
        {"error": {"code": "overloaded", "message": "The gateway is at its connection limit."}},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_TOO_LARGE = (
    b'{"error":{"code":"request_header_too_large","message":"The request head is larger than '
    b'this gateway accepts."}}'
)
_TOO_LARGE_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
)


class _Guard:
    """The additions to uvicorn's protocols (see the module docstring); mixed in first."""

    # Set by uvicorn's protocols (config is a GatewayConfig).
    config: Any
    server_state: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    app: Any
    flow: Any

    _limits: ConnectionLimits
    _book: _Ledger
    _head_bytes: int
    _timer: asyncio.TimerHandle | None
    _counted: bool
    _refusing: bool
    _body_start: float
    _body_bytes: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        limits: ConnectionLimits = self.config.connection_limits
        self._limits = limits
        self._book = book = _ledger(self.server_state)
        self._head_bytes = 0
        self._timer = None
        self._counted = True
        self._refusing = False
        self._body_start = 0.0
        self._body_bytes = 0
        book.open += 1
        if book.open > limits.max_connections:
            if book.waiting:
                oldest = next(iter(book.waiting))
                oldest._shed("evicted")
            elif book.refusing >= _MAX_REFUSING:
                self._shed("refused")
                return
            else:
                # Every connection is busy: this one gets a quick 503 to its request.
                self._refusing = True
                book.refusing += 1
                self.app = _busy
                book.note("refused", limits, self.loop)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        waiting = self in self._book.waiting
        if waiting:
            self._head_bytes += len(data)
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if not waiting:
            self._body_bytes += len(data)
            return
        if self.cycle is not before:
            self._head_done()
            self._await_body()
        elif self._head_bytes > self._limits.max_header_bytes and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE_ANSWER)
            self._shed("head_too_large")
        elif self._timer is None and self in self._book.waiting:
            # Armed at the first byte of a head that did not come whole: one that did (most
            # do, in one packet) costs no timer.
            self._arm()

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        if self.cycle is before and not self.transport.is_closing():
            # Idle keep-alive: uvicorn's keep-alive timer runs until the next request's first
            # byte arms the head deadline (data_received).
            self._head_done()
            self._book.waiting[self] = None
            self._head_bytes = 0

    def _await_head(self) -> None:
        self._book.waiting[self] = None
        self._arm()

    def _arm(self) -> None:
        delay = _REFUSED_HEAD_S if self._refusing else self._limits.header_timeout_s
        self._timer = self.loop.call_later(delay, self._head_late)

    def _head_done(self) -> None:
        self._book.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _await_body(self) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        self._body_start = self.loop.time()
        self._body_bytes = 0
        self._timer = self.loop.call_later(self._limits.header_timeout_s, self._body_check)

    def _body_check(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The app is not reading: the client cannot send, and is not slow.
            self._await_body()
            return
        elapsed = self.loop.time() - self._body_start
        allowed = self._limits.header_timeout_s + self._body_bytes / _MIN_BODY_RATE
        if elapsed > allowed:
            self._shed("body_too_slow")
            return
        self._timer = self.loop.call_later(allowed - elapsed + 0.01, self._body_check)

    def _head_late(self) -> None:
        self._timer = None
        if self in self._book.waiting:
            self._shed("head_timeout")

    def _shed(self, kind: str) -> None:
        self._book.note(kind, self._limits, self.loop)
        self._forget()
        self.transport.close()

    def _forget(self) -> None:
        if not self._counted:
            return
        self._counted = False
        book = self._book
        book.open -= 1
        if self._refusing:
            book.refusing -= 1
        self._head_done()


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
    """uvicorn's httptools protocol with the connection guard."""


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's h11 protocol with the connection guard."""
