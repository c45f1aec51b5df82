"""In-flight limits: requests inside the app at once, counted in this process.

The ``in_flight`` stage takes a slot of every in-flight limit of the rule, or refuses with the
limit's overload answer when one is full; the slots are released when the app has answered
(:meth:`~ratekeeper.http.engine.Enforcer.complete`) or when a later stage refuses.
"""

from __future__ import annotations

import threading

from ratekeeper.http.flow import Context, Kit, Stage, Ticket, repeatable

__all__ = ["InFlightGauge", "in_flight"]


class InFlightGauge:
    """Counts of requests inside the app, per in-flight limit name; thread-safe."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, limits: tuple[tuple[str, int], ...]) -> str | None:
        """Take a slot of every ``(name, capacity)``; the name of a full one, taking none."""
        with self._lock:
            counts = self._counts
            for name, capacity in limits:
                if counts.get(name, 0) >= capacity:
                    return name
            for name, _ in limits:
                counts[name] = counts.get(name, 0) + 1
        return None

    def leave(self, names: tuple[str, ...]) -> None:
        """Give back one slot of each name."""
        if names:
            with self._lock:
                for name in names:
                    self._counts[name] -= 1

    def count(self, name: str) -> int:
        """Requests currently holding a slot of ``name``."""
        return self._counts.get(name, 0)


def in_flight(kit: Kit) -> Stage | None:
    """Take the rule's in-flight slots, or refuse as overloaded."""
    if not any(spec.in_flight for spec in kit.plan.policy.limits.values()):
        return None
    gauge, metrics, answers = kit.gauge, kit.metrics, kit.answers

    def stage(ctx: Context) -> Ticket | None:
        rule = ctx.matched
        if not rule.in_flight:
            return None
        refused = gauge.enter(rule.in_flight)
        if refused is not None:
            metrics.count(rule.name, refused, "rejected")
            return answers.overloaded(refused)
        ctx.ticket.held = tuple(name for name, _ in rule.in_flight)
        return None

    # Repeatable for rules without in-flight limits only (no refusal holding slots is kept).
    return repeatable(stage)
