"""Redis Cluster: decisions that span hash slots, and the cluster's connections.

Keys of one caller share a hash tag, so every limit set of one identity lives in one slot and a
decision about it is one script call. A decision that spans slots (an identity's limits plus a
``global`` one) cannot be one script: no script touches two slots atomically, and charging slot
by slot then refunding on a later rejection is not exact (a GCRA refund cannot know whether the
bucket would have drained meanwhile; a first-hit window cannot undo the window it opened). So
the store never refunds. It reserves:

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

:func:`cross_slot_flow` is that protocol free of I/O: it yields the script calls of one phase
and receives their replies, so the sync and asyncio drivers run the same logic.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Generator
from typing import Any

import hiredis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ratekeeper.decision import Decision
from ratekeeper.flows import drive, drive_async
from ratekeeper.stores.redis.codec import (
    SCRIPT,
    SCRIPT_SHA,
    Call,
    Codec,
    Items,
    decision,
    merge,
    parse,
    script_flow,
)

__all__ = ["CLUSTER_ERRORS", "ClusterClient", "cross_slot_flow"]

CLUSTER_ERRORS = (RedisError, RedisClusterException, OSError, hiredis.HiredisError)
# What a lost script looks like to script_flow: redis-py strips the NOSCRIPT word.
_NOSCRIPT = hiredis.ReplyError("NOSCRIPT")


def cross_slot_flow(
    codec: Codec, items: Items, cost: int, now: float, peek: bool
) -> Generator[list[Call], list[bytes], Decision]:
    """The reserve / commit-or-abort protocol of the module docstring for one decision: yields
    the calls of a phase (one per slot, to be made concurrently), receives their replies."""
    slots: dict[int, list[int]] = {}
    for index, (limit_set, key) in enumerate(items):
        slots.setdefault(key_slot(codec.key(limit_set, key).encode()), []).append(index)
    groups = list(slots.values())
    if len(groups) == 1:
        call, n_limits = codec.marshal(items, cost, now, peek, op=b"d")
        (reply,) = yield [call]
        return decision(reply, items, n_limits)
    token = uuid.uuid4().hex
    op = b"d" if peek else b"r"
    parts = [[items[i] for i in group] for group in groups]
    marshalled = [codec.marshal(part, cost, now, peek, op=op, token=token) for part in parts]
    replies = yield [call for call, _ in marshalled]
    parsed = [parse(reply, n) for reply, (_, n) in zip(replies, marshalled, strict=True)]
    allowed = all(p[0] for p in parsed)
    if not peek:
        if allowed:
            ops = [codec.marshal(part, cost, now, False, op=b"c", token=token)[0] for part in parts]
        else:
            ops = [
                codec.marshal(part, cost, now, False, op=b"a", token=token)[0]
                for part, p in zip(parts, parsed, strict=True)
                if p[0]
            ]
        settled = yield ops
        if allowed and any(reply != b"1" for reply in settled):
            return merge(items, groups, parsed, lost=True)
    return merge(items, groups, parsed, lost=False)


class ClusterClient:
    """Script calls on a cluster through redis-py's cluster clients: one for threads, and one
    per event loop (redis.asyncio connections belong to the loop that opened them)."""

    def __init__(
        self, url: str, extra_nodes: tuple[tuple[str, int], ...], timeout_s: float, *, batch: bool
    ) -> None:
        self._url = url
        self._extra_nodes = extra_nodes
        self._timeout_s = timeout_s
        self._batch = batch
        self.client: Any = self._new_client(asynchronous=False)
        self._aclient: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._astarting: asyncio.Future[Any] | None = None
        self._batcher: _Batcher | None = None

    def start(self) -> None:
        """Learn the topology and load the script: raises if the cluster is not usable."""
        self.client.ping()
        self.client.script_load(SCRIPT)

    def run(self, calls: list[Call]) -> list[bytes]:
        """Make the calls (one after another) and return their replies."""
        return [drive(script_flow(), functools.partial(self._evalsha, call)) for call in calls]

    def _evalsha(self, call: Call, load_first: bool) -> Any:
        keys, args = call
        if load_first:
            self.client.script_load(SCRIPT)
        try:
            return self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:
            return _NOSCRIPT

    async def run_async(self, calls: list[Call]) -> list[bytes]:
        """The asyncio twin of :meth:`run`; one phase's calls go out together."""
        client = await self._async_client()
        batcher = self._batcher
        if batcher is not None:
            submit = batcher.submit
        else:

            async def submit(call: Call, load_first: bool) -> Any:
                return await _evalsha_async(client, call, load_first)

        flows = [drive_async(script_flow(), functools.partial(submit, call)) for call in calls]
        return list(await asyncio.gather(*flows))

    def delete(self, keys: list[str]) -> None:
        """Delete the keys, one command each (they may live in different slots)."""
        for key in keys:
            self.client.delete(key)

    async def delete_async(self, keys: list[str]) -> None:
        """The asyncio twin of :meth:`delete`."""
        client = await self._async_client()
        for key in keys:
            await client.delete(key)

    def close(self) -> None:
        """Close the connections used by threads."""
        self.client.close()

    async def close_async(self) -> None:
        """Close the asyncio client."""
        client, self._aclient, self._aloop, self._batcher = self._aclient, None, None, None
        self._astarting = None
        if client is not None:
            await client.aclose()

    async def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            self._aclient = client = self._new_client(asynchronous=True)
            self._aloop = loop
            self._batcher = _Batcher(client) if self._batch else None
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

    def _new_client(self, *, asynchronous: bool) -> Any:
        common: dict[str, Any] = {
            "socket_timeout": self._timeout_s,
            "socket_connect_timeout": self._timeout_s,
        }
        if asynchronous:
            nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in self._extra_nodes]
            return redis.asyncio.cluster.RedisCluster.from_url(
                self._url, startup_nodes=nodes, **common
            )
        sync_nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in self._extra_nodes
        ]
        return redis.cluster.RedisCluster(url=self._url, startup_nodes=sync_nodes, **common)


async def _evalsha_async(client: Any, call: Call, load_first: bool) -> Any:
    keys, args = call
    if load_first:
        await client.script_load(SCRIPT)
    try:
        return await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
    except NoScriptError:
        return _NOSCRIPT


class _Batcher:
    """Sends the script calls of concurrent tasks as pipelines: a lone call goes out at once;
    while calls are in flight, new ones queue up and leave together in the next pipeline.

    Specialised rather than a flow driven by :func:`ratekeeper.flows.drive_async`: it gathers
    the calls of many flows into one pipeline, which no single flow's driver can see.
    """

    __slots__ = ("_client", "_lone", "_pending", "_running")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: list[tuple[Call, bool, asyncio.Future[Any]]] = []
        self._running = False
        self._lone = False

    async def submit(self, call: Call, load_first: bool) -> Any:
        """The reply to one call (a refusal as an exception value)."""
        if not (self._lone or self._running):
            self._lone = True
            try:
                return await _evalsha_async(self._client, call, load_first)
            finally:
                self._lone = False
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((call, load_first, future))
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

    async def _send(self, batch: list[tuple[Call, bool, asyncio.Future[Any]]]) -> None:
        try:
            if any(load_first for _, load_first, _ in batch):
                await self._client.script_load(SCRIPT)
            pipe = self._client.pipeline(transaction=False)
            for (keys, args), _, _ in batch:
                # execute_command: the cluster pipeline refuses its evalsha method.
                pipe.execute_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(_NOSCRIPT if isinstance(reply, NoScriptError) else reply)
