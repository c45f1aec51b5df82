"""Which master serves each hash slot of a Redis Cluster, and which masters are down.

The map is read from ``CLUSTER SLOTS`` and corrected slot by slot by ``MOVED`` replies. A master
whose connection failed is *down* for a short while: calls for its slots fail at once instead
of each waiting for a connect or a timeout, so the failure stays with that shard's keys while
the others keep deciding. While the map is stale (a master down, a ``MOVED`` seen) it is read
again at most every ``REFRESH_S``, asking the down master's replicas first: the replica the
cluster promotes knows it first, so its keys decide again within about ``REFRESH_S`` of the
promotion.

:meth:`Topology.refresh_flow` is the reading, free of I/O (it yields the node to ask and
receives the reply), so the sync and asyncio drivers share it.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

from ratekeeper.stores.redis.codec import pack
from ratekeeper.stores.redis.wire import Endpoint, Node

__all__ = ["SLOTS", "Topology"]

SLOTS = 16384
# While the map is stale it is read again at most this often.
REFRESH_S = 0.1
# A master whose connection failed is not called for this long.
DOWN_S = 0.25
# Nodes asked in one reading at most: the first good answer ends it.
_ASK_AT_MOST = 6
_CLUSTER_SLOTS = pack(b"CLUSTER", b"SLOTS")

Address = tuple[str, int]
# A CLUSTER SLOTS reply read: (first slot, last slot, master, replicas).
Table = list[tuple[int, int, Address, list[Address]]]


class Topology:
    """The slot map of one cluster and a :class:`Node` per server, shared by every thread and
    event loop of a store."""

    def __init__(
        self,
        endpoint: Endpoint,
        seeds: list[Address],
        timeout_s: float,
        *,
        coalesce: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._coalesce = coalesce
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.nodes: dict[Address, Node] = {}
        self._seeds = [self.node(address) for address in seeds]
        # Replaced whole by a reading, so readers in other threads never see half a map.
        self._owners: list[Node | None] = [None] * SLOTS
        self._replicas: dict[Node, list[Node]] = {}
        self._down: dict[Node, float] = {}
        self.stale = True
        self._read_at = -REFRESH_S
        # Why the last node asked for the map gave none (for the start-up error).
        self.last_error = ""
        _TOPOLOGIES.add(self)

    def node(self, address: Address) -> Node:
        """The node at ``address``, made on first use with the store's connection set-up."""
        node = self.nodes.get(address)
        if node is None:
            with self._lock:
                node = self.nodes.get(address)
                if node is None:
                    host, port = address
                    node = Node(
                        self._endpoint.at(host, port), self._timeout_s, coalesce=self._coalesce
                    )
                    self.nodes[address] = node
        return node

    def owner(self, slot: int) -> Node:
        """The master of ``slot``; raises ``ConnectionError`` at once while it is down."""
        node = self._owners[slot]
        if node is None:
            raise ConnectionError(f"no master known for hash slot {slot}")
        if self._down:
            until = self._down.get(node)
            if until is not None and self._monotonic() < until:
                raise ConnectionError(f"the master of hash slot {slot} ({node}) is down")
        return node

    def shard(self, slot: int) -> str:
        """Which master serves ``slot`` now, as ``host:port`` (``?`` when none is known)."""
        node = self._owners[slot]
        if node is None:
            return "?"
        return f"{node.endpoint.host}:{node.endpoint.port}"

    def moved(self, slot: int, address: Address) -> Node:
        """``MOVED``: the slot is served elsewhere now, and others may have moved too."""
        node = self.node(address)
        self._owners[slot] = node
        self.stale = True
        return node

    def failed(self, node: Node) -> None:
        """A call to ``node`` failed on the wire: down for ``DOWN_S``, the map to be read."""
        self._down[node] = self._monotonic() + DOWN_S
        self.stale = True

    def claim_refresh(self) -> bool:
        """Whether the caller should read the map now (at most one caller per ``REFRESH_S``)."""
        if not self.stale:
            return False
        with self._lock:
            now = self._monotonic()
            if not self.stale or now < self._read_at + REFRESH_S:
                return False
            self._read_at = now
            return True

    def refresh_flow(self) -> Generator[tuple[Node, bytes], Any, bool]:
        """Read the map: yields ``(node, CLUSTER SLOTS)``, receives the reply (an exception
        value when the node could not be asked); returns whether some node answered.

        The first answer that places no slot on a down master is taken; failing that, the first
        answer, and the map stays stale.
        """
        first: tuple[Table, ...] = ()
        for node in self._candidates():
            reply = yield node, _CLUSTER_SLOTS
            table = _read_table(reply, node)
            if table is None:
                self.last_error = f"{node}: {reply!r}"
                continue
            if not first:
                first = (table,)
            if not any(self._is_down(self.node(master)) for _, _, master, _ in table):
                self._apply(table)
                self.stale = False
                return True
        if first:
            self._apply(first[0])
        return bool(first)

    def _is_down(self, node: Node) -> bool:
        until = self._down.get(node)
        return until is not None and self._monotonic() < until

    def _candidates(self) -> list[Node]:
        # The down masters' replicas first (one of them is being promoted), then the other
        # masters, then anyone known; each once, the down ones last.
        down = [node for node in tuple(self._down) if self._is_down(node)]
        order = [r for node in down for r in self._replicas.get(node, [])]
        order += [n for n in dict.fromkeys(self._owners) if n is not None]
        order += [*self._seeds, *self.nodes.values()]
        alive = [n for n in dict.fromkeys(order) if not self._is_down(n)]
        return (alive + down)[:_ASK_AT_MOST]

    def _apply(self, table: Table) -> None:
        owners: list[Node | None] = [None] * SLOTS
        replicas: dict[Node, list[Node]] = {}
        for first, last, master, copies in table:
            node = self.node(master)
            owners[first : last + 1] = [node] * (last + 1 - first)
            replicas[node] = [self.node(address) for address in copies]
        self._owners = owners
        self._replicas = replicas


def _read_table(reply: Any, asked: Node) -> Table | None:
    """A ``CLUSTER SLOTS`` reply as a table; ``None`` for anything else (an error, a node that
    is not in cluster mode)."""
    if not isinstance(reply, list) or not reply:
        return None
    table: Table = []
    try:
        for entry in reply:
            first, last, master, *copies = entry
            table.append(
                (
                    int(first),
                    int(last),
                    _address(master, asked),
                    [_address(c, asked) for c in copies],
                )
            )
    except (TypeError, ValueError):
        return None
    return table


def _address(entry: Any, asked: Node) -> Address:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    # An empty or unknown host means "the host you asked" (Redis 7's cluster-preferred-endpoint).
    if host in ("", "?"):
        host = asked.endpoint.host
    return host, int(entry[1])


_TOPOLOGIES: weakref.WeakSet[Topology] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    # A thread of the parent may have held a lock at the fork: the child's copy would stay held.
    for topology in _TOPOLOGIES:
        topology._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)
