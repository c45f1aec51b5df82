"""The Redis / Valkey store: one Lua script decides, charges and expires, in one round trip.

The algorithms exist here a second time, in ``lua/decide.lua``, because a decision must read
and write every limit's state atomically on the server; Python only marshals arguments and
replies. The script mirrors :mod:`ratekeeper.algorithms` operation for operation and is checked
against it by differential property tests. Decisions use the server clock (``TIME``), so
application servers with skewed clocks cannot stretch a limit.

Keys are ``<prefix>:{<blake2b(key)>}:<limit_set.id>``: the caller's key (an API key, an IP)
is never stored, only its hash, and the hash is the cluster hash tag, so every limit set of one
identity lives in one slot and a decision about it is one script call.

Redis Cluster, decisions that span slots (an identity's limits plus a ``global`` one): no script
can touch two slots atomically, and charging slot by slot then refunding on a later rejection
is not exact (a GCRA refund cannot know whether the bucket would have drained meanwhile; a
first-hit window cannot undo the window it opened). So the store never refunds. It reserves:

1. *reserve*, in every slot: check the limits as if ``cost`` plus every pending reservation
   of that item were charged; if they allow it, record ``cost`` as a pending reservation
   (a sorted-set member with a lease) without touching the state;
2. *commit* in every slot if all reserved (charge the state, drop the reservation), else
   *abort* the reservations that were made.

Every decision in a slot, single-slot ones too, counts pending reservations as charged, so
while a reservation is pending nobody can be admitted on the units it holds: committing it later
keeps every limit within its amount (a limit that allowed ``cost + pending`` at time ``t``
allows it at any later time on the same state: all four algorithms only relax as time passes).
An abort only removes a reservation that never touched the state, so it is exact. The price is
on the safe side: a request can be rejected because of a reservation that is then aborted, and a
reservation committed after its window ended is charged to the next window. A reservation whose
lease expired (a client stalled or died between the phases) is charged anyway at commit and the
decision is rejected, so a slow client never over-admits either.

Standalone servers are spoken to on connections of our own, not through redis-py's client:
a decision is a few hundred bytes of ``EVALSHA`` packed once, written to a socket, and one
reply parsed by hiredis, and the client's per-command machinery cost more than the script.
Both drivers share the packing, the connection set-up (AUTH, SELECT, CLIENT SETNAME and
SCRIPT LOAD in one round trip, options read from the URL by redis-py's own parser) and the reply
checks. The asyncio driver keeps one pipelined connection per event loop: a call is written at
once when nothing is in flight, calls made while others are in flight leave together (up to 16
per write) on the next turn of the loop, and replies resolve the callers in order. Cluster
connections stay redis-py's.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import socket
import ssl
import struct
import uuid
import weakref
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ratekeeper.algorithms import Algorithm, Step
from ratekeeper.decision import Decision
from ratekeeper.errors import StoreError, StoreURLError
from ratekeeper.limit import LimitSet
from ratekeeper.stores.url import mask_url

try:
    import hiredis
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.exceptions import NoScriptError, RedisClusterException, RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise StoreError("the Redis store needs redis-py: pip install 'ratekeeper[redis]'") from exc

__all__ = ["RedisStore", "RedisStoreError"]

Items: TypeAlias = Sequence[tuple[LimitSet, str]]
# One script call: its keys and its arguments.
Call: TypeAlias = tuple[list[str], list[bytes | str]]

SCRIPT = (Path(__file__).parent / "lua" / "decide.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

_ALGORITHM_CODES = {
    Algorithm.FIXED_WINDOW: b"f",
    Algorithm.FIRST_HIT_WINDOW: b"h",
    Algorithm.SLIDING_WINDOW: b"s",
    Algorithm.GCRA: b"g",
}
# Numbers a limit keeps in its state, by algorithm code (lua/decide.lua's WIDTH).
_STATE_WIDTH = {b"f": 2, b"h": 2, b"s": 3, b"g": 1}
# The script's binary arguments; see the top of lua/decide.lua.
_HEADER = struct.Struct("<cBBHddd")
_PLAN_HEAD = struct.Struct("<dB")
_PLAN_LIMIT = struct.Struct("<cddddd")
_STANDALONE = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
_CLUSTER = {
    "redis+cluster": "redis",
    "rediss+cluster": "rediss",
    "valkey+cluster": "redis",
    "valkeys+cluster": "rediss",
}
_OWN_OPTIONS = {"prefix", "timeout", "key_salt"}
_CONNECTION_ERRORS = (RedisError, RedisClusterException, OSError)
# A reservation left by a client that died between the two phases of a cross-slot decision
# stops holding units after this long.
_LEASE_MS = 5000
# Wait suggested when a decision lost its reservation: another attempt will settle at once.
_LOST_RETRY_S = 0.001


class RedisStoreError(StoreError):
    """Redis or Valkey failed during a decision (connection lost, timeout, refused command)."""


class RedisStore:
    """State in Redis or Valkey (standalone or Cluster), shared by every process that uses it.

    ``url`` is a ``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` or
    ``rediss+cluster://`` URL (or the ``valkey`` spellings), options ``?prefix=`` (key prefix,
    default ``rk``), ``?timeout=`` (seconds per command, default 2) and ``?key_salt=`` (a secret
    mixed into the hash of every caller's key: without it, someone who can read Redis can test
    guessed API keys or IPv4 addresses against the key names; every process sharing the state
    needs the same salt). The server is contacted at once: an unreachable one raises
    :class:`StoreError` naming the URL (password and salt masked). Decisions use the server's
    clock; ``use_server_time=False`` makes them use the caller's ``now`` instead, for tests only.
    Concurrent asyncio decisions share writes (``batch_async``, the default) or are each written
    on their own (``batch_async=False``), pipelined on one connection per event loop either way.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        timeout_s: float | None = None,
        key_salt: str | None = None,
        use_server_time: bool = True,
        batch_async: bool = True,
    ) -> None:
        self.url = mask_url(url)
        scheme, target, options, password = _parse_url(url)
        key_salt = options.get("key_salt", "") if key_salt is None else key_salt
        # blake2b's own keyed mode (a MAC): its key is at most 64 bytes, so longer salts are
        # hashed down first.
        salt = key_salt.encode()
        self._hash_key = salt if len(salt) <= 64 else hashlib.blake2b(salt).digest()
        prefix = options.get("prefix", "rk") if prefix is None else prefix
        if not prefix or any(c in prefix for c in "{}"):
            raise StoreURLError(
                f"key prefix must be non-empty without '{{' or '}}', got {prefix!r} "
                f"(store {self.url})"
            )
        if timeout_s is None:
            raw = options.get("timeout", "2")
            try:
                timeout_s = float(raw)
            except ValueError:
                timeout_s = math.nan
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise StoreURLError(f"timeout must be a number of seconds > 0 in store {self.url}")
        self.prefix = prefix
        self.cluster = scheme in _CLUSTER
        self.use_server_time = use_server_time
        self.batch_async = batch_async
        self._target = target
        self._password = password
        self._timeout_s = timeout_s
        self._plans: dict[str, tuple[bytes, bytes, int]] = {}
        # Cluster: redis-py's asyncio client, bound to the loop that opened it.
        self._aclient: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._astarting: asyncio.Future[Any] | None = None
        self._batcher: _Batcher | None = None
        # Standalone: one pipelined connection per event loop (asyncio transports belong to
        # the loop that made them), the last one used kept apart for a cheap lookup.
        self._aconn: _AsyncConnection | None = None
        self._aconns: dict[asyncio.AbstractEventLoop, _AsyncConnection] = {}
        self._aopening: dict[asyncio.AbstractEventLoop, asyncio.Task[_AsyncConnection]] = {}
        # Idle connections of the synchronous standalone driver; list.pop and list.append are
        # atomic, so threads share it without a lock.
        self._idle: list[_SyncConnection] = []
        self._client: Any = self._connect()
        self._endpoint = _Endpoint.from_url(target[0])
        _STORES.add(self)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Build a store from its URL; see the class docstring for the options."""
        return cls(url)

    def __repr__(self) -> str:
        kind = "cluster" if self.cluster else "standalone"
        salted = ", salted keys" if self._hash_key else ""
        return f"<RedisStore {self.url} {kind} prefix={self.prefix!r}{salted}>"

    # -- the synchronous driver -------------------------------------------------------------

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide and charge (unless ``peek``) atomically, in one round trip per slot."""
        if self.cluster and len(items) > 1:
            flow = self._cluster_flow(items, cost, now, peek)
            try:
                calls = next(flow)
                while True:
                    calls = flow.send([self._eval(call) for call in calls])
            except StopIteration as stop:
                decision: Decision = stop.value
                return decision
        call, n_limits = self._marshal(items, cost, now, peek, op=b"d")
        return _decision(self._eval(call), items, n_limits)

    def reset(self, items: Items) -> None:
        """Forget the state of these keys: they start afresh."""
        try:
            for limit_set, key in items:
                self._client.delete(self._key(limit_set, key))
        except _CONNECTION_ERRORS as exc:
            raise self._error("reset", exc) from exc

    def close(self) -> None:
        """Close the synchronous connections (the async ones close with :meth:`close_async`)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        self._client.close()

    def _eval(self, call: Call) -> bytes:
        if not self.cluster:
            return self._eval_direct(call)
        keys, args = call
        client = self._client
        try:
            try:
                reply: bytes = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
            except NoScriptError:
                # The server restarted or flushed its scripts: load it again, once.
                client.script_load(SCRIPT)
                reply = client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except _CONNECTION_ERRORS as exc:
            raise self._error("decide", exc) from exc
        return reply

    def _eval_direct(self, call: Call) -> bytes:
        """One script call on an idle connection of our own."""
        packed = _pack_evalsha(call)
        idle = self._idle
        try:
            connection = idle.pop()
        except IndexError:
            connection = None
        try:
            if connection is None:
                connection = self._new_connection()
            reply = connection.call(packed)
        except _WIRE_BROKEN as exc:
            # One retry on a fresh connection absorbs an idle connection that a server restart
            # closed; a replayed script can only over-count, never admit more.
            if connection is not None:
                connection.close()
            try:
                connection = self._new_connection()
                reply = connection.call(packed)
            except _WIRE_ERRORS as again:
                if connection is not None:
                    connection.close()
                raise self._error("decide", again) from exc
        except hiredis.ReplyError as exc:
            # A refused command: its answer was read whole, the connection stays usable.
            idle.append(connection)  # type: ignore[arg-type]
            raise self._error("decide", exc) from exc
        idle.append(connection)
        return reply

    def _new_connection(self) -> _SyncConnection:
        return _SyncConnection(self._endpoint, self._timeout_s)

    # -- the asyncio driver -----------------------------------------------------------------

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """The asyncio twin of :meth:`decide`; concurrent calls share pipelines."""
        if self.cluster and len(items) > 1:
            flow = self._cluster_flow(items, cost, now, peek)
            try:
                calls = next(flow)
                while True:
                    # One phase's calls go out together: they share the next pipeline.
                    replies = await asyncio.gather(*(self._eval_async(call) for call in calls))
                    calls = flow.send(replies)
            except StopIteration as stop:
                decision: Decision = stop.value
                return decision
        call, n_limits = self._marshal(items, cost, now, peek, op=b"d")
        return _decision(await self._eval_async(call), items, n_limits)

    async def reset_async(self, items: Items) -> None:
        """The asyncio twin of :meth:`reset`."""
        keys = [self._key(limit_set, key) for limit_set, key in items]
        try:
            if self.cluster:
                client = await self._async_cluster()
                for key in keys:
                    await client.delete(key)
            elif keys:
                connection = await self._async_connection()
                reply = await connection.call(_pack(b"DEL", *(k.encode() for k in keys)))
                if isinstance(reply, hiredis.ReplyError):
                    raise reply
        except _WIRE_ERRORS as exc:
            raise self._error("reset", exc) from exc

    async def close_async(self) -> None:
        """Close the asyncio connections of the running event loop."""
        loop = asyncio.get_running_loop()
        connection = self._aconns.pop(loop, None)
        if self._aconn is connection:
            self._aconn = None
        if connection is not None:
            connection.close()
        client, self._aclient, self._aloop, self._batcher = self._aclient, None, None, None
        self._astarting = None
        if client is not None:
            await client.aclose()

    async def _eval_async(self, call: Call) -> bytes:
        if self.cluster:
            return await self._eval_cluster_async(call)
        packed = _pack_evalsha(call)
        try:
            connection = self._aconn
            if (
                connection is None
                or connection.broken is not None
                or connection.loop is not asyncio.get_running_loop()
            ):
                connection = await self._async_connection()
            reply = await connection.call(packed)
            if type(reply) is not bytes:
                if not _is_noscript(reply):
                    raise reply
                # The server restarted or flushed its scripts: load it again, once.
                reply = await connection.call(packed, load_first=True)
                if type(reply) is not bytes:
                    raise reply
        except _WIRE_ERRORS as exc:
            raise self._error("decide", exc) from exc
        return reply

    async def _async_connection(self) -> _AsyncConnection:
        """The running loop's connection, opened (once, whoever asks first) if it has none or
        lost it."""
        loop = asyncio.get_running_loop()
        connection = self._aconns.get(loop)
        if connection is None or connection.broken is not None:
            opening = self._aopening.get(loop)
            if opening is None:
                for old in [old for old in self._aconns if old.is_closed()]:
                    del self._aconns[old]
                opening = loop.create_task(self._open_async())
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

    async def _open_async(self) -> _AsyncConnection:
        endpoint = self._endpoint
        loop = asyncio.get_running_loop()
        connection = _AsyncConnection(loop, self._timeout_s, coalesce=self.batch_async)
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

    async def _eval_cluster_async(self, call: Call) -> bytes:
        try:
            client = self._aclient
            if client is None or self._aloop is not asyncio.get_running_loop() or self._astarting:
                client = await self._async_cluster()
            batcher = self._batcher
            if batcher is not None:
                return await batcher.submit(call)
            return await _cluster_evalsha(client, call)
        except _CONNECTION_ERRORS as exc:
            raise self._error("decide", exc) from exc

    async def _async_cluster(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            # redis.asyncio connections belong to the loop that opened them.
            self._aclient = client = self._new_client(asynchronous=True)
            self._aloop = loop
            self._batcher = _Batcher(client) if self.batch_async else None
            # Concurrent first commands on a fresh cluster client race in redis-py (one
            # task's connection is closed while another sends on it): learn the topology
            # once, before any command; other first callers wait for it.
            self._astarting = asyncio.ensure_future(client.initialize())
        starting = self._astarting
        if starting is not None:
            try:
                await asyncio.shield(starting)
            except BaseException:
                if self._astarting is starting:
                    # The next call builds a fresh client and tries again.
                    self._aclient = self._astarting = None
                raise
            self._astarting = None
        return self._aclient

    # -- shared by both drivers -------------------------------------------------------------

    def _key(self, limit_set: LimitSet, key: str) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=12, key=self._hash_key).hexdigest()
        return f"{self.prefix}:{{{digest}}}:{limit_set.id}"

    def _plan(self, limit_set: LimitSet) -> tuple[bytes, bytes, int]:
        plan = self._plans.get(limit_set.id)
        if plan is None:
            # A key lives as long as its longest-lived limit; +1 ms covers rounding to ms.
            ttl_ms = math.ceil(limit_set.ttl_s * 1000) + 1
            packed = [_PLAN_HEAD.pack(ttl_ms, len(limit_set.limits))]
            state_format = "<"
            for limit in limit_set.limits:
                code = _ALGORITHM_CODES[limit.algorithm]
                packed.append(
                    _PLAN_LIMIT.pack(
                        code,
                        limit.amount,
                        limit.period_s,
                        limit.burst,
                        limit.interval_s,
                        limit.capacity_s,
                    )
                )
                state_format += "d" * _STATE_WIDTH[code]
            plan = (b"".join(packed), state_format.encode(), len(limit_set.limits))
            self._plans[limit_set.id] = plan
        return plan

    def _marshal(
        self, items: Items, cost: int, now: float, peek: bool, *, op: bytes, token: str = "-"
    ) -> tuple[Call, int]:
        clock = math.nan if self.use_server_time else now
        args: list[bytes | str] = [
            _HEADER.pack(op, peek, self.cluster, len(items), cost, _LEASE_MS, clock),
            token,
        ]
        keys = []
        n_limits = 0
        for limit_set, key in items:
            plan, state_format, n = self._plan(limit_set)
            args += (plan, state_format)
            n_limits += n
            keys.append(self._key(limit_set, key))
        if self.cluster:
            keys += [f"{k}:p" for k in keys]
        return (keys, args), n_limits

    def _cluster_flow(
        self, items: Items, cost: int, now: float, peek: bool
    ) -> Generator[list[Call], list[bytes], Decision]:
        """The cross-slot protocol of the module docstring, free of I/O: it yields the script
        calls to make and receives their replies, so both drivers run the same logic."""
        slots: dict[int, list[int]] = {}
        for index, (limit_set, key) in enumerate(items):
            slots.setdefault(key_slot(self._key(limit_set, key).encode()), []).append(index)
        groups = list(slots.values())
        if len(groups) == 1:
            call, n_limits = self._marshal(items, cost, now, peek, op=b"d")
            (reply,) = yield [call]
            return _decision(reply, items, n_limits)
        token = uuid.uuid4().hex
        op = b"d" if peek else b"r"
        parts = [[items[i] for i in group] for group in groups]
        marshalled = [self._marshal(part, cost, now, peek, op=op, token=token) for part in parts]
        replies = yield [call for call, _ in marshalled]
        parsed = [_parse(reply, n) for reply, (_, n) in zip(replies, marshalled, strict=True)]
        allowed = all(p[0] for p in parsed)
        if not peek:
            if allowed:
                ops = [
                    self._marshal(part, cost, now, False, op=b"c", token=token)[0] for part in parts
                ]
            else:
                ops = [
                    self._marshal(part, cost, now, False, op=b"a", token=token)[0]
                    for part, p in zip(parts, parsed, strict=True)
                    if p[0]
                ]
            settled = yield ops
            if allowed and any(reply != b"1" for reply in settled):
                return _merge(items, groups, parsed, lost=True)
        return _merge(items, groups, parsed, lost=False)

    def _connect(self) -> Any:
        try:
            client = self._new_client(asynchronous=False)
            client.ping()
            client.script_load(SCRIPT)
        except (TypeError, ValueError) as exc:
            raise StoreURLError(
                f"bad option in the Redis store URL {self.url}: {self._clean(exc)} "
                "(expected redis-py's connection options)"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise StoreError(
                f"cannot use the Redis store at {self.url}: {self._clean(exc)} "
                "(expected a reachable Redis or Valkey server)"
            ) from exc
        return client

    def _new_client(self, *, asynchronous: bool) -> Any:
        url, extra_nodes = self._target
        common: dict[str, Any] = {
            "socket_timeout": self._timeout_s,
            "socket_connect_timeout": self._timeout_s,
        }
        if not self.cluster:
            # One retry on a fresh connection absorbs a pooled connection that a server restart
            # closed; a replayed command can only over-count, never admit more.
            common["retry"] = Retry(NoBackoff(), 1)
            return redis.Redis.from_url(url, **common)
        if asynchronous:
            nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in extra_nodes]
            return redis.asyncio.cluster.RedisCluster.from_url(url, startup_nodes=nodes, **common)
        sync_nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in extra_nodes
        ]
        return redis.cluster.RedisCluster(url=url, startup_nodes=sync_nodes, **common)

    def _clean(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _error(self, action: str, exc: BaseException) -> RedisStoreError:
        return RedisStoreError(f"Redis store {self.url} failed to {action}: {self._clean(exc)}")


_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A child process must not talk on its parent's sockets; dropping the objects closes only
    # the child's copies of the file descriptors.
    for store in _STORES:
        store._idle = []
        store._aconn = None
        store._aconns = {}
        store._aopening = {}


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _pack(*words: bytes) -> bytes:
    """The RESP bytes of one command."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


def _pack_evalsha(call: Call) -> bytes:
    """The RESP bytes of ``EVALSHA sha numkeys keys... args...``."""
    keys, args = call
    words = [str(len(keys)).encode(), *(k.encode() for k in keys)]
    words += [a.encode() if isinstance(a, str) else a for a in args]
    out = [_EVALSHA_HEAD % (len(words) + 2)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


_EVALSHA_HEAD = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode() + b"\r\n"
_LOAD_SCRIPT = _pack(b"SCRIPT", b"LOAD", SCRIPT.encode())
# What the wire drivers raise: socket and TLS errors (ConnectionError and TimeoutError among
# them), a reply hiredis cannot parse, and a reply that is an error.
_WIRE_ERRORS = (OSError, hiredis.HiredisError)
# Errors after which a connection cannot be used again: the reply order may be lost.
_WIRE_BROKEN = (OSError, hiredis.ProtocolError)


# Calls coalesced into one write at most: without a cap, 64 busy tasks settle into two batches
# that the client and the server take turns on; smaller writes let the server start on a batch
# while the client still prepares the next (measured with 64 tasks: ~1.7x the decisions/s of
# an uncapped batch, at about the same CPU per decision, and less than a write per call).
_COALESCE_MAX = 16


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where a standalone server listens and what a new connection sends first, read from the
    redis-py URL by redis-py's own parser, so every option means what it means there."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    # AUTH, SELECT, CLIENT SETNAME (those the URL asks for) and SCRIPT LOAD, pipelined; out of
    # the repr, as it holds the password.
    hello: bytes = field(repr=False)
    hello_replies: int

    @classmethod
    def from_url(cls, url: str) -> _Endpoint:
        """The endpoint of a ``redis://`` or ``rediss://`` URL."""
        options = redis.asyncio.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
        commands = []
        if options.username:
            commands.append(_pack(b"AUTH", options.username.encode(), options.password.encode()))
        elif options.password:
            commands.append(_pack(b"AUTH", options.password.encode()))
        if options.db:
            commands.append(_pack(b"SELECT", str(int(options.db)).encode()))
        if options.client_name:
            commands.append(_pack(b"CLIENT", b"SETNAME", options.client_name.encode()))
        commands.append(_LOAD_SCRIPT)
        context = options.ssl_context.get() if hasattr(options, "ssl_context") else None
        return cls(options.host, options.port, context, b"".join(commands), len(commands))

    def check(self, replies: Sequence[Any]) -> None:
        """Raise the first refusal among the replies to :attr:`hello`."""
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"the server refused the connection set-up: {reply}")


class _SyncConnection:
    """A blocking socket to a standalone server, set up by :attr:`_Endpoint.hello`."""

    __slots__ = ("_reader", "_sock")

    def __init__(self, endpoint: _Endpoint, timeout_s: float) -> None:
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

    def call(self, packed: bytes) -> bytes:
        """Send one packed command, return its reply; raises a refusal as ``ReplyError``."""
        (reply,) = self._exchange(packed, 1)
        if type(reply) is not bytes:
            if not _is_noscript(reply):
                raise reply
            # The server restarted or flushed its scripts: load it again, once.
            _, reply = self._exchange(_LOAD_SCRIPT + packed, 2)
            if type(reply) is not bytes:
                raise reply
        return reply

    def _exchange(self, data: bytes, replies: int) -> list[Any]:
        self._sock.sendall(data)
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

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


class _AsyncConnection(asyncio.Protocol):
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
        # One entry per reply to come: the caller's future, or None for a script load whose
        # reply nobody waits for.
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
                elif not future.done():
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

    def hello(self, endpoint: _Endpoint) -> list[asyncio.Future[Any]]:
        """Send the connection set-up; the futures of its replies."""
        futures = [self.loop.create_future() for _ in range(endpoint.hello_replies)]
        self._send(endpoint.hello, futures)
        return futures

    def call(self, packed: bytes, *, load_first: bool = False) -> asyncio.Future[Any]:
        """Send one packed command; its reply (a refusal as a ``ReplyError`` value). With
        ``load_first`` the script is loaded before, unless a load is already on its way."""
        future = self.loop.create_future()
        if load_first and not self._loading:
            self._loading = True
            self._send(_LOAD_SCRIPT + packed, [None, future])
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
            if future is not None and not future.done():
                future.set_exception(type(reason)(*reason.args))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close the connection; calls still waiting fail."""
        self._break(ConnectionError("the connection was closed by the store"))


async def _cluster_evalsha(client: Any, call: Call) -> bytes:
    keys, args = call
    try:
        reply: bytes = await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(SCRIPT)
        reply = await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
    return reply


class _Batcher:
    """Sends the script calls of concurrent tasks on a cluster as pipelines: a lone call goes
    out at once; while calls are in flight, new ones queue up and leave together in the next
    pipeline."""

    __slots__ = ("_client", "_lone", "_pending", "_running")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: list[tuple[Call, asyncio.Future[bytes]]] = []
        self._running = False
        self._lone = False

    async def submit(self, call: Call) -> bytes:
        if not (self._lone or self._running):
            self._lone = True
            try:
                return await _cluster_evalsha(self._client, call)
            finally:
                self._lone = False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._running = False

    async def _send(self, batch: list[tuple[Call, asyncio.Future[bytes]]]) -> None:
        try:
            replies = await self._pipeline([call for call, _ in batch])
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                await self._client.script_load(SCRIPT)
                again = await self._pipeline([batch[i][0] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            # execute_command: the cluster pipeline refuses its evalsha method, not the command.
            pipe.execute_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


def _parse(reply: bytes, n_limits: int) -> tuple[bool, float, list[Step], float]:
    """A script reply -> (allowed, server now, per-limit steps, largest rejecting wait)."""
    values = _reply_struct(n_limits).unpack(reply)
    results: list[Step] = []
    retry = 0.0
    for i in range(2, 2 + 4 * n_limits, 4):
        ok = values[i] == 1.0
        wait = values[i + 3]
        if not ok and wait > retry:
            retry = wait
        results.append((ok, None, values[i + 1], values[i + 2], wait))
    return values[0] == 1.0, values[1], results, retry


@functools.cache
def _reply_struct(n_limits: int) -> struct.Struct:
    return struct.Struct(f"<{2 + 4 * n_limits}d")


def _decision(reply: bytes, items: Items, n_limits: int) -> Decision:
    allowed, now, results, retry = _parse(reply, n_limits)
    return Decision(allowed, retry, now, items, results)


def _merge(
    items: Items,
    groups: list[list[int]],
    parsed: list[tuple[bool, float, list[Step], float]],
    *,
    lost: bool,
) -> Decision:
    """One decision from the per-slot replies, with results back in the order of ``items``."""
    by_item: dict[int, list[Step]] = {}
    for group, (_, _, steps, _) in zip(groups, parsed, strict=True):
        results = iter(steps)
        for index in group:
            by_item[index] = [next(results) for _ in items[index][0].limits]
    ordered = [step for index in range(len(items)) for step in by_item[index]]
    allowed = not lost and all(p[0] for p in parsed)
    retry = 0.0
    if not allowed:
        retry = max(*(p[3] for p in parsed), _LOST_RETRY_S if lost else 0.0)
    # Groups are numbered by first appearance, so the first one holds the first item.
    return Decision(allowed, retry, parsed[0][1], items, ordered)


def _parse_url(url: str) -> tuple[str, tuple[str, list[tuple[str, int]]], dict[str, str], str]:
    """Split a store URL into its scheme, the redis-py URL (+ extra cluster nodes), our own
    options and the password (to scrub it from error messages)."""
    masked = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreURLError(f"malformed Redis store URL {masked!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    base = _STANDALONE.get(scheme) or _CLUSTER.get(scheme)
    if base is None:
        known = ", ".join(f"{s}://" for s in (*_STANDALONE, *_CLUSTER))
        raise StoreURLError(f"not a Redis store URL: {masked!r} (expected one of {known})")
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in _OWN_OPTIONS}
    passthrough = urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
    userinfo, _, hosts = parts.netloc.rpartition("@")
    host_list = [h for h in hosts.split(",") if h] or ["127.0.0.1:6379"]
    extra: list[tuple[str, int]] = []
    if scheme in _CLUSTER:
        for host in host_list[1:]:
            name, _, port = host.rpartition(":")
            if not port.isdigit():
                raise StoreURLError(f"cluster node {host!r} needs host:port in {masked!r}")
            extra.append((name.strip("[]"), int(port)))
    elif len(host_list) > 1:
        raise StoreURLError(f"several hosts given in {masked!r}: only cluster URLs take a list")
    netloc = f"{userinfo}@{host_list[0]}" if userinfo else host_list[0]
    target = urlunsplit((base, netloc, parts.path, passthrough, ""))
    return scheme, (target, extra), options, parts.password or ""
