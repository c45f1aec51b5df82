"""The Redis store on a real 3-node Redis Cluster: one slot per identity, and decisions that span
slots (a key's limits plus a global one) never over-admit."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from ratekeeper import Limit, LimitSet
from ratekeeper.core import EntryState, decide
from ratekeeper.stores.redis import RedisStore, RedisStoreError
from ratekeeper.stores.redis.cluster import cross_slot_flow
from ratekeeper.stores.redis.codec import written
from redis_servers import RedisServer, check_exactness, redis_cluster


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as servers:
        yield servers


@pytest.fixture(scope="module")
def url(nodes: list[RedisServer]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)


@pytest.fixture(scope="module")
def store(url: str) -> Iterator[RedisStore]:
    s = RedisStore(url, use_server_time=False, prefix="cl")
    yield s
    s.close()


API = LimitSet("api", [Limit.parse("3/minute"), Limit.parse("5/10s", "gcra")])
MEDIA = LimitSet("media", [Limit.parse("2/minute", "sliding")])
GLOBAL = LimitSet("global", [Limit.parse("4/minute", "first_hit")])
_runs = itertools.count()


def test_one_identity_lives_in_one_slot_and_the_global_key_elsewhere(store: RedisStore) -> None:
    slots = {key_slot(store._codec.key(s, "alice").encode()) for s in (API, MEDIA, GLOBAL)}
    assert len(slots) == 1
    assert key_slot(store._codec.key(GLOBAL, "*").encode()) not in slots


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=3),
            st.integers(min_value=0, max_value=3),
            st.sampled_from([0.0, 0.5, 3.0, 11.0, 61.0]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_cross_slot_decisions_equal_the_python_core(store: RedisStore, seq: list) -> None:
    run = next(_runs)
    items_by_pick = [
        (API, f"a{run}"),
        (MEDIA, f"a{run}"),
        (GLOBAL, f"g{run}"),
        (API, f"b{run}"),
    ]
    entries: dict[tuple[str, str], EntryState] = {}
    now = 1_700_000_000.0
    for picks, cost, gap in seq:
        now += gap
        items = tuple(items_by_pick[i] for i in picks)
        expected_entries, expected = decide(
            items, [entries.get((s.id, k)) for s, k in items], now, cost
        )
        got = store.decide(items, cost, now, peek=cost == 0)
        assert got.allowed == expected.allowed
        assert got.retry_after_s == expected.retry_after_s
        assert [(s[0], s[2], s[3], s[4]) for s in got._results] == [
            (s[0], s[2], s[3], s[4]) for s in expected._results
        ]
        if expected_entries is not None and cost:
            for (s, k), entry in zip(items, expected_entries, strict=True):
                entries[(s.id, k)] = entry


def test_a_rejected_cross_slot_decision_charges_nothing_anywhere(store: RedisStore) -> None:
    items = ((API, "carol"), (GLOBAL, "everyone-carol"))
    for _ in range(4):
        assert store.decide(((GLOBAL, "everyone-carol"),), 1, 1000.0).allowed
    decision = store.decide(items, 1, 1000.0)
    assert not decision.allowed
    # The per-key limits passed in their slot and were charged, then the charge was undone.
    peek = store.decide(((API, "carol"),), 0, 1000.0, peek=True)
    assert [s.remaining for s in peek.states] == [3, 5]
    assert [store.decide(((API, "carol"),), 1, 1000.0).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def _round(store: RedisStore, calls: list) -> list:
    return [store._cluster.run([call])[0] for call in calls]  # type: ignore[union-attr]


def test_an_optimistic_charge_holds_its_units_until_it_is_undone_once(store: RedisStore) -> None:
    items = ((GLOBAL, "dave"), (API, "shared-dave"))
    for _ in range(3):
        assert store.decide(((API, "shared-dave"),), 1, 2000.0).allowed
    flow = cross_slot_flow(store._codec, items, 3, 2000.0, False)
    replies = _round(store, next(flow))
    # The global slot charged 3 of its 4 units, the per-key one refused: while the undo is on
    # its way, 1 unit is left for others.
    assert store.decide(((GLOBAL, "dave"),), 2, 2000.0).allowed is False
    assert store.decide(((GLOBAL, "dave"),), 1, 2000.0).allowed is True
    undos = flow.send(replies)
    assert len(undos) == 1
    undone = _round(store, undos)
    with pytest.raises(StopIteration) as stop:
        flow.send(undone)
    assert stop.value.value.allowed is False
    assert store.decide(((GLOBAL, "dave"),), 0, 2000.0, peek=True).remaining == 3
    # A replayed undo (a reply lost, the call made again) gives nothing back twice.
    assert _round(store, undos) == [b"0"]
    assert store.decide(((GLOBAL, "dave"),), 0, 2000.0, peek=True).remaining == 3


@pytest.mark.parametrize(
    ("limit", "later", "remaining"),
    [
        # A GCRA gives back what is left of its emission interval; alone, that is all of it.
        ("2/4s gcra", 1.0, 2),
        ("2/4s gcra", 0.0, 2),
        # A window gives back its units; a first-hit window it opened with nothing else in it
        # never opened.
        ("2/minute fixed", 1.0, 2),
        ("2/minute first_hit", 1.0, 2),
        ("2/minute sliding", 1.0, 2),
    ],
)
def test_each_algorithm_undoes_exactly_or_on_the_safe_side(
    store: RedisStore, limit: str, later: float, remaining: int
) -> None:
    name = f"undo-{limit}-{later}".replace(" ", "-").replace("/", "per")
    own = LimitSet(name, [Limit.parse(*limit.split(" "))])
    refusing = LimitSet(f"{name}-full", [Limit.parse("1/hour")])
    assert store.decide(((refusing, "x"),), 1, 3000.0).allowed
    items = ((own, "y"), (refusing, "x"))
    flow = cross_slot_flow(store._codec, items, 2, 3000.0, False)
    replies = _round(store, next(flow))
    ((slot, _),) = flow.send(replies)
    # The undo arrives `later` seconds after the charge.
    (own_reply, _) = replies
    undo = ("t", written(own_reply, 1))
    packed, _ = store._codec.marshal(items[:1], 2, 3000.0 + later, False, undo=undo)
    _round(store, [(slot, packed)])
    peek = store.decide(((own, "y"),), 0, 3000.0 + later, peek=True)
    assert peek.remaining == remaining


def test_a_gcra_undo_keeps_the_part_of_its_interval_others_may_have_used(
    store: RedisStore,
) -> None:
    own = LimitSet("undo-gcra-shared", [Limit.parse("4/8s", "gcra")])  # one unit every 2 s
    refusing = LimitSet("undo-gcra-full", [Limit.parse("1/hour")])
    assert store.decide(((refusing, "x"),), 1, 3000.0).allowed
    items = ((own, "y"), (refusing, "x"))
    flow = cross_slot_flow(store._codec, items, 2, 3000.0, False)
    replies = _round(store, next(flow))  # own: busy until 3004; refusing: refused
    # Half a second later another caller is admitted on top of the held units (until 3006);
    # without the charge it would have been busy until 3002.5 only.
    assert store.decide(((own, "y"),), 1, 3000.5).allowed
    ((slot, _),) = flow.send(replies)
    undo = ("t", written(replies[0], 1))
    packed, _ = store._codec.marshal(items[:1], 2, 3001.0, False, undo=undo)
    _round(store, [(slot, packed)])
    # The undo, at 3001, gives back the 3 s of the charge's interval still ahead: busy until
    # 3003, after 3002.5 (the second that passed may have served the other caller). Giving
    # back the whole interval (until 3002) would admit more than the limit allows.
    peek = store.decide(((own, "y"),), 0, 3001.0, peek=True)
    assert peek.states[0].reset_at == 3003.0


def test_async_cross_slot_decisions_never_over_admit(url: str) -> None:
    store = RedisStore(url, prefix="acl")

    async def run() -> list[bool]:
        items = [((API, f"u{i % 3}"), (GLOBAL, "all")) for i in range(9)]
        # Concurrent optimistic charges may turn each other away (on the safe side) ...
        burst = await asyncio.gather(*(store.decide_async(it, 1, 0.0) for it in items))
        # ... and the units they did not use stay available to later callers.
        later = [await store.decide_async(it, 1, 0.0) for it in items]
        await store.close_async()
        return [d.allowed for d in burst + later]

    assert sum(asyncio.run(run())) == 4
    store.close()


def test_scripts_are_reloaded_on_every_node_after_a_flush(
    store: RedisStore, nodes: list[RedisServer]
) -> None:
    for node in nodes:
        client = node.client()
        client.script_flush()
        client.close()
    assert store.decide(((API, "frank"), (GLOBAL, "all-frank")), 1, 4000.0).allowed


def test_admitted_totals_equal_the_allowed_totals_on_the_cluster(url: str) -> None:
    totals = check_exactness(url, "exact")
    assert totals["windowed_attempts"] > 2 * totals["windowed_admitted"] > 0


def test_a_slot_in_migration_is_followed_by_ask_then_moved_and_tryagain_retried(
    store: RedisStore, nodes: list[RedisServer]
) -> None:
    one = ((API, "migrating-henry"),)
    both = ((API, "migrating-henry"), (MEDIA, "migrating-henry"))
    slot = key_slot(store._codec.key(API, "migrating-henry").encode())
    owner_port = store._cluster.topology.owner(slot).endpoint.port  # type: ignore[union-attr]
    source = next(n for n in nodes if n.port == owner_port)
    target = next(n for n in nodes if n.port != owner_port)
    src, dst = source.client(), target.client()
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    try:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        # The keys are not on the source: it answers ASK, and the target takes a script on one
        # key it does not have yet ...
        assert store.decide(one, 1, 5000.0).allowed
        # ... but refuses one on several (TRYAGAIN) until the migration ends: retried for a
        # short while, then a StoreError.
        started = time.monotonic()
        with pytest.raises(RedisStoreError, match="TRYAGAIN"):
            store.decide(both, 1, 5000.0)
        assert time.monotonic() - started >= 0.1
        outcome: list[bool] = []
        waiting = threading.Thread(
            target=lambda: outcome.append(store.decide(both, 1, 5000.0).allowed)
        )
        waiting.start()
        time.sleep(0.02)
        # The slot moves for good while that decision retries: it follows MOVED and succeeds.
        for client in (src, dst):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        waiting.join(5)
        assert outcome == [True]
        got = [store.decide(one, 1, 5000.0).allowed for _ in range(2)]
        assert got == [True, False]  # 3 per minute: the first two decisions took 2
        assert store._cluster.topology.owner(slot).endpoint.port == target.port  # type: ignore[union-attr]
    finally:
        src.close()
        dst.close()


def _child(store: RedisStore, queue: multiprocessing.Queue[object]) -> None:
    items = ((GLOBAL, "forked"), (API, "forked-ivy"))
    sync_ok = store.decide(items, 1, 0.0).allowed
    async_ok = asyncio.run(store.decide_async(items, 1, 0.0)).allowed
    queue.put((sync_ok, async_ok))


def test_a_forked_child_opens_its_own_cluster_connections(url: str) -> None:
    store = RedisStore(url, prefix="fork")
    items = ((GLOBAL, "forked"), (API, "forked-ivy"))
    assert store.decide(items, 1, 0.0).allowed
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_child, args=(store, queue))
    child.start()
    assert queue.get(timeout=10) == (True, True)
    child.join(10)
    assert child.exitcode == 0
    # The caller's 3 per minute are spent, by the parent and the child together.
    assert not store.decide(items, 1, 0.0).allowed
    store.close()
