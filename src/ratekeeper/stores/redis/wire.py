"""The Redis store's wire: RESP over sockets of its own, read by hiredis, sync and asyncio.

A decision is a few hundred bytes of ``EVALSHA`` packed once, written to a socket, and one reply
parsed by hiredis; redis-py's per-command machinery cost more than the script. A :class:`Node`
is one server: idle blocking connections shared by threads, and one pipelined asyncio connection
per event loop (asyncio transports belong to the loop that made them). Both drivers share the
connection set-up (AUTH, SELECT, CLIENT SETNAME and SCRIPT LOAD in one round trip, options read
from the URL by redis-py's own parser) and the NOSCRIPT recovery (:func:`codec.script_flow`).

Replies come back as values: bytes, or a ``hiredis.ReplyError`` for a refused command (the
connection stays usable). Socket errors and unreadable replies are raised (:data:`WIRE_ERRORS`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import socket
import ssl
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio

from ratekeeper.flows import drive, drive_async
from ratekeeper.stores.redis.codec import LOAD_SCRIPT, pack, script_flow

__all__ = [
    "WIRE_BROKEN",
    "WIRE_ERRORS",
    "AsyncConnection",
    "Endpoint",
    "Exchange",
    "Node",
    "SyncConnection",
]

# What the wire drivers raise: socket and TLS errors (ConnectionError and TimeoutError among
# them), a reply hiredis cannot parse, and a reply that is an error.
WIRE_ERRORS = (OSError, hiredis.HiredisError)
# Errors after which a connection cannot be used again: the reply order may be lost.
WIRE_BROKEN = (OSError, hiredis.ProtocolError)

# Calls coalesced into one write at most: without a cap, 64 busy tasks settle into two batches
# that the client and the server take turns on; smaller writes let the server start on a batch
# while the client still prepares the next (measured with 64 tasks: ~1.7x the decisions/s of
# an uncapped batch, at about the same CPU per decision, and less than a write per call).
_COALESCE_MAX = 16
_ASKING = pack(b"ASKING")
# The waiter of a reply nobody waits for (ASKING's).
_UNHEARD: Any = object()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a standalone server listens and what a new connection sends first, read from the
    redis-py URL by redis-py's own parser, so every option means what it means there."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    # AUTH, SELECT, CLIENT SETNAME (those the URL asks for) and SCRIPT LOAD, pipelined; out of
    # the repr, as it holds the password.
    hello: bytes = field(repr=False)
    hello_replies: int

    def at(self, host: str, port: int) -> Endpoint:
        """The same set-up for another server (a node of the same cluster)."""
        return dataclasses.replace(self, host=host, port=port)

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """The endpoint of a ``redis://`` or ``rediss://`` URL."""
        options = redis.asyncio.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
        commands = []
        if options.username:
            commands.append(pack(b"AUTH", options.username.encode(), options.password.encode()))
        elif options.password:
            commands.append(pack(b"AUTH", options.password.encode()))
        if options.db:
            commands.append(pack(b"SELECT", str(int(options.db)).encode()))
        if options.client_name:
            commands.append(pack(b"CLIENT", b"SETNAME", options.client_name.encode()))
        commands.append(LOAD_SCRIPT)
        context = options.ssl_context.get() if hasattr(options, "ssl_context") else None
        return cls(options.host, options.port, context, b"".join(commands), len(commands))

    def check(self, replies: Sequence[Any]) -> None:
        """Raise the first refusal among the replies to :attr:`hello`."""
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"the server refused the connection set-up: {reply}")


