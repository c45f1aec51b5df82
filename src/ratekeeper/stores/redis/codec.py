"""The Redis store's codec, free of I/O: key names, the script's arguments and its replies.

A decision is one ``EVALSHA`` of ``lua/decide.lua``; this module packs its keys and arguments
(little-endian doubles, see the top of the script), unpacks its replies into decisions, and says
what to do when the server lost the script. Everything here is a pure function of its inputs, so
it is tested without a server (tests/test_store_redis_codec.py).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import math
import struct
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TypeAlias

from ratekeeper.algorithms import Algorithm, Step
from ratekeeper.decision import Decision
from ratekeeper.limit import LimitSet

__all__ = [
    "LOAD_SCRIPT",
    "SCRIPT",
    "SCRIPT_SHA",
    "Codec",
    "Items",
    "Parsed",
    "decision",
    "is_noscript",
    "merge",
    "pack",
    "parse",
    "script_flow",
    "written",
]

Items: TypeAlias = Sequence[tuple[LimitSet, str]]
# A reply read: allowed, the server's now, per-limit steps, the largest rejecting wait.
Parsed: TypeAlias = tuple[bool, float, list[Step], float]

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
# How long an undo's mark says it was done (a replayed undo then gives back nothing twice).
MARK_MS = 5000
# Keys whose hashed names a codec keeps (about 150 bytes each).
_PLACES = 4096


class Codec:
    """Key names and script arguments for one store's prefix, salt and mode.

    ``hash_key`` keys blake2b (a MAC), so without the salt the key names do not tell which
    caller they count. ``use_server_time=False`` sends the caller's ``now`` instead of asking
    for the server's.
    """

    __slots__ = ("_hash_key", "_place", "_plans", "prefix", "use_server_time")

    def __init__(self, prefix: str, key_salt: str, *, use_server_time: bool):
        salt = key_salt.encode()
        # blake2b's own keyed mode takes at most 64 bytes of key: longer salts are hashed down.
        self._hash_key = salt if len(salt) <= 64 else hashlib.blake2b(salt).digest()
        self.prefix = prefix
        self.use_server_time = use_server_time
        self._plans: dict[str, tuple[bytes, bytes, int, bytes]] = {}
        # The keys seen most recently (a global limit's, busy callers') are hashed once.
        self._place = functools.lru_cache(maxsize=_PLACES)(self._hash_place)

    @property
    def salted(self) -> bool:
        """Whether key names are keyed by a secret salt."""
        return bool(self._hash_key)

    def key(self, limit_set: LimitSet, key: str) -> str:
        """``<prefix>:{<hash of key>}:<limit set>``: the hash is the cluster hash tag, so every
        limit set of one caller lives in one slot."""
        return self._place(key)[0] + limit_set.id

    def placed(self, items: Items) -> tuple[list[str], list[int]]:
        """The items' key names and their cluster hash slots."""
        place = self._place
        names: list[str] = []
        slots: list[int] = []
        for limit_set, key in items:
            stem, slot = place(key)
            names.append(stem + limit_set.id)
            slots.append(slot)
        return names, slots

    def _hash_place(self, key: str) -> tuple[str, int]:
        # A key's name up to the limit set, and its slot: the CRC16 of its hash tag (the
        # digest), mod 16384.
        digest = hashlib.blake2b(key.encode(), digest_size=12, key=self._hash_key).hexdigest()
        return f"{self.prefix}:{{{digest}}}:", binascii.crc_hqx(digest.encode(), 0) & 16383

    def plan(self, limit_set: LimitSet) -> tuple[bytes, bytes, int]:
        """A limit set's packed plan, its state's struct format and its number of limits."""
        plan, state_format, n_limits, _ = self._plan(limit_set)
        return plan, state_format, n_limits

    def _plan(self, limit_set: LimitSet) -> tuple[bytes, bytes, int, bytes]:
        # plan() and the two as RESP words, as every call sends them.
        found = self._plans.get(limit_set.spec_id)
        if found is None:
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
            plan = b"".join(packed)
            fmt = state_format.encode()
            words = _WORD % (len(plan), plan) + _WORD % (len(fmt), fmt)
            found = (plan, state_format.encode(), len(limit_set.limits), words)
            self._plans[limit_set.spec_id] = found
        return found

    def marshal(
        self,
        items: Items,
        cost: int,
        now: float,
        peek: bool,
        *,
        keys: list[str] | None = None,
        undoable: bool = False,
        undo: tuple[str, bytes] | None = None,
    ) -> tuple[bytes, int]:
        """The script call deciding on ``items`` (charging unless ``peek``), as the RESP bytes
        of ``EVALSHA sha numkeys keys... args...``, and how many limit results its reply holds.
        ``keys``: the items' key names, when the caller has them already. ``undoable``: the
        reply also carries the states written, for an undo. ``undo``: (a token, that reply's
        tail): the call undoes that charge instead."""
        if keys is None:
            keys = [self.key(limit_set, key) for limit_set, key in items]
        if undo is not None:
            # The mark that makes a replayed undo give back nothing twice, in the items' slot.
            keys = [*keys, f"{keys[0]}:u:{undo[0]}"]
        clock = math.nan if self.use_server_time else now
        header = _HEADER.pack(
            b"d" if undo is None else b"u", peek, undoable, len(items), cost, MARK_MS, clock
        )
        n_keys = b"%d" % len(keys)
        out = [_EVALSHA_HEAD % (5 + len(keys) + 2 * len(items)), _WORD % (len(n_keys), n_keys)]
        for key in keys:
            word = key.encode()
            out.append(_WORD % (len(word), word))
        out.append(_HEADER_WORD + header)
        out.append(
            b"\r\n$1\r\n-\r\n" if undo is None else b"\r\n" + _WORD % (len(undo[1]), undo[1])
        )
        n_limits = 0
        plans = self._plans
        for limit_set, _ in items:
            found = plans.get(limit_set.spec_id) or self._plan(limit_set)
            out.append(found[3])
            n_limits += found[2]
        return b"".join(out), n_limits


