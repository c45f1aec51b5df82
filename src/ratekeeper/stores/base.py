"""What a store is: one decision method with sync and async twins, plus reset and close."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ratekeeper.decision import Decision
from ratekeeper.limit import LimitSet

__all__ = ["AsyncStore", "Items", "Store"]

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
