"""Pacing by windows that are told ("N per W") when the server's way of counting is not.

Servers count "N per W" in three ways: windows aligned to the clock (MusicBrainz), windows that
start at a key's first hit (slowapi, Flask-Limiter) and a true moving window (``limits``'
moving window). A client that keeps at most N requests in any span of W, as the server sees
them arrive, is refused by none of them, and at full speed it is as fast as the first-hit and
moving-window servers allow. Only aligned windows allow more: a new burst at each boundary. So
:class:`WindowPacer` starts as a moving window and switches to aligned windows once a ``Reset``
proves the server aligns them: a reset earlier than any window started by this client's sends
could end. Pure state: every method takes the clock reading.

A request reaches the server between its send and its answer, so the span is measured from
answers (no fixed guess of the network's delay): a request may go a period after the N-th
latest answer, a request in flight counting as not yet answered. Answers to concurrent
requests come back in any order; the N-th latest of them, not the answer of the request sent N
back, is what bounds the server's count. Aligned windows, where a new request's arrival
matters, count it in every window its send could land in.
"""

from __future__ import annotations

import bisect
import collections
import math

from ratekeeper.client.hints import Quota

__all__ = ["WindowPacer"]

# How far a reset read from an answer may be off besides its rounding: the network's delay.
_RESET_SLACK_S = 0.05
# Clock readings on both sides are not infinitely fine.
_TICK_S = 0.001


class _Send:
    """One request: when it left and when its answer came (``inf`` while in flight)."""

    __slots__ = ("answered", "sent")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.answered = math.inf