class SyncConnection:
    """A blocking socket to a standalone server, set up by :attr:`Endpoint.hello`."""

    __slots__ = ("_reader", "_sock")

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.ssl is not None:
                sock = endpoint.ssl.wrap_socket(sock, server_hostname=endpoint.host)
            self._sock = sock
            self._reader = hiredis.Reader()
            endpoint.check(self._exchange(endpoint.hello, endpoint.hello_replies))
        except BaseException:
            sock.close()
            raise

    def send(self, data: bytes) -> None:
        """Write commands; :meth:`receive` reads their replies."""
        self._sock.sendall(data)

    def receive(self, replies: int) -> list[Any]:
        """Read ``replies`` replies, refusals as ``ReplyError`` values."""
        reader = self._reader
        out: list[Any] = []
        while len(out) < replies:
            reply = reader.gets()
            if reply is False:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                reader.feed(chunk)
            else:
                out.append(reply)
        return out

    def _exchange(self, data: bytes, replies: int) -> list[Any]:
        self.send(data)
        return self.receive(replies)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


class AsyncConnection(asyncio.Protocol):
    """One pipelined connection for one event loop.

    A call is written at once when nothing is in flight; calls made while others are in flight
    queue up and leave in one write on the next turn of the loop, or as soon as
    ``_COALESCE_MAX`` of them wait (with ``coalesce``). Replies
    resolve the waiting futures in order. A caller cancelled while waiting leaves its future in
    place and its reply is dropped, so later replies still reach their callers. After a lost
    connection, a protocol error or ``timeout_s`` without any reply while calls wait, the
    connection is ``broken``: every waiter fails with the reason and a new connection is needed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, *, coalesce: bool):
        self.loop = loop
        self.broken: Exception | None = None
        self._timeout_s = timeout_s
        self._coalesce = coalesce
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        # One entry per reply to come: the caller's future, None for a script load and
        # _UNHEARD for an ASKING, whose replies nobody waits for.
        self._waiting: deque[asyncio.Future[Any] | None] = deque()
        self._queued: list[bytes] = []
        self._flush: asyncio.Handle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._progress_at = 0.0
        self._loading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio: the socket is open."""
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """asyncio: replies arrived; resolve their waiters in order."""
        reader = self._reader
        waiting = self._waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()
                if future is None:
                    self._loading = False
                elif future is not _UNHEARD and not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self._break(ConnectionError(f"unreadable reply from the server: {exc!r}"))
            return
        if waiting:
            self._progress_at = self.loop.time()

    def eof_received(self) -> bool:
        """asyncio: the server closed its side."""
        self._break(ConnectionError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the socket is closed."""
        self._break(ConnectionError(f"connection lost: {exc or 'closed'}"))

    def hello(self, endpoint: Endpoint) -> list[asyncio.Future[Any]]:
        """Send the connection set-up; the futures of its replies."""
        futures = [self.loop.create_future() for _ in range(endpoint.hello_replies)]
        self._send(endpoint.hello, futures)
        return futures

    def call(
        self, packed: bytes, load_first: bool = False, asking: bool = False
    ) -> asyncio.Future[Any]:
        """Send one packed command; its reply (a refusal as a ``ReplyError`` value). With
        ``load_first`` the script is loaded before, unless a load is already on its way; with
        ``asking`` the command is preceded by ``ASKING`` (a cluster slot in migration)."""
        future = self.loop.create_future()
        if load_first and not self._loading:
            self._loading = True
            if asking:
                self._send(LOAD_SCRIPT + _ASKING + packed, [None, _UNHEARD, future])
            else:
                self._send(LOAD_SCRIPT + packed, [None, future])
        elif asking:
            self._send(_ASKING + packed, [_UNHEARD, future])
        else:
            self._send(packed, [future])
        return future

    def _send(self, data: bytes, futures: Sequence[asyncio.Future[Any] | None]) -> None:
        if self.broken is not None:
            raise ConnectionError(str(self.broken))
        waiting = self._waiting
        if waiting and self._coalesce:
            queued = self._queued
            queued.append(data)
            if len(queued) >= _COALESCE_MAX:
                self._queued = []
                self._transport.write(b"".join(queued))  # type: ignore[union-attr]
            elif self._flush is None:
                self._flush = self.loop.call_soon(self._write_queued)
        else:
            if not waiting:
                self._progress_at = self.loop.time()
                if self._watch is None:
                    self._watch = self.loop.call_at(
                        self._progress_at + self._timeout_s, self._check_progress
                    )
            self._transport.write(data)  # type: ignore[union-attr]
        waiting.extend(futures)

    def _write_queued(self) -> None:
        self._flush = None
        queued, self._queued = self._queued, []
        if queued and self.broken is None:
            self._transport.write(b"".join(queued))  # type: ignore[union-attr]

    def _check_progress(self) -> None:
        self._watch = None
        if not self._waiting or self.broken is not None:
            return
        due = self._progress_at + self._timeout_s
        if self.loop.time() < due:
            self._watch = self.loop.call_at(due, self._check_progress)
        else:
            self._break(TimeoutError(f"no reply from the server within {self._timeout_s:g} s"))

    def _break(self, reason: Exception) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        for handle in (self._flush, self._watch):
            if handle is not None:
                handle.cancel()
        self._flush = self._watch = None
        self._queued = []
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if future is not None and future is not _UNHEARD and not future.done():
                future.set_exception(type(reason)(*reason.args))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close the connection; calls still waiting fail."""
        self._break(ConnectionError("the connection was closed by the store"))


@dataclass(slots=True)
class Exchange:
    """A command written by :meth:`Node.begin`, its reply not read yet."""

    connection: SyncConnection | None
    data: bytes
    replies: int
    # Whether the connection had been used before: a failure then may be a stale socket.
    reused: bool
    # Why nothing could be written (connection is None).
    error: BaseException | None


class Node:
    """One server, spoken to from threads and from any number of event loops.

    Threads share idle blocking connections (``list.pop`` and ``list.append`` are atomic, so
    without a lock); each event loop gets one pipelined :class:`AsyncConnection`, opened once by
    whoever asks first and opened again after it broke.
    """

    def __init__(self, endpoint: Endpoint, timeout_s: float, *, coalesce: bool) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._coalesce = coalesce
        self._idle: list[SyncConnection] = []
        # The last loop's connection kept apart for a cheap lookup.
        self._aconn: AsyncConnection | None = None
        self._aconns: dict[asyncio.AbstractEventLoop, AsyncConnection] = {}
        self._aopening: dict[asyncio.AbstractEventLoop, asyncio.Task[AsyncConnection]] = {}
        _NODES.add(self)

    def __repr__(self) -> str:
        return f"<Node {self.endpoint.host}:{self.endpoint.port}>"

    # -- threads ------------------------------------------------------------------------------

    def call(self, packed: bytes, load_first: bool = False, asking: bool = False) -> Any:
        """Send one command on an idle connection and return its reply (see the module);
        ``load_first`` loads the script before, ``asking`` sends ``ASKING`` before."""
        return self.finish(self.begin(packed, load_first, asking))

    def begin(self, packed: bytes, load_first: bool = False, asking: bool = False) -> Exchange:
        """Write one command (as :meth:`call`) without waiting for its reply, so that calls
        to several servers overlap; :meth:`finish` reads the reply."""
        data = packed
        replies = 1
        if asking:
            data = _ASKING + data
            replies += 1
        if load_first:
            data = LOAD_SCRIPT + data
            replies += 1
        return self.begin_many(data, replies)

    def begin_many(self, data: bytes, count: int) -> Exchange:
        """Write ``count`` commands in one write (as :meth:`begin`, pipelined on one
        connection); :meth:`finish_many` reads their replies."""
        replies = count
        try:
            connection: SyncConnection | None = self._idle.pop()
            reused = True
        except IndexError:
            connection = None
            reused = False
        try:
            if connection is None:
                connection = SyncConnection(self.endpoint, self._timeout_s)
            connection.send(data)
        except WIRE_ERRORS as exc:
            if connection is not None:
                connection.close()
            return Exchange(None, data, replies, reused, exc)
        return Exchange(connection, data, replies, reused, None)

    def finish(self, exchange: Exchange) -> Any:
        """The reply of a command written by :meth:`begin`."""
        return self.finish_many(exchange)[-1]

    def finish_many(self, exchange: Exchange) -> list[Any]:
        """The replies of the commands written by :meth:`begin_many`."""
        connection = exchange.connection
        if connection is not None:
            try:
                reply = connection.receive(exchange.replies)
            except WIRE_BROKEN as exc:
                connection.close()
                error: BaseException = exc
            else:
                self._idle.append(connection)
                return reply
        else:
            error = exchange.error  # type: ignore[assignment]
        if not exchange.reused:
            raise error
        # One retry on a fresh connection absorbs an idle connection that a server restart
        # closed; a replayed script can only over-count, never admit more.
        connection = None
        try:
            connection = SyncConnection(self.endpoint, self._timeout_s)
            connection.send(exchange.data)
            reply = connection.receive(exchange.replies)
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        self._idle.append(connection)
        return reply

    def script(self, packed: bytes) -> bytes:
        """Run one packed ``EVALSHA``, loading the script if the server lost it."""
        return drive(script_flow(), functools.partial(self.call, packed))

    def close(self) -> None:
        """Close the idle blocking connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- asyncio ------------------------------------------------------------------------------

    async def call_async(
        self, packed: bytes, load_first: bool = False, asking: bool = False
    ) -> Any:
        """The asyncio twin of :meth:`call`, pipelined on the running loop's connection."""
        return await (await self.begin_async(packed, load_first, asking))

    async def begin_async(
        self, packed: bytes, load_first: bool = False, asking: bool = False
    ) -> asyncio.Future[Any]:
        """Write one command (as :meth:`call_async`); the future of its reply. Awaiting this
        waits only for a connection to open, so calls to several servers overlap."""
        connection = self._aconn
        if (
            connection is None
            or connection.broken is not None
            or connection.loop is not asyncio.get_running_loop()
        ):
            connection = await self._connection()
        return connection.call(packed, load_first, asking)

    async def script_async(self, packed: bytes) -> bytes:
        """The asyncio twin of :meth:`script`."""
        return await drive_async(script_flow(), functools.partial(self.call_async, packed))

    async def close_async(self) -> None:
        """Close the running loop's connection; calls still waiting on it fail."""
        connection = self._aconns.pop(asyncio.get_running_loop(), None)
        if self._aconn is connection:
            self._aconn = None
        if connection is not None:
            connection.close()

    async def _connection(self) -> AsyncConnection:
        """The running loop's connection, opened (once, whoever asks first) if it has none or
        lost it."""
        loop = asyncio.get_running_loop()
        connection = self._aconns.get(loop)
        if connection is None or connection.broken is not None:
            opening = self._aopening.get(loop)
            if opening is None:
                for old in [old for old in self._aconns if old.is_closed()]:
                    del self._aconns[old]
                opening = loop.create_task(self._open())
                self._aopening[loop] = opening
                opening.add_done_callback(functools.partial(self._opened, loop))
            # A caller cancelled while waiting leaves the connection opening for the others.
            connection = await asyncio.shield(opening)
        self._aconn = connection
        return connection

    def _opened(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        if self._aopening.get(loop) is task:
            del self._aopening[loop]
        if not task.cancelled() and task.exception() is None:
            self._aconns[loop] = task.result()

    async def _open(self) -> AsyncConnection:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        connection = AsyncConnection(loop, self._timeout_s, coalesce=self._coalesce)
        try:
            async with asyncio.timeout(self._timeout_s):
                await loop.create_connection(
                    lambda: connection, endpoint.host, endpoint.port, ssl=endpoint.ssl
                )
                replies = await asyncio.gather(*connection.hello(endpoint))
            endpoint.check(replies)
        except BaseException:
            connection.close()
            raise
        return connection

    def _forget(self) -> None:
        # A child process must not talk on its parent's sockets; dropping the objects closes
        # only the child's copies of the file descriptors.
        self._idle = []
        self._aconn = None
        self._aconns = {}
        self._aopening = {}


_NODES: weakref.WeakSet[Node] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for node in _NODES:
        node._forget()


os.register_at_fork(after_in_child=_forget_connections_after_fork)
