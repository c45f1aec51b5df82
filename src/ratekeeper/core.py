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

__all__ = ["EntryState", "decide"]

# The states of one limit set's limits for one key, in the set's order.
EntryState: TypeAlias = tuple[State | None, ...]


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
    results: list[Step] = []
    new_entries: list[EntryState] = []
    allowed = True
    for (limit_set, _), entry in zip(items, entries, strict=True):
        new_states: list[State | None] = []
        for index, limit in enumerate(limit_set.limits):
            step = limit.step(entry[index] if entry is not None else None, now, limit, cost)
            results.append(step)
            if step[0]:
                new_states.append(step[1])
            else:
                allowed = False
        if allowed:
            new_entries.append(tuple(new_states))
    if allowed:
        return new_entries, Decision(True, 0.0, now, items, results)
    retry = max(step[4] for step in results if not step[0])
    return None, Decision(False, retry, now, items, results)