class WindowPacer:
    """At most ``amount`` requests in any ``period_s`` span as the server sees them, until the
    server shows it counts in clock-aligned windows; then at most ``amount`` per aligned window,
    a request counted in every window it could reach the server in (``margin_s`` at least, or
    the longest round trip lately). ``learn=False`` keeps the moving window (told first-hit
    windows, whose server starts them when the first request arrives). ``probe`` sends the
    first request after each wait alone, the others after its answer (a window guessed from a
    refusal may be too short: then one request, not a burst, is refused for it)."""

    __slots__ = (
        "_answers",
        "_held",
        "_open",
        "_probe",
        "_rtts",
        "_sends",
        "aligned_phase_s",
        "amount",
        "learn",
        "margin_s",
        "period_s",
        "probe",
    )

    def __init__(
        self,
        amount: int,
        period_s: float,
        margin_s: float,
        *,
        learn: bool = True,
        probe: bool = False,
    ) -> None:
        self.amount = amount
        self.learn = learn
        self.probe = probe
        # The first request after the pacer held one back, sent alone while its answer is
        # awaited (``probe``), and whether the pacer is holding one back.
        self._probe: float | None = None
        self._held = False
        self.period_s = period_s
        self.margin_s = margin_s
        self._sends: collections.deque[_Send] = collections.deque()
        # The counted requests' answers, in order, and how many are still in flight.
        self._answers: list[float] = []
        self._open = 0
        self._rtts: collections.deque[float] = collections.deque(maxlen=16)
        # Learned: where the server's windows start (local time modulo the period).
        self.aligned_phase_s: float | None = None

    @property
    def model(self) -> str:
        """``"moving"`` (safe against every server) or ``"aligned"`` (learned)."""
        return "moving" if self.aligned_phase_s is None else "aligned"

    def waits_for_answer(self) -> bool:
        """Whether the next request must wait for an answer in flight before its time is known
        (the request ``amount`` back has not been answered)."""
        if self._probe is not None:
            return True
        if self.aligned_phase_s is not None:
            return False  # aligned windows count a request in flight where it may land
        return self._open >= self.amount

    def wait_s(self, now: float) -> float:
        """Seconds until one more request may be sent."""
        wait = self._wait_s(now)
        if wait > 0:
            self._held = True
        return wait

    def _wait_s(self, now: float) -> float:
        if self.aligned_phase_s is None:
            # The N-th latest answer; with N in flight the flow waits for one (waits_for_answer).
            back = self.amount - self._open
            answers = self._answers
            if back <= 0 or len(answers) < back:
                return 0.0
            return max(answers[-back] + self.period_s + _TICK_S - now, 0.0)
        at = now
        flight = self._flight_s()
        # Two windows at most are full in a row (a boundary's requests count on both sides).
        for _ in range(3):
            window = self._window(at)
            if self._count(window, flight) >= self.amount:
                at = self._start(window + 1)
                continue
            late = self._window(at + flight)
            if late != window and self._count(late, flight) >= self.amount:
                at = self._start(late + 1)
                continue
            break
        return max(at - now, 0.0)

    def record(self, at: float, cost: int = 1) -> None:
        """A request costing ``cost`` units was sent at ``at``."""
        sends = self._sends
        if self._held:
            self._held = False
            self._probe = at if self.probe else None
        for _ in range(cost):
            sends.append(_Send(at))
        self._open += cost
        horizon = at - 2 * self.period_s - self._flight_s()
        # Requests answered long ago count in no span or window any more.
        while sends and sends[0].answered < horizon:
            sends.popleft()
        answers = self._answers
        if answers and answers[0] < horizon:
            del answers[: bisect.bisect_left(answers, horizon)]

    def answered(self, sent_at: float, at: float) -> None:
        """The request sent at ``sent_at`` was answered at ``at`` (it reached the server)."""
        if sent_at == self._probe:
            self._probe = None
        found = self._units(sent_at)
        for send in found:
            if send.answered == math.inf:
                send.answered = at
                self._open -= 1
                bisect.insort(self._answers, at)
        if found:
            self._rtts.append(at - sent_at)

    def refund(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` was refused or never reached the server: servers do
        not count it."""
        if sent_at == self._probe:
            self._probe = None
        answers = self._answers
        for send in self._units(sent_at):
            self._sends.remove(send)
            if send.answered == math.inf:
                self._open -= 1
                continue
            index = bisect.bisect_left(answers, send.answered)
            if index < len(answers) and answers[index] == send.answered:
                del answers[index]

    def _units(self, sent_at: float) -> list[_Send]:
        """The units of the request sent at ``sent_at`` (recorded together, newest first)."""
        found = []
        for send in reversed(self._sends):
            if send.sent == sent_at:
                found.append(send)
            elif found:
                break
        return found

    def sent_before(self, at: float) -> list[float]:
        """When the requests still counted and sent before ``at`` left, oldest first."""
        return [send.sent for send in self._sends if send.sent < at]

    def lengthen(self, period_s: float) -> None:
        """The window proved longer than ``period_s`` was thought: pace by ``period_s`` as a
        moving window again (where aligned windows start is to be learned anew)."""
        self.period_s = period_s
        self.aligned_phase_s = None

    def align(self, reset_at: float) -> None:
        """A refusal said the window is whole again at ``reset_at``, sooner than a window
        begun by the oldest request counted could end: the server's windows end there."""
        sends = self._sends
        if sends and reset_at < sends[0].sent + self.period_s - _TICK_S:
            self.aligned_phase_s = reset_at % self.period_s

    def observe(self, quota: Quota, now: float) -> None:
        """Learn from a reported quota read at ``now`` (``reset_in_s`` on the local clock)."""
        if not self.learn or self.aligned_phase_s is not None or quota.reset_in_s is None:
            return
        # A whole-second delta says too little about where a window starts to align on it.
        if quota.reset_rounding_s and not quota.reset_epoch:
            return
        reset_at = now + quota.reset_in_s
        period = self.period_s
        # Windows started by this client's requests (first hit, or the oldest a moving window
        # still counts) end a period after one of them at the earliest.
        recent = [s.sent for s in self._sends if s.answered > now - period]
        if not recent:
            return
        earliest_end = recent[0] + period - quota.reset_rounding_s - _RESET_SLACK_S
        if reset_at < earliest_end:
            self.aligned_phase_s = reset_at % period

    def _flight_s(self) -> float:
        """How long a request may take to reach the server: ``margin_s``, or more lately."""
        rtts = self._rtts
        return max(self.margin_s, *rtts) if rtts else self.margin_s

    def _window(self, at: float) -> int:
        assert self.aligned_phase_s is not None
        return math.floor((at - self.aligned_phase_s) / self.period_s)

    def _start(self, window: int) -> float:
        assert self.aligned_phase_s is not None
        return window * self.period_s + self.aligned_phase_s

    def _count(self, window: int, flight: float) -> int:
        """Requests that may have reached the server within aligned window ``window``."""
        start = self._start(window)
        end = start + self.period_s
        count = 0
        for send in reversed(self._sends):
            if send.sent + flight < start:
                break
            if send.sent < end and min(send.answered, send.sent + flight) >= start:
                count += 1
        return count

    def __repr__(self) -> str:
        return f"<WindowPacer {self.amount}/{self.period_s:g}s {self.model}>"
