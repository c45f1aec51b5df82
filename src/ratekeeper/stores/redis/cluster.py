"""Redis Cluster: decisions that span hash slots, and the cluster's connections.

Keys of one caller share a hash tag, so every limit set of one identity lives in one slot and a
decision about it is one script call. A decision that spans slots (an identity's limits plus a
``global`` one) cannot be one script: no script touches two slots atomically. It is decided
optimistically, in one round when every slot admits it:

1. in every slot at once, the script decides and, if that slot's limits allow it, charges them
   (its reply says what it wrote);
2. only if some slot refused (or failed), the slots that charged are *undone* at once, each by
   a script that takes its charge back (lua/decide.lua's ``undo_limit``).

It never over-admits: every verdict is taken on states that hold every charge made so far, so
while an optimistic charge waits for its undo, it only turns others away (on the safe side, like
a unit in flight). An undo gives back exactly the units of a window that still counts them; a
GCRA gives back the part of its emission interval still to come (the part that passed between
the charge and the undo, about a round trip, is kept: others may have been let in meanwhile); a
first-hit window the charge opened opens, if later charges keep it, at the undo. An undo marks
itself done, so a replayed one gives nothing twice. A process that dies between the rounds
leaves its charge in place: an under-admission of that decision's cost, never more.

:func:`cross_slot_flow` is that protocol free of I/O: it yields the script calls of one round
and receives their replies, so the sync and asyncio drivers run the same logic. A slot whose
master cannot be reached fails its call; the others' charges are undone at once, so the failure
stays with that shard's keys.

:class:`ClusterClient` makes the calls on the store's own connections (:mod:`.wire`), routed by
its own slot map (:mod:`.topology`): each call goes to its slot's master, follows ``MOVED`` and
``ASK``, and the calls of one phase overlap (asyncio: pipelined on each master's connection;
threads: every call written before any reply is read).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Generator
from typing import Any

from hiredis import ReplyError
from redis.crc import key_slot

from ratekeeper.decision import Decision
from ratekeeper.flows import drive, drive_async
from ratekeeper.limit import LimitSet
from ratekeeper.stores.redis.codec import (
    Codec,
    Items,
    Parsed,
    decision,
    merge,
    pack,
    parse,
    script_flow,
    written,
)
from ratekeeper.stores.redis.topology import Address, Topology
from ratekeeper.stores.redis.wire import WIRE_ERRORS, Endpoint, Node

__all__ = ["ClusterClient", "cross_slot_flow", "retry_delay"]

# A packed script call and the hash slot of its keys.
SlotCall = tuple[int, bytes]
# A command on its way: the node, its bytes, whether to load the script and to send ASKING first.
Op = tuple[Node, bytes, bool, bool]
# Redirections followed for one command at most (a slot moves once per failover or migration).
_MAX_REDIRECTS = 3
# Waits before trying a decision again after TRYAGAIN (a slot in migration whose keys are
# moving) or CLUSTERDOWN (a slot without a master, until a replica is promoted): short, as the
# caller waits; when they are spent the error reaches the caller, and its fail mode applies.
_RETRY_DELAYS_S = (0.01, 0.02, 0.04, 0.08)


def cross_slot_flow(
    codec: Codec,
    items: Items,
    cost: int,
    now: float,
    peek: bool,
    placed: tuple[list[str], list[int]] | None = None,
) -> Generator[list[SlotCall], list[Any], Decision]:
    """The decide / undo-if-refused protocol of the module docstring for one decision: yields
    the calls of a round (one per slot, to be made concurrently, each with its slot), receives
    their replies (bytes, or the exception the call failed with). ``placed``:
    ``codec.placed(items)``, when the caller has it."""
    names, item_slots = codec.placed(items) if placed is None else placed
    by_slot: dict[int, list[int]] = {}
    for index, slot in enumerate(item_slots):
        by_slot.setdefault(slot, []).append(index)
    if len(by_slot) == 1:
        call, n_limits = codec.marshal(items, cost, now, peek, keys=names)
        (reply,) = yield [(item_slots[0], call)]
        return decision(_ok(reply), items, n_limits)
    calls: list[SlotCall] = []
    parts: list[tuple[list[tuple[LimitSet, str]], list[str], int]] = []
    for slot, group in by_slot.items():
        part = [items[i] for i in group]
        keys = [names[i] for i in group]
        packed, n_limits = codec.marshal(part, cost, now, peek, keys=keys, undoable=not peek)
        calls.append((slot, packed))
        parts.append((part, keys, n_limits))
    replies = yield calls
    parsed: list[Parsed | None] = []
    failed: list[Exception] = []
    allowed = True
    for reply, (_, _, n_limits) in zip(replies, parts, strict=True):
        if isinstance(reply, Exception):
            failed.append(reply)
            parsed.append(None)
        else:
            step = parse(reply, n_limits)
            allowed = allowed and step[0]
            parsed.append(step)
    if not peek and (failed or not allowed):
        # Refused (or failed) somewhere: take back what the other slots charged. An undo that
        # fails leaves its charge: an under-admission, nothing to raise.
        token = uuid.uuid4().hex
        undos: list[SlotCall] = []
        for (slot, _), (part, keys, n), reply, p in zip(calls, parts, replies, parsed, strict=True):
            if p is not None and p[0]:
                undo = (token, written(reply, n))
                undos.append((slot, codec.marshal(part, cost, now, False, keys=keys, undo=undo)[0]))
        if undos:
            yield undos
    if failed:
        raise failed[0]
    return merge(items, list(by_slot.values()), parsed)  # type: ignore[arg-type]


def retry_delay(error: BaseException, attempt: int) -> float | None:
    """How long to wait before trying again a decision that failed with ``error`` on its
    ``attempt``-th try (from 0); ``None``: do not. Only refusals that say the script did not
    run are retried (a decision's other slots were undone before it failed), so a retry never
    charges twice."""
    if attempt >= len(_RETRY_DELAYS_S) or not isinstance(error, ReplyError):
        return None
    if not str(error).startswith(("TRYAGAIN", "CLUSTERDOWN")):
        return None
    return _RETRY_DELAYS_S[attempt]


def _ok(reply: Any) -> bytes:
    if isinstance(reply, Exception):
        raise reply
    result: bytes = reply
    return result


def script_call_flow(topology: Topology, slot: int, packed: bytes) -> Generator[Op, Any, bytes]:
    """One packed script call on ``slot``'s master, loading the script if that master lost
    it."""
    script = script_flow()
    load_first = next(script)
    while True:
        reply = yield from routed_flow(topology, slot, packed, load_first)
        try:
            load_first = script.send(reply)
        except StopIteration as stop:
            result: bytes = stop.value
            return result


def routed_flow(
    topology: Topology, slot: int, packed: bytes, load_first: bool = False
) -> Generator[Op, Any, Any]:
    """One command on ``slot``'s master, following ``MOVED`` and ``ASK``; returns its reply
    (a refusal as a value)."""
    node = topology.owner(slot)
    asking = False
    for _ in range(_MAX_REDIRECTS):
        reply = yield node, packed, load_first, asking
        if not isinstance(reply, Exception):
            return reply
        kind, _, rest = str(reply).partition(" ")
        if kind == "MOVED":
            node = topology.moved(slot, _redirect(rest, node))
            asking = False
        elif kind == "ASK":
            node = topology.node(_redirect(rest, node))
            asking = True
        else:
            if kind == "CLUSTERDOWN":
                topology.stale = True
            return reply
    raise ConnectionError(f"hash slot {slot} redirected more than {_MAX_REDIRECTS} times")


def _redirect(text: str, asked: Node) -> Address:
    """The address of ``MOVED <slot> <host>:<port>`` (or ``ASK``); no host: the one asked."""
    _, _, address = text.partition(" ")
    host, _, port = address.rpartition(":")
    return host or asked.endpoint.host, int(port)


class ClusterClient:
    """Script calls on a Redis Cluster, on the store's own connections (one :class:`Node` per
    server), from threads and from any number of event loops."""

    def __init__(
        self, endpoint: Endpoint, seeds: list[Address], timeout_s: float, *, coalesce: bool
    ) -> None:
        self.topology = Topology(endpoint, seeds, timeout_s, coalesce=coalesce)
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Read the slot map: raises ``ConnectionError`` when no node answers."""
        self.topology.claim_refresh()
        if not drive(self.topology.refresh_flow(), self._ask):
            raise ConnectionError(
                f"no node answered CLUSTER SLOTS (last: {self.topology.last_error}); "
                "is it a cluster?"
            )

    # -- threads ------------------------------------------------------------------------------

    def script(self, slot: int, packed: bytes) -> bytes:
        """Run one packed script call on ``slot``'s master; its reply, refusals raised. The
        single-slot decision: :meth:`run` for one call, without its lists."""
        topology = self.topology
        if topology.stale and topology.claim_refresh():
            drive(topology.refresh_flow(), self._ask)
        node = topology.owner(slot)
        try:
            reply = node.call(packed)
        except WIRE_ERRORS:
            topology.failed(node)
            raise
        if isinstance(reply, ReplyError):
            (reply,) = self._lockstep([script_call_flow(topology, slot, packed)], [reply])
        if isinstance(reply, Exception):
            raise reply
        result: bytes = reply
        return result

    def run(self, calls: list[SlotCall]) -> list[Any]:
        """Make the calls, each on its slot's master, all written before any reply is read;
        their replies, or the exception each failed with. The flows' machinery
        (:meth:`_lockstep`) takes on only the calls that came back refused (NOSCRIPT, MOVED,
        ASK, ...: the script did not run)."""
        topology = self.topology
        if topology.stale and topology.claim_refresh():
            drive(topology.refresh_flow(), self._ask)
        results: list[Any] = [None] * len(calls)
        # Calls to one master leave in one write on one connection.
        by_node: dict[Node, list[int]] = {}
        for index, (slot, _) in enumerate(calls):
            try:
                by_node.setdefault(topology.owner(slot), []).append(index)
            except ConnectionError as exc:
                results[index] = exc
        started = [
            (node, indexes, node.begin_many(b"".join(calls[i][1] for i in indexes), len(indexes)))
            for node, indexes in by_node.items()
        ]
        for node, indexes, exchange in started:
            try:
                replies = node.finish_many(exchange)
            except WIRE_ERRORS as exc:
                topology.failed(node)
                replies = [exc] * len(indexes)
            for index, reply in zip(indexes, replies, strict=True):
                results[index] = reply
        refused = [i for i, reply in enumerate(results) if isinstance(reply, ReplyError)]
        if refused:
            flows = [script_call_flow(topology, *calls[i]) for i in refused]
            replies = self._lockstep(flows, [results[i] for i in refused])
            for index, reply in zip(refused, replies, strict=True):
                results[index] = reply
        return results

    def delete(self, keys: list[str]) -> None:
        """Delete the keys, each on its slot's master."""
        for key in keys:
            slot = key_slot(key.encode())
            reply = drive(routed_flow(self.topology, slot, pack(b"DEL", key.encode())), self._call)
            if isinstance(reply, Exception):
                raise reply

    def close(self) -> None:
        """Close the connections used by threads."""
        for node in list(self.topology.nodes.values()):
            node.close()

    def _call(self, op: Op) -> Any:
        node, packed, load_first, asking = op
        try:
            return node.call(packed, load_first, asking)
        except WIRE_ERRORS:
            self.topology.failed(node)
            raise

    def _ask(self, op: tuple[Node, bytes]) -> Any:
        node, packed = op
        try:
            return node.call(packed)
        except WIRE_ERRORS as exc:
            self.topology.failed(node)
            return exc

    def _lockstep(self, flows: list[Generator[Op, Any, bytes]], first: list[Any]) -> list[Any]:
        """Drive several flows together, each from the reply ``first`` holds for its first
        command: each round writes every flow's command, then reads the replies, so the masters
        work at the same time. Specialised rather than :func:`ratekeeper.flows.drive`, which
        runs one flow: one after another, each master would wait for the previous one's
        reply."""
        results: list[Any] = [None] * len(flows)
        ops: dict[int, Op] = {}
        for index, flow in enumerate(flows):
            next(flow)
            _advance(index, flow, first[index], ops, results)
        while ops:
            started = [(i, op, op[0].begin(*op[1:])) for i, op in ops.items()]
            for index, (node, *_), exchange in started:
                try:
                    reply = node.finish(exchange)
                except WIRE_ERRORS as exc:
                    self.topology.failed(node)
                    flows[index].close()
                    results[index] = exc
                    del ops[index]
                    continue
                _advance(index, flows[index], reply, ops, results)
        return results

    # -- asyncio ------------------------------------------------------------------------------

    async def script_async(self, slot: int, packed: bytes) -> bytes:
        """The asyncio twin of :meth:`script`."""
        topology = self.topology
        if topology.stale and topology.claim_refresh():
            self._refresh_in_background()
        node = topology.owner(slot)
        try:
            reply = await node.call_async(packed)
        except WIRE_ERRORS:
            topology.failed(node)
            raise
        if isinstance(reply, ReplyError):
            flows = [script_call_flow(topology, slot, packed)]
            (reply,) = await self._lockstep_async(flows, [reply])
        if isinstance(reply, Exception):
            raise reply
        result: bytes = reply
        return result

    async def run_async(self, calls: list[SlotCall]) -> list[Any]:
        """The asyncio twin of :meth:`run`: the calls go out together, pipelined per master."""
        topology = self.topology
        if topology.stale and topology.claim_refresh():
            self._refresh_in_background()
        started: list[tuple[Node | None, Any]] = []
        for slot, packed in calls:
            try:
                node = topology.owner(slot)
            except ConnectionError as exc:
                started.append((None, exc))
                continue
            try:
                started.append((node, await node.begin_async(packed)))
            except WIRE_ERRORS as exc:
                topology.failed(node)
                started.append((None, exc))
        results: list[Any] = []
        for owner, future in started:
            if owner is None:
                results.append(future)
                continue
            try:
                results.append(await future)
            except WIRE_ERRORS as exc:
                topology.failed(owner)
                results.append(exc)
        refused = [i for i, reply in enumerate(results) if isinstance(reply, ReplyError)]
        if refused:
            flows = [script_call_flow(topology, *calls[i]) for i in refused]
            replies = await self._lockstep_async(flows, [results[i] for i in refused])
            for index, reply in zip(refused, replies, strict=True):
                results[index] = reply
        return results

    def _refresh_in_background(self) -> None:
        # Callers meanwhile use the map they have.
        task = asyncio.get_running_loop().create_task(
            drive_async(self.topology.refresh_flow(), self._ask_async)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def delete_async(self, keys: list[str]) -> None:
        """The asyncio twin of :meth:`delete`."""
        for key in keys:
            flow = routed_flow(self.topology, key_slot(key.encode()), pack(b"DEL", key.encode()))
            reply = await drive_async(flow, self._call_async)
            if isinstance(reply, Exception):
                raise reply

    async def close_async(self) -> None:
        """Close the running loop's connections."""
        for node in list(self.topology.nodes.values()):
            await node.close_async()

    async def _lockstep_async(
        self, flows: list[Generator[Op, Any, bytes]], first: list[Any]
    ) -> list[Any]:
        """The asyncio twin of :meth:`_lockstep`: every flow's command is written before any
        reply is awaited (no task per call: they cost more than the call)."""
        results: list[Any] = [None] * len(flows)
        ops: dict[int, Op] = {}
        for index, flow in enumerate(flows):
            next(flow)
            _advance(index, flow, first[index], ops, results)
        while ops:
            started: list[tuple[int, Node, Any]] = []
            for index, (node, packed, load_first, asking) in ops.items():
                try:
                    future: Any = await node.begin_async(packed, load_first, asking)
                except WIRE_ERRORS as exc:
                    future = exc
                started.append((index, node, future))
            for index, node, future in started:
                try:
                    if isinstance(future, BaseException):
                        raise future
                    reply = await future
                except WIRE_ERRORS as exc:
                    self.topology.failed(node)
                    flows[index].close()
                    results[index] = exc
                    del ops[index]
                    continue
                _advance(index, flows[index], reply, ops, results)
        return results

    async def _call_async(self, op: Op) -> Any:
        node, packed, load_first, asking = op
        try:
            return await node.call_async(packed, load_first, asking)
        except WIRE_ERRORS:
            self.topology.failed(node)
            raise

    async def _ask_async(self, op: tuple[Node, bytes]) -> Any:
        node, packed = op
        try:
            return await node.call_async(packed)
        except WIRE_ERRORS as exc:
            self.topology.failed(node)
            return exc


def _advance(
    index: int,
    flow: Generator[Op, Any, bytes],
    reply: Any,
    ops: dict[int, Op],
    results: list[Any],
) -> None:
    """Step one flow of :meth:`ClusterClient._lockstep` with ``reply``."""
    try:
        ops[index] = flow.send(reply)
    except StopIteration as stop:
        results[index] = stop.value
        ops.pop(index, None)
    except Exception as exc:
        results[index] = exc
        ops.pop(index, None)
