"""How :class:`~ratekeeper.stores.sqlite.SQLiteStore` stores a limit set's states in a row.

One byte per limit gives its state's length (0 for None), then the floats of all states follow
as little-endian doubles.
"""

from __future__ import annotations

import hashlib
import itertools
import struct

from ratekeeper.core import EntryState
from ratekeeper.limit import STATE_WIDTHS, LimitSet

__all__ = ["RowCodec", "hash_key", "select_rows"]

_SELECT_ONE = "SELECT {}, state FROM ratekeeper_state WHERE limit_set = ? AND key_hash = ?"
# One statement reads every item's row (tagged with the item's index): a single statement is
# cheaper than one per item, and its rows come from one snapshot.
_SELECTS: dict[int, str] = {}


def hash_key(key: str) -> bytes:
    """The row's key: a digest, so that API keys are never stored."""
    return hashlib.blake2b(key.encode(), digest_size=16, person=b"ratekeeper.key").digest()


def select_rows(size: int) -> str:
    """The statement that reads ``size`` items' rows, each tagged with its index."""
    sql = _SELECTS.get(size)
    if sql is None:
        sql = _SELECTS[size] = " UNION ALL ".join(_SELECT_ONE.format(i) for i in range(size))
    return sql


# Values are bound as bytearrays: the sqlite3 module binds
# those directly, while every bytes value first goes through its adapter lookup, which raises
# and clears an AttributeError (a third of a charge's interpreter work).
_FORMATS: dict[bytes, struct.Struct] = {}


def _format(shape: bytes) -> struct.Struct:
    fmt = _FORMATS.get(shape)
    if fmt is None:
        fmt = _FORMATS[shape] = struct.Struct(f"<{sum(shape)}d")
    return fmt


def _encode(entry: EntryState) -> bytearray:
    shape = bytes(len(state) if state is not None else 0 for state in entry)
    values = [value for state in entry if state is not None for value in state]
    return bytearray(shape) + _format(shape).pack(*values)


def _decode(blob: bytes, size: int) -> EntryState:
    shape = blob[:size]
    values = _format(shape).unpack_from(blob, size)
    if len(blob) != size + 8 * len(values):
        raise ValueError(f"{len(blob)} bytes for a state of shape {list(shape)}")
    entry: list[tuple[float, ...] | None] = []
    start = 0
    for length in shape:
        if length:
            entry.append(values[start : start + length])
            start += length
        else:
            entry.append(None)
    return tuple(entry)


class RowCodec:
    """The encoding of one limit set's entries with every state present (the entries a charge
    writes, and nearly all a decision reads), precomputed; others take the general path."""

    __slots__ = ("fmt", "length", "shape", "size", "spans")

    def __init__(self, limit_set: LimitSet) -> None:
        widths = [STATE_WIDTHS[limit.algorithm] for limit in limit_set.limits]
        self.size = len(widths)
        self.shape = bytes(widths)
        self.fmt = _format(self.shape)
        self.length = self.size + self.fmt.size
        spans = []
        at = 0
        for width in widths:
            spans.append((at, at + width))
            at += width
        self.spans = tuple(spans)

    def encode(self, entry: EntryState) -> bytearray:
        """The row's ``state`` value for ``entry``."""
        if None in entry:
            return _encode(entry)
        return bytearray(self.shape) + self.fmt.pack(*itertools.chain.from_iterable(entry))  # type: ignore[arg-type]

    def decode(self, blob: bytes) -> EntryState:
        """The entry a row's ``state`` holds; ``ValueError`` when it is not one."""
        if len(blob) != self.length or blob[: self.size] != self.shape:
            return _decode(blob, self.size)
        values = self.fmt.unpack_from(blob, self.size)
        return tuple([values[a:b] for a, b in self.spans])
