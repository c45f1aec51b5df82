"""The answer of the limiter: allowed or not, and what headers and clients need to know."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ratekeeper.algorithms import Step
    from ratekeeper.limit import Limit, LimitSet

__all__ = ["ChargedDecision", "Decision", "LimitState", "charged"]


class LimitState(NamedTuple):
    """One limit's view after a decision (an immutable named tuple: every answer builds a few,
    and a frozen dataclass costs three times as much to build).

    ``remaining`` counts the current request when it was allowed. ``reset_at`` (epoch seconds)
    is when the limit is whole again or its window ends. ``retry_after_s`` is 0 when this limit
    let the request through, else the wait until it would (``inf``: never, the cost exceeds it).
    """

    limit: Limit
    limit_set: str
    key: str
    remaining: int
    reset_at: float
    retry_after_s: float

    @property
    def allowed(self) -> bool:
        """Whether this limit let the request through."""
        return self.retry_after_s == 0.0


class Decision:
    """The outcome of one request against one or more limits, all charged or none.

    ``retry_after_s`` is 0 when allowed, else the largest wait among the limits that rejected
    (``math.inf`` if the cost can never pass). ``binding`` is the limit to report in headers:
    on rejection the rejecting limit with the longest wait, otherwise the one with the least
    remaining (on a tie, the longest period).
    """

    __slots__ = ("_binding", "_items", "_results", "_states", "allowed", "now", "retry_after_s")

    allowed: bool
    retry_after_s: float
    now: float

    def __init__(
        self,
        allowed: bool,
        retry_after_s: float,
        now: float,
        items: Sequence[tuple[LimitSet, str]],
        results: Sequence[Step],
    ) -> None:
        self.allowed = allowed
        self.retry_after_s = retry_after_s
        self.now = now
        self._items = items
        self._results = results
        self._states: tuple[LimitState, ...] | None = None
        self._binding: LimitState | None = None

    @property
    def states(self) -> tuple[LimitState, ...]:
        """Every limit's state, in the order of the limit sets and their limits."""
        states = self._states
        if states is None:
            out = []
            results = iter(self._results)
            for limit_set, key in self._items:
                for limit in limit_set.limits:
                    _, _, remaining, reset_at, retry = next(results)
                    out.append(
                        LimitState(
                            limit, limit_set.name, key, max(int(remaining), 0), reset_at, retry
                        )
                    )
            states = self._states = tuple(out)
        return states

    @property
    def binding(self) -> LimitState:
        """The limit that decided: see the class docstring."""
        binding = self._binding
        if binding is None:
            # Ranked from the raw steps, so that headers, which need only this limit, do not
            # build every limit's state. Ties keep the first, as min()/max() would.
            allowed = self.allowed
            results = self._results
            index = 0
            best_rank: tuple[float, float] | None = None
            best = self._items[0][0], self._items[0][1], self._items[0][0].limits[0], results[0]
            for limit_set, key in self._items:
                for limit in limit_set.limits:
                    step = results[index]
                    index += 1
                    rank: tuple[float, float]
                    if allowed:
                        rank = (-max(int(step[2]), 0), limit.period_s)
                    else:
                        rank = (step[4], limit.period_s)
                    if best_rank is None or rank > best_rank:
                        best_rank = rank
                        best = limit_set, key, limit, step
            limit_set, key, limit, step = best
            binding = LimitState(limit, limit_set.name, key, max(int(step[2]), 0), step[3], step[4])
            self._binding = binding
        return binding

    @property
    def limit(self) -> int:
        """The binding limit's amount (``X-RateLimit-Limit``)."""
        return self.binding.limit.amount

    @property
    def remaining(self) -> int:
        """The binding limit's remaining units (``X-RateLimit-Remaining``)."""
        return self.binding.remaining

    @property
    def reset_at(self) -> float:
        """The binding limit's reset, epoch seconds (``X-RateLimit-Reset`` is its ceiling)."""
        return self.binding.reset_at

    @property
    def satisfiable(self) -> bool:
        """False when the request's cost exceeds a limit, so waiting can never help."""
        return self.retry_after_s != math.inf

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        b = self.binding
        verdict = "allowed" if self.allowed else f"rejected, retry after {self.retry_after_s:.3f}s"
        return (
            f"<Decision {verdict}; binding {b.limit_set}/{b.limit.name} {b.limit.rate} "
            f"remaining={b.remaining} reset_at={b.reset_at:.3f}>"
        )


class ChargedDecision(Decision):
    """An allowed decision of one limit set, charged by the set's fast path
    (:attr:`~ratekeeper.limit.LimitSet.charge_flat`). Its steps are the set's general decision
    on the state before the charge, worked out when first read: most requests never read them.
    Built by :func:`charged`."""

    __slots__ = ("_before", "_cost", "_key", "_limit_set")

    _before: tuple[float, ...] | None
    _cost: int
    _key: str
    _limit_set: LimitSet

    def _charge(self) -> None:
        limit_set = self._limit_set
        self._items = ((limit_set, self._key),)
        self._results = limit_set.decide_flat(self._before, self.now, self._cost)[0]

    @property
    def states(self) -> tuple[LimitState, ...]:
        """Every limit's state, in the order of the limit sets and their limits."""
        if self._states is None and self._binding is None:
            self._charge()
        return super().states

    @property
    def binding(self) -> LimitState:
        """The limit that decided: see :class:`Decision`."""
        if self._binding is None and self._states is None:
            self._charge()
        return super().binding


_new = object.__new__


def charged(
    now: float, limit_set: LimitSet, key: str, before: tuple[float, ...] | None, cost: int
) -> ChargedDecision:
    """The :class:`ChargedDecision` of ``cost`` charged to ``key`` at ``now``, whose state was
    ``before`` (the memory store's flat layout, ``None`` when fresh)."""
    # Slots set here rather than by __init__: a class call runs __init__ in a nested
    # interpreter frame, which costs more than the decision it builds.
    decision: ChargedDecision = _new(ChargedDecision)
    decision.allowed = True
    decision.retry_after_s = 0.0
    decision.now = now
    decision._states = None
    decision._binding = None
    decision._before = before
    decision._cost = cost
    decision._key = key
    decision._limit_set = limit_set
    return decision