# One RESP bulk string; the header's start (its length is fixed).
_WORD = b"$%d\r\n%b\r\n"
_HEADER_WORD = b"$%d\r\n" % _HEADER.size


def parse(reply: bytes, n_limits: int) -> Parsed:
    """A decide reply -> (allowed, server now, per-limit steps, largest wait); an undoable
    reply's tail (:func:`written`) is not read."""
    values = _reply_struct(n_limits).unpack_from(reply)
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


def written(reply: bytes, n_limits: int) -> bytes:
    """The states an undoable decide reply says were written (what an undo call needs)."""
    return reply[_reply_struct(n_limits).size :]


def decision(reply: bytes, items: Items, n_limits: int) -> Decision:
    """The decision a single-slot reply carries."""
    allowed, now, results, retry = parse(reply, n_limits)
    return Decision(allowed, retry, now, items, results)


def merge(items: Items, groups: list[list[int]], parsed: list[Parsed]) -> Decision:
    """One decision from per-slot replies (``groups[i]``: the indexes in ``items`` that reply
    ``parsed[i]`` covers), results back in the order of ``items``."""
    ordered = [step for p in parsed for step in p[2]]
    order = [index for group in groups for index in group]
    if order != sorted(order):
        by_item: dict[int, list[Step]] = {}
        results = iter(ordered)
        for index in order:
            by_item[index] = [next(results) for _ in items[index][0].limits]
        ordered = [step for index in range(len(items)) for step in by_item[index]]
    allowed = all(p[0] for p in parsed)
    retry = 0.0 if allowed else max(p[3] for p in parsed)
    # Groups are numbered by first appearance, so the first one holds the first item.
    return Decision(allowed, retry, parsed[0][1], items, ordered)


def pack(*words: bytes) -> bytes:
    """The RESP bytes of one command."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


_EVALSHA_HEAD = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode() + b"\r\n"
LOAD_SCRIPT = pack(b"SCRIPT", b"LOAD", SCRIPT.encode())


def is_noscript(reply: object) -> bool:
    """Whether a reply says the server does not hold the script."""
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")


def script_flow() -> Generator[bool, object, bytes]:
    """The NOSCRIPT recovery, written once for every driver.

    Yields whether the script must be loaded before the call (``False`` first) and receives the
    call's reply; returns the script's reply, or raises the refusal (an exception value).
    """
    reply = yield False
    if is_noscript(reply):
        # The server restarted or flushed its scripts: load it again, once.
        reply = yield True
    if type(reply) is bytes:
        return reply
    if isinstance(reply, Exception):
        raise reply
    raise TypeError(f"unexpected reply from the script: {reply!r}")
