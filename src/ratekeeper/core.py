"""The pure decision: several limit sets, each for one key, checked and charged all or nothing.

Stores call :func:`decide` with the states they read and write back what it returns, inside
whatever makes that atomic for them (a lock, a transaction). It reads no clock and does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from ratekeeper.algorithms import State, Step
from ratekeeper.decision import Decision
from ratekeeper.limit import LimitSet

__all__ = ["EntryState", "decide", "decide_entry", "refusal"]

# The states of one limit set's limits for one key, in the set's order.
EntryState: TypeAlias = tuple[State | None, ...]


def decide_entry(
    limit_set: LimitSet, entry: EntryState | None, now: float, cost: int
) -> tuple[list[Step], EntryState | None]:
    """Step every limit of one set on its stored ``entry``; the new entry is ``None`` if any
    limit rejected."""
    return limit_set.decide_entry(entry, now, cost)


def decide(
    items: Sequence[tuple[LimitSet, str]],
    entries: Sequence[EntryState | None],
    now: float,
    cost: int,
) -> tuple[list[EntryState] | None, Decision]:
    """Decide ``cost`` units against every limit of every ``(limit_set, key)`` item.

    ``entries[i]`` is the stored state of item ``i`` (``None`` when fresh). Returns the states to
    write back (``None`` when rejected: nothing may be charged) and the :class:`Decision`.
    With ``cost=0`` it reports the current state without charging (a peek).
    """
    if len(items) == 1:
        results, new_entry = items[0][0].decide_entry(entries[0], now, cost)
        if new_entry is not None:
            return [new_entry], Decision(True, 0.0, now, items, results)
    else:
        results = []
        new_entries: list[EntryState] = []
        for (limit_set, _), entry in zip(items, entries, strict=True):
            item_results, new_entry = limit_set.decide_entry(entry, now, cost)
            results += item_results
            if new_entry is not None:
                new_entries.append(new_entry)
        if len(new_entries) == len(items):
            return new_entries, Decision(True, 0.0, now, items, results)
    return None, refusal(items, results, now)


def refusal(items: Sequence[tuple[LimitSet, str]], results: list[Step], now: float) -> Decision:
    """The refusal of ``items`` whose limits stepped to ``results``: it waits for the longest
    of the rejecting limits."""
    retry = max([step[4] for step in results if not step[0]])
    return Decision(False, retry, now, items, results)
