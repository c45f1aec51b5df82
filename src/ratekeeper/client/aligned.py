"""Told windows aligned to the clock: decided ahead of time, sent early only into room.

A request may reach the server up to a round trip after it leaves, so a known policy's
clock-aligned windows are decided :attr:`AlignedRoom.shift_s` ahead of the clock. A request
this puts in a window that has not begun goes early only when the current window has room for
it (wherever the server counts it, it stays within the limit), else at the boundary. Plain
state with no I/O; the caller (:class:`~ratekeeper.client.state.HostState`) serializes it.
"""

from __future__ import annotations

import collections

from ratekeeper.client.pacing import Charge
from ratekeeper.decision import Decision

__all__ = ["AlignedRoom"]

# What the first requests to a host may take to arrive (a connection to set up, TLS).
_FIRST_FLIGHT_S = 0.25

# Window ends computed from different clock readings agree to within float error.
_SAME_END_S = 1e-6


class AlignedRoom:
    """How far ahead of the clock a host's aligned windows are decided, and the room each
    had when its last ``shift_s`` began."""

    __slots__ = ("_clock_shift_s", "_room", "_rtts", "shared", "shift_s")

    def __init__(self, clock_shift_s: float, *, shared: bool = False) -> None:
        self._clock_shift_s = clock_shift_s
        # Budgets in a store other processes charge too: what a peek saw left in a window
        # may be theirs by the time a request goes.
        self.shared = shared
        # ``margin_s`` or the longest recent round trip (a request may reach the server that
        # late); before any round trip is known, long enough for a connection to be set up.
        self.shift_s = max(clock_shift_s, _FIRST_FLIGHT_S) if clock_shift_s else 0.0
        self._rtts: collections.deque[float] = collections.deque(maxlen=16)
        # Per aligned limit: (end of the window, its room when its last margin_s began).
        self._room: dict[tuple[str, int], tuple[float, int]] = {}

    def round_trip(self, seconds: float) -> None:
        """A request's answer came ``seconds`` after it left."""
        if self._clock_shift_s:
            self._rtts.append(seconds)
            self.shift_s = max(self._clock_shift_s, *self._rtts)

    def needs_room(self, charge: Charge, now: float) -> bool:
        """Whether ``now`` is within ``margin_s`` of an aligned window's end whose room is not
        yet known: the flow then peeks at the window before charging the next one."""
        shift = self.shift_s
        room = self._room
        for _, period, limit in charge.aligned:
            end = now - now % period + period
            if now + shift >= end:
                known = room.get(limit)
                if known is None or abs(known[0] - end) > _SAME_END_S:
                    return True
        return False

    def record_room(self, charge: Charge, peek: Decision, now: float) -> None:
        """Remember the room of the aligned windows ending within ``margin_s`` of ``now``, from
        a peek at the real clock (nothing is charged to them once their margin has begun)."""
        states = peek.states
        shift = self.shift_s
        for index, period, limit in charge.aligned:
            end = now - now % period + period
            if now + shift < end:
                continue
            seen = states[index]
            # The store already moved on to the next window: this window's room is unknown.
            room = seen.remaining if abs(seen.reset_at - end) <= _SAME_END_S else 0
            self._room[limit] = (end, room)

    def early_wait_s(self, charge: Charge, decision: Decision, now: float) -> float:
        """How long an allowed request must still wait for the aligned windows it was charged
        to (decided ``margin_s`` ahead, it may belong to a window that has not begun).

        It may go at once when the current window has room for every request charged early
        to the next one: wherever the server counts it, it stays within the limit. With a
        shared store that room may be another process's by then: it waits for the boundary.
        """
        shift = self.shift_s
        at = decision.now
        for _, period, _ in charge.aligned:
            if at % period < shift:
                break
        else:
            return 0.0  # every window it was charged to had begun when it was decided
        wait = 0.0
        states = decision.states
        for index, period, limit in charge.aligned:
            seen = states[index]
            start = seen.reset_at - period
            if start <= now:
                continue
            early = seen.limit.amount - seen.remaining
            known = self._room.get(limit)
            if (
                self.shared
                or known is None
                or abs(known[0] - start) > _SAME_END_S
                or early > known[1]
            ):
                wait = max(wait, start - now)
        return wait
