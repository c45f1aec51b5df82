"""The Redis store's codec without a server: key names, packed arguments, replies, merging
per-slot replies and the NOSCRIPT recovery."""

from __future__ import annotations

import math
import struct

import hiredis
import pytest

from ratekeeper import Limit, LimitSet
from ratekeeper.stores.redis.codec import (
    SCRIPT_SHA,
    Codec,
    merge,
    parse,
    script_flow,
    written,
)

API = LimitSet("api", [Limit.parse("3/minute"), Limit.parse("5/10s", "gcra")])
MEDIA = LimitSet("media", [Limit.parse("2/minute", "sliding")])


def _reply(allowed: bool, now: float, *steps: tuple[bool, float, float, float]) -> bytes:
    values = [float(allowed), now] + [float(v) for step in steps for v in step]
    return struct.pack(f"<{len(values)}d", *values)


def test_key_names_hold_a_keyed_hash_in_a_hash_tag_never_the_key() -> None:
    plain = Codec("rk", "", use_server_time=True)
    salted = Codec("rk", "pepper", use_server_time=True)
    name = plain.key(API, "sk_live_SECRET")
    assert name.startswith("rk:{") and name.endswith("}:" + API.id)
    assert "SECRET" not in name
    assert salted.key(API, "sk_live_SECRET") != name
    # Every limit set of one caller shares the hash tag, so one slot holds them all.
    assert name.split(":")[1] == plain.key(MEDIA, "sk_live_SECRET").split(":")[1]
    assert not plain.salted and salted.salted


def test_a_long_salt_is_hashed_down_not_refused() -> None:
    codec = Codec("rk", "x" * 200, use_server_time=True)
    assert codec.key(API, "k") != Codec("rk", "x" * 64, use_server_time=True).key(API, "k")


def _words(packed: bytes) -> tuple[list[str], list[bytes]]:
    """An EVALSHA's keys and arguments, read back with hiredis."""
    reader = hiredis.Reader()
    reader.feed(packed)
    command, sha, n_keys, *rest = reader.gets()
    assert (command, sha) == (b"EVALSHA", SCRIPT_SHA.encode()) and reader.gets() is False
    return [k.decode() for k in rest[: int(n_keys)]], rest[int(n_keys) :]


def test_marshal_packs_the_header_plans_and_an_undos_mark_key() -> None:
    codec = Codec("rk", "", use_server_time=True)
    items = ((API, "a"), (MEDIA, "b"))
    packed, n_limits = codec.marshal(items, 2, 123.0, False, undoable=True)
    keys, args = _words(packed)
    assert n_limits == 3 and keys == [codec.key(*item) for item in items]
    op, peek, undoable, n_items, cost, mark_ms, clock = struct.unpack("<cBBHddd", args[0])
    assert (op, peek, undoable, n_items, cost, mark_ms) == (b"d", 0, 1, 2, 2.0, 5000.0)
    assert math.isnan(clock)  # the server's clock
    assert args[1] == b"-"
    assert args[3] == b"<ddd" and args[5] == b"<ddd"  # fixed window 2 + GCRA 1; sliding 3
    ttl_ms, limits = struct.unpack_from("<dB", args[2])
    assert (ttl_ms, limits) == (60_001.0, 2)
    # An undo names the charge's written states and a mark key in the items' slot.
    reply = _reply(True, 1.0, (True, 2, 1, 0), (True, 4, 2, 0), (True, 1, 3, 0)) + b"\r\n"
    assert written(reply, 3) == b"\r\n"
    undo, _ = codec.marshal(items, 2, 123.0, False, undo=("t1", b"\r\n"))
    undo_keys, undo_args = _words(undo)
    assert undo_keys == [*keys, f"{keys[0]}:u:t1"]
    assert undo_args[0][:1] == b"u" and undo_args[1] == b"\r\n"
    caller_clock = Codec("rk", "", use_server_time=False)
    keys, args = _words(caller_clock.marshal(((API, "a"),), 1, 123.0, True)[0])
    assert len(keys) == 1
    assert struct.unpack("<cBBHddd", args[0])[1::5] == (1, 123.0)


def test_parse_reads_steps_and_the_largest_rejecting_wait() -> None:
    reply = _reply(False, 50.0, (True, 2, 110, 0), (False, 0, 60, 7.5), (False, 0, 55, 2.0))
    allowed, now, steps, retry = parse(reply, 3)
    assert (allowed, now, retry) == (False, 50.0, 7.5)
    assert steps[0] == (True, None, 2.0, 110.0, 0.0)
    assert [s[0] for s in steps] == [True, False, False]


def test_merge_puts_results_back_in_the_order_of_the_items() -> None:
    items = ((API, "a"), (MEDIA, "g"), (API, "b"))
    # Slot 1 holds items 0 and 2 (two limits each), slot 2 item 1.
    steps = [(True, 2, 1, 0), (True, 4, 2, 0), (True, 1, 5, 0), (True, 3, 6, 0)]
    first = parse(_reply(True, 9.0, *steps), 4)
    second = parse(_reply(False, 9.5, (False, 0, 3, 4.0)), 1)
    decision = merge(items, [[0, 2], [1]], [first, second])
    assert not decision.allowed and decision.retry_after_s == 4.0 and decision.now == 9.0
    assert [s[2] for s in decision._results] == [2.0, 4.0, 0.0, 1.0, 3.0]


def test_script_flow_reloads_once_after_noscript_and_raises_refusals() -> None:
    flow = script_flow()
    assert next(flow) is False
    with pytest.raises(StopIteration) as done:
        flow.send(b"ok")
    assert done.value.value == b"ok"

    flow = script_flow()
    next(flow)
    assert flow.send(Exception("NOSCRIPT No matching script")) is True
    with pytest.raises(StopIteration) as done:
        flow.send(b"ok")
    assert done.value.value == b"ok"

    flow = script_flow()
    next(flow)
    flow.send(Exception("NOSCRIPT No matching script"))
    with pytest.raises(Exception, match="NOSCRIPT"):
        flow.send(Exception("NOSCRIPT again"))  # a second loss is not chased forever

    flow = script_flow()
    next(flow)
    with pytest.raises(Exception, match="OOM"):
        flow.send(Exception("OOM command not allowed"))
