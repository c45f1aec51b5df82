"""A learned host's budget and when a spent one refills, as plain state with no I/O.

:class:`Budget` is the binding quota of the server's current window as its answers report it.
:class:`RefillProbe` says when a spent budget is worth trying again: at its reset as written,
or, when the reset may be written late (rounded up to whole seconds by Flask-Limiter, a second
added by slowapi), a whole period after the window began, which one request probes. The caller
(:class:`~ratekeeper.client.state.HostState`) holds the host's lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Budget", "RefillProbe"]

# Window ends computed from different clock readings agree to within float error.
_SAME_END_S = 1e-6


@dataclass(slots=True)
class Budget:
    """The binding quota of the server's current window: the lowest remaining reported in it
    (answers to concurrent requests arrive in any order; the lowest is the freshest count)."""

    remaining: int
    reset_at: float | None
    name: str
    # The request whose answer reported it (0: none, a refill the client assumed).
    seq: int = 0


class RefillProbe:
    """The true period of a learned window whose resets may be written late, found by probing.

    It knows the window's first request and when its answer came (the server's window began
    before that), the period once a probe confirmed it, and whether a probe was refused (then
    resets are believed as written).
    """

    __slots__ = (
        "_guessed",
        "_short_guess",
        "_shortest",
        "at",
        "period_s",
        "refused",
        "rounded",
        "sent_seq",
        "window_sent",
        "window_seq",
        "window_start",
    )

    def __init__(self) -> None:
        self.window_seq = 0
        self.window_sent = 0.0
        self.window_start: float | None = None
        self.period_s: float | None = None
        # When the guessed period ends, and the probe's request (-1: the next one sent).
        self.at: float | None = None
        self.sent_seq = 0
        self.refused = False
        # Whether the last reset reported was rounded up to whole seconds.
        self.rounded = False
        self._guessed: float | None = None
        # A guess taken from a slow first answer may be a period short: its refusal rules it
        # out (the next guess is longer) rather than making every later reset believed.
        self._shortest = 1
        self._short_guess = False

    def window_over(self, now: float, reset_at: float) -> bool:
        """Whether the window a report described (reset at ``reset_at``) is over at ``now``:
        its reset has come, or the end of the period guessed for it."""
        return now >= reset_at or (self.at is not None and now >= self.at)

    def next_window(self) -> bool:
        """A new window begins; returns whether its size is the learned one (else only its
        probe goes: the period was only guessed)."""
        probe = self.at
        sure = probe is None or self.period_s is not None
        self.window_start = None
        self.window_seq = 0
        if probe is not None:
            self.sent_seq = -1  # the next send probes the guess, alone
        self.at = None
        return sure

    def refill_at(self, reset_at: float, margin_s: float) -> float:
        """When a spent budget reset at ``reset_at`` is worth trying again: its reset, or a
        whole period of seconds after the window's first answer (and ``margin_s``)."""
        start = self.window_start
        if self.refused or start is None:
            return reset_at
        period = self.period_s
        if period is None:
            # Late by up to a second: rounded up, or "1 +" a precise reset. The server's
            # window began between the first send and its answer: when a slow answer leaves
            # two periods possible, the shorter is probed first (a refusal, the one a window
            # may have, rules it out), from the first answer (the window began before it).
            # No period left that fits: the window began before the send (aligned), the
            # reset is as written.
            late = 0.0 if self.rounded else 0.5
            longest = math.floor(reset_at - self.window_sent - late)
            period = max(math.floor(reset_at - start - late), self._shortest)
            if period > longest:
                return reset_at
            self._short_guess = period < longest
            self._guessed = period
        at = start + period + margin_s
        if at >= reset_at - _SAME_END_S:
            return reset_at
        self.at = at
        return at

    def on_send(self, seq: int, now: float) -> None:
        """Request ``seq`` left at ``now``."""
        if not self.window_seq:
            self.window_seq = seq
            self.window_sent = now
        if self.sent_seq < 0:
            self.sent_seq = seq

    def on_abort(self, seq: int) -> None:
        """Request ``seq`` ended without an answer."""
        self.sent_seq = 0
        if seq == self.window_seq:
            self.window_seq = 0

    def on_answer(self, seq: int, now: float) -> None:
        """Request ``seq`` was answered at ``now``."""
        if seq == self.window_seq:
            self.window_start = now

    def probed(self, seq: int, failed: bool) -> bool:
        """Take the answer to request ``seq``; returns whether it was the probe that confirmed
        the period guessed."""
        if seq != self.sent_seq:
            return False
        self.sent_seq = 0
        if failed and self._short_guess and self._guessed is not None:
            self._shortest = int(self._guessed) + 1
        elif failed:
            self.refused = True
        elif self.period_s is None:
            self.period_s = self._guessed
            return True
        return False
