"""A lean listener for proxies' decision requests (``serve --decide-listen``).

Behind nginx every allowed request costs a decision besides the upstream's answer, and a decision
served through uvicorn + ASGI costs as much as the upstream itself (bench/gateway.py's ceiling
row). This listener answers ``/_ratekeeper/decide`` (and ``/decide/...``, ``/report``) on its
own TCP or Unix socket with an ``asyncio.Protocol`` and httptools, on the same event loop and
with the same enforcer as the traffic port: reset, block, reload, the over-limit cache and the
metrics apply alike, and the answers are ``ratekeeper.gateway.decide``'s, byte for byte in
status, headers and body (``verdict``, one logic for both front ends).

It speaks the HTTP/1.1 a proxy speaks: keep-alive, pipelining (answers in order), requests
without bodies (a body is read and dropped). What a hostile client can do is bounded:

- a request that does not parse is answered 400, a head over ``max_header_bytes`` or with
  more than ``_MAX_HEADERS`` headers 431; each closes the connection, and only that one; a
  request asking to switch protocols (``Upgrade``, ``CONNECT``) is decided like any other, and
  its connection closed after the answer;
- a request must arrive whole within ``header_timeout_s`` of its first byte (slowloris); a
  kept-alive connection idle for ``_IDLE_S`` is closed;
- above ``max_connections`` a newcomer closes the connection idle the longest, or is closed
  itself when none is idle;
- a client that sends requests without reading the answers is no longer read (the transport's
  write buffer and the queue of pipelined requests are both bounded);
- a client that disconnects mid-request leaves nothing behind: a decision under way ends,
  its answer is dropped.

With several workers each binds the same TCP port (``SO_REUSEPORT``; the supervisor holds the
port without listening); a Unix socket is served by one worker (``--workers 1``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import httptools

from ratekeeper.gateway.connections import ConnectionLimits
from ratekeeper.gateway.decide import DECIDE_PATH, REPORT_PATH, Verdict, report_verdict, verdict
from ratekeeper.gateway.decide_socket import bound_socket
from ratekeeper.gateway.proxy import error_answer
from ratekeeper.http.engine import Enforcer

__all__ = ["DecideListener", "listener_from_environment"]

log = logging.getLogger("ratekeeper.gateway")

_MAX_HEADERS = 100
# Longer than nginx's upstream keepalive_timeout (60 s), so that nginx closes first and never
# sends a request on a connection this side is closing.
_IDLE_S = 75.0
# Pipelined requests waiting for an answer before the connection is no longer read.
_MAX_QUEUED = 32
_SWEEP_S = 0.5
_LOG_EVERY_S = 10.0
_DECIDE_URL = DECIDE_PATH.encode()
_PREFIX = DECIDE_PATH + "/"
_ENCODED_MAX = 512


def listener_from_environment(enforcer: Enforcer) -> tuple[DecideListener, socket.socket] | None:
    """In a ``serve`` worker: the listener and the socket to serve, when ``--decide-listen``
    was given (``ratekeeper.gateway.decide_socket``)."""
    found = bound_socket()
    if found is None:
        return None
    sock, limits = found
    return DecideListener(enforcer, limits), sock


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES: dict[int, bytes] = {}


def _encode(found: Verdict, close: bool = False) -> bytes:
    status, headers, body = found
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = _status_line(status)
    if close:
        headers = [*headers, (b"connection", b"close")]
    if not headers:
        return line + b"\r\n" + body
    fields = b"\r\n".join([b": ".join(pair) for pair in headers])
    if fields.count(b"\n") >= len(headers) or fields.count(b"\r") >= len(headers):
        # Never a header split in two, whatever a policy's answer holds: such values are left out.
        kept = [(n, v) for n, v in headers if b"\r" not in n + v and b"\n" not in n + v]
        if not kept:
            return line + b"\r\n" + body
        fields = b"\r\n".join([b": ".join(pair) for pair in kept])
    return b"%s%s\r\n\r\n%s" % (line, fields, body)


def _error(status: int, code: str, message: str) -> Verdict:
    headers, body = error_answer(status, code, message)
    return status, headers, body


_NOT_FOUND = _error(
    404,
    "not_found",
    f"this listener answers {DECIDE_PATH} (and {DECIDE_PATH}/...) and {REPORT_PATH}",
)
_MALFORMED = _error(400, "malformed_request", "The request is not HTTP/1.1 this listener reads.")
# Not an answer: the connection is closed once the answers before it are out.
_CLOSE: Verdict = (0, [], b"")
_TOO_LARGE = _error(
    431, "request_header_fields_too_large", "The request head is larger than this listener reads."
)
_SHUTTING_DOWN = _error(503, "shutting_down", "The gateway is shutting down; retry in a moment.")
_FAILED = _error(500, "decision_failed", "The decision could not be made; see the gateway's log.")


class DecideListener:
    """Serves decision requests with ``enforcer`` within ``limits`` (see the module docstring)."""

    def __init__(self, enforcer: Enforcer, limits: ConnectionLimits | None = None) -> None:
        self.enforcer = enforcer
        self.limits = limits or ConnectionLimits()
        self.open: dict[_Connection, None] = {}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._path: str | None = None
        # Refusals encoded once: id(verdict) -> (verdict, bytes) (decide keeps each refusal's
        # verdict as one object while its answer lives).
        self._encoded: dict[int, tuple[Verdict, bytes]] = {}
        self._shed: dict[str, int] = {}
        self._logged = 0.0

    async def start(self, sock: socket.socket) -> None:
        """Serve ``sock`` (bound and listening) on the running event loop."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self._path = sock.getsockname()
            self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    async def stop(self) -> None:
        """Stop accepting; close idle connections now and the others after their answers."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        if self._path:
            # Here, not in serve's supervisor: uvicorn ends the process by the signal it got
            # once the lifespan has shut down.
            Path(self._path).unlink(missing_ok=True)
        for connection in list(self.open):
            connection.finish()

    def decide(self, scope: dict[str, Any]) -> Coroutine[Any, Any, Verdict]:
        """The coroutine answering one parsed request."""
        path: str = scope["path"]
        wanted = self.enforcer.header_names
        if path == DECIDE_PATH or path.startswith(_PREFIX):
            return verdict(self.enforcer, scope, wanted)
        if path == REPORT_PATH:
            return report_verdict(self.enforcer, scope, wanted)
        return _constant(_NOT_FOUND)

    def encoded(self, found: Verdict) -> bytes:
        """``found`` as bytes on the wire; refusals (answered again as the same object) once."""
        status = found[0]
        if status == 200:
            return _encode(found)
        kept = self._encoded.get(id(found))
        if kept is not None and kept[0] is found:
            return kept[1]
        data = _encode(found)
        if len(self._encoded) >= _ENCODED_MAX:
            self._encoded.clear()
        self._encoded[id(found)] = (found, data)
        return data

    def opened(self, connection: _Connection) -> bool:
        """Count a new connection; ``False`` when there is no room for it."""
        if len(self.open) >= self.limits.max_connections:
            idle = [c for c in self.open if c.idle]
            oldest = min(idle, key=lambda c: c.since, default=None)
            if oldest is None:
                self.shed("refused")
                return False
            self.shed("evicted")
            oldest.finish()
        self.open[connection] = None
        return True

    def closed(self, connection: _Connection) -> None:
        """Forget a closed connection."""
        self.open.pop(connection, None)

    def shed(self, what: str) -> None:
        """Count what was refused or closed, and say so at most once per ``_LOG_EVERY_S``."""
        self._shed[what] = self._shed.get(what, 0) + 1
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            counts = ", ".join(f"{n} {k}" for k, n in sorted(self._shed.items()))
            self._shed.clear()
            log.warning("decide listener: shed %s", counts)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        head_s = self.limits.header_timeout_s
        for connection in list(self.open):
            connection.expire(now, head_s)
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)


async def _constant(found: Verdict) -> Verdict:
    return found


async def _resume(coro: Coroutine[Any, Any, Verdict], waiting: Any) -> Verdict:
    """Finish, in a task, a coroutine that was started inline and unexpectedly suspended on
    ``waiting`` (a future, or ``None`` for a bare yield)."""
    while True:
        if waiting is None:
            await asyncio.sleep(0)
        else:
            # What a task does with a future it is handed: marked not yet awaited, then awaited.
            waiting._asyncio_future_blocking = False
            await waiting
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, answers are written in request order."""

    def __init__(self, listener: DecideListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._inline = listener.enforcer.decides_on_loop
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._max_head = listener.limits.max_header_bytes
        # When the connection opened or its last request began (loop time): the start of a
        # request being read, or about when an idle connection last asked.
        self.since = self._loop.time()
        self._reading = False
        self._queue: deque[tuple[dict[str, Any] | Verdict, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        # Reading stops while the client does not read its answers, while too many pipelined
        # requests wait, and for good once a request was refused (``_stopped``).
        self._paused = False
        self._write_paused = False
        self._stopped = False
        self._closing = False
        self._too_large = False

    # -- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        if not self._listener.opened(self):
            self._closing = True
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._queue.clear()
        self._listener.closed(self)

    def data_received(self, data: bytes) -> None:
        if self._stopped or self._closing:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request itself was read whole and is answered; no other protocol follows.
            self._stopped = True
            self._submit(_CLOSE, False)
            return
        except httptools.HttpParserCallbackError:
            if self._too_large:
                self._refuse(_TOO_LARGE, "oversized")
            else:
                self._refuse(_MALFORMED, "malformed")
            return
        except httptools.HttpParserError:
            self._refuse(_MALFORMED, "malformed")
            return
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse(_TOO_LARGE, "oversized")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._reading_state()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._reading_state()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._reading = True
        self.since = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Names lower-case, as uvicorn gives them (and as ``decide`` keeps the descriptions of
        # repeated requests by).
        self._headers.append((name.lower(), value))
        self._head_size += len(name) + len(value)
        if self._head_size > self._max_head or len(self._headers) > _MAX_HEADERS:
            self._too_large = True
            # Any exception stops httptools; the flag says which answer it calls for.
            raise BufferError("request head too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that came in one piece is measured here and in ``on_header``; one still
        # arriving, before httptools has gathered it, in ``data_received``.
        if len(self._url) > self._max_head:
            self._too_large = True
            raise BufferError("request head too large")

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._reading = False
        if self._stopped:
            # Requests pipelined after one that ends the connection are not decided.
            return
        parser = self._parser
        keep = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        scope = self._scope(parser.get_method())
        if scope is None or not keep:
            self._stopped = True
        self._submit(scope if scope is not None else _MALFORMED, keep and scope is not None)

    # -- requests and answers -------------------------------------------------------------------

    def _scope(self, method: bytes) -> dict[str, Any] | None:
        url = self._url
        if url == _DECIDE_URL:
            path, raw, query = DECIDE_PATH, url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
                raw = parsed.path or b""
                path = raw.decode("ascii")
            except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
                return None
            if "%" in path:
                path = unquote(path)
            query = parsed.query or b""
        # What uvicorn puts in a scope, and all that ``decide`` reads of one.
        return {
            "method": method.decode("ascii"),
            "path": path,
            "raw_path": raw,
            "query_string": query,
            "headers": self._headers,
            "client": self._client,
        }

    def _submit(self, item: dict[str, Any] | Verdict, keep: bool) -> None:
        """Answer ``item`` now, or after the answers before it (kept in order)."""
        if self._task is not None or self._queue:
            self._queue.append((item, keep))
            self._reading_state()
            return
        self._dispatch(item, keep)

    def _dispatch(self, item: dict[str, Any] | Verdict, keep: bool) -> None:
        if isinstance(item, tuple):
            self._answer(item, keep)
            return
        coro = self._listener.decide(item)
        if not self._inline:
            self._task = self._loop.create_task(self._finish(coro, keep))
            return
        # The enforcer decides on the loop: the coroutine ends at its first step, with no task.
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self._answer(done.value, keep)
        except Exception:
            log.exception("decide listener: the decision failed")
            self._answer(_FAILED, False)
        else:
            self._task = self._loop.create_task(self._finish(_resume(coro, waiting), keep))

    async def _finish(self, coro: Coroutine[Any, Any, Verdict], keep: bool) -> None:
        try:
            found = await coro
        except Exception:
            log.exception("decide listener: the decision failed")
            found, keep = _FAILED, False
        self._task = None
        self._answer(found, keep)
        while self._queue and self._task is None and not self._closing:
            item, keep = self._queue.popleft()
            self._dispatch(item, keep)
        self._reading_state()

    def _answer(self, found: Verdict, keep: bool) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        if found is _CLOSE:
            self._close()
            return
        if keep:
            transport.write(self._listener.encoded(found))
            return
        transport.write(_encode(found, close=True))
        self._closing = True
        transport.close()

    def _refuse(self, found: Verdict, what: str) -> None:
        """Answer ``found`` after what is already queued, then close; nothing more is read."""
        self._listener.shed(what)
        self._reading = False
        self._stopped = True
        self._submit(found, False)
        self._reading_state()

    def _reading_state(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        pause = self._write_paused or self._stopped or len(self._queue) >= _MAX_QUEUED
        if pause and not self._paused:
            self._paused = True
            transport.pause_reading()
        elif self._paused and not pause:
            self._paused = False
            transport.resume_reading()

    # -- the listener's sweeps ---------------------------------------------------------------

    def expire(self, now: float, head_s: float) -> None:
        """Close the connection if its request is late (``head_s``) or it idled too long."""
        if self._transport is None or self._transport.is_closing():
            return
        if self._reading and now - self.since > head_s:
            self._listener.shed("slow requests")
            self._close()
        elif now - self.since > _IDLE_S and self.idle:
            self._close()

    @property
    def idle(self) -> bool:
        """Waiting for a request: none being read, decided or answered."""
        return not self._reading and self._task is None and not self._queue

    def finish(self) -> None:
        """Close now if idle, else after the answers under way."""
        if self.idle:
            self._close()
        else:
            self._reading = False
            self._stopped = True
            self._submit(_SHUTTING_DOWN, False)

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()
