"""What a store is: one decision method with sync and async twins, plus reset and close.

How asyncio code drives a store is the store's to say, with one optional attribute,
``decides_on_loop``: true when its synchronous face is quick enough to run on the event loop
(a hop to a worker thread would cost more than the decision). :func:`decides_on_loop` reads it;
a store without the attribute decides on the loop exactly when it has no async face.

A store whose keys live on parts that fail apart (Redis Cluster's masters) says so with
:class:`Sharded`, so that a fail mode applies to a failed part's keys only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ratekeeper.decision import Decision
from ratekeeper.limit import LimitSet

__all__ = ["AsyncStore", "Items", "Sharded", "Store", "decides_on_loop"]

Items = Sequence[tuple[LimitSet, str]]


@runtime_checkable
class Store(Protocol):
    """A store usable from synchronous code.

    ``decide`` applies :func:`ratekeeper.core.decide` to the stored state of every
    ``(limit_set, key)`` item atomically and writes back the result. ``now`` is the caller's
    clock reading; stores with a clock of their own (Redis ``TIME``) use theirs instead.
    With ``peek`` nothing is charged.
    """

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide and charge (unless ``peek``) atomically."""
        ...

    def reset(self, items: Items) -> None:
        """Forget the state of these keys: they start afresh."""
        ...

    def close(self) -> None:
        """Release connections or files."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """The asyncio twin of :class:`Store`."""

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """Decide and charge (unless ``peek``) atomically."""
        ...

    async def reset_async(self, items: Items) -> None:
        """Forget the state of these keys: they start afresh."""
        ...

    async def close_async(self) -> None:
        """Release connections or files."""
        ...


def decides_on_loop(store: Store | AsyncStore) -> bool:
    """Whether asyncio code should call ``store``'s synchronous face on the event loop."""
    declared = getattr(store, "decides_on_loop", None)
    if declared is not None:
        return bool(declared)
    return not isinstance(store, AsyncStore)


@runtime_checkable
class Sharded(Protocol):
    """A store whose keys live on parts that can fail one at a time (Redis Cluster's masters)."""

    @property
    def sharded(self) -> bool:
        """Whether this instance has more than one part (a cluster, not one server)."""
        ...

    def shard_of(self, items: Items) -> str:
        """The part (or parts) these items live on now, named so equal names mean one part."""
        ...
