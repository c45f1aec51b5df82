"""The cluster slot map without a server: reading CLUSTER SLOTS, MOVED, a master marked down
(its keys fail at once, the map is read again with its replicas asked first), and the routing
flow's redirections."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from ratekeeper.clock import ManualClock
from ratekeeper.stores.redis.cluster import retry_delay, routed_flow
from ratekeeper.stores.redis.topology import DOWN_S, REFRESH_S, Topology
from ratekeeper.stores.redis.wire import Endpoint

ENDPOINT = Endpoint("127.0.0.1", 7000, None, b"", 0)
A, B, C, RA = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000), ("10.0.0.4", 7000)


def _entry(first: int, last: int, master: tuple[str, int], *replicas: tuple[str, int]) -> list:
    return [first, last, *([h.encode(), p, b"id"] for h, p in (master, *replicas))]


def _table(a_master: tuple[str, int] = A) -> list:
    return [_entry(0, 5460, a_master, RA), _entry(5461, 10922, B), _entry(10923, 16383, C)]


def _read(topology: Topology, answers: dict[tuple[str, int], Any]) -> tuple[bool, list]:
    """Run one reading, answering each node from ``answers``; which nodes were asked."""
    asked = []
    flow = topology.refresh_flow()
    try:
        node, _ = next(flow)
        while True:
            address = (node.endpoint.host, node.endpoint.port)
            asked.append(address)
            node, _ = flow.send(answers.get(address, ConnectionRefusedError()))
    except StopIteration as stop:
        return stop.value, asked


def _topology(clock: ManualClock) -> Topology:
    topology = Topology(ENDPOINT, [A], 1.0, coalesce=True, monotonic=clock)
    assert topology.claim_refresh()
    assert _read(topology, {A: _table()})[0]
    return topology


def test_the_map_is_read_from_cluster_slots_and_corrected_by_moved() -> None:
    topology = _topology(ManualClock())
    assert not topology.stale
    assert topology.shard(0) == "10.0.0.1:7000" and topology.shard(16383) == "10.0.0.3:7000"
    node = topology.moved(5, B)
    assert topology.owner(5) is node and topology.stale
    assert topology.shard(6) == "10.0.0.1:7000"


def test_a_failed_master_fails_at_once_and_its_replica_is_asked_first() -> None:
    clock = ManualClock()
    topology = _topology(clock)
    topology.failed(topology.owner(0))
    with pytest.raises(ConnectionError, match="down"):
        topology.owner(0)
    assert topology.owner(6000).endpoint.port == 7000  # other masters unaffected
    # Not promoted yet: the answer is taken, the map stays stale and is read again later.
    clock.advance(REFRESH_S)
    assert topology.claim_refresh()
    accepted, asked = _read(topology, {RA: _table(), B: _table(), C: _table()})
    assert asked[0] == RA and A not in asked[:3]
    assert accepted and topology.stale
    # Promoted: the replica's answer names it; the keys go there at once.
    clock.advance(REFRESH_S)
    assert topology.claim_refresh()
    accepted, _ = _read(topology, {RA: [_entry(0, 5460, RA), *_table()[1:]]})
    assert accepted and not topology.stale
    assert topology.shard(0) == "10.0.0.4:7000"
    clock.advance(DOWN_S)
    assert topology.owner(0).endpoint.host == "10.0.0.4"


def test_a_reading_nobody_answers_keeps_the_map() -> None:
    clock = ManualClock()
    topology = _topology(clock)
    topology.failed(topology.owner(0))
    clock.advance(REFRESH_S)
    assert topology.claim_refresh()
    refused = hiredis.ReplyError("ERR This instance has cluster support disabled")
    assert _read(topology, {A: refused}) == (False, [RA, B, C, A])
    assert topology.shard(0) == "10.0.0.1:7000"


def test_redirections_are_followed_and_bounded() -> None:
    topology = _topology(ManualClock())
    flow = routed_flow(topology, 42, b"CMD")
    node, packed, load_first, asking = next(flow)
    assert (node.endpoint.host, packed, load_first, asking) == ("10.0.0.1", b"CMD", False, False)
    node, _, _, asking = flow.send(hiredis.ReplyError("ASK 42 10.0.0.2:7000"))
    assert node.endpoint.host == "10.0.0.2" and asking
    node, _, _, asking = flow.send(hiredis.ReplyError("MOVED 42 :7001"))
    # No host in a redirection: the host just asked.
    assert (node.endpoint.host, node.endpoint.port, asking) == ("10.0.0.2", 7001, False)
    assert topology.owner(42) is node
    with pytest.raises(ConnectionError, match="redirected"):
        flow.send(hiredis.ReplyError("MOVED 42 10.0.0.3:7000"))
    flow = routed_flow(topology, 42, b"CMD")
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(b"reply")
    assert done.value.value == b"reply"


def test_only_refusals_that_ran_nothing_are_retried_and_briefly() -> None:
    migrating = hiredis.ReplyError("TRYAGAIN Multiple keys request during rehashing of slot")
    down = hiredis.ReplyError("CLUSTERDOWN Hash slot not served")
    delays = [retry_delay(migrating, attempt) for attempt in range(5)]
    assert delays[-1] is None and 0.1 <= sum(d for d in delays if d) <= 0.5
    assert retry_delay(down, 0) == delays[0]
    # A script error, a lost connection: the script may have run, not tried again.
    assert retry_delay(hiredis.ReplyError("ERR user_script:1: boom"), 0) is None
    assert retry_delay(ConnectionError("TRYAGAIN"), 0) is None
