"""What the client knows about each host, as plain state with no I/O.

A :class:`HostState` answers "how long must the next request to this host wait?" from its
:class:`~ratekeeper.client.pacing.HostPlan` and the answers it has seen; the flow
(:mod:`ratekeeper.client.flow`) sleeps, asks the limiter (for a known policy) and sends.
Everything takes the clock reading as an argument.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from ratekeeper.client.adaptive import Adaptive
from ratekeeper.client.aligned import AlignedRoom
from ratekeeper.client.budget import Budget, RefillProbe
from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.pacing import Charge, HostPlan, HostPolicy
from ratekeeper.client.refusals import RefusedLimits
from ratekeeper.client.skew import SkewEstimate
from ratekeeper.client.windows import WindowPacer
from ratekeeper.errors import ClientConfigError

__all__ = ["HostState", "Pacer"]


# A learned host's first requests go one at a time for this long at least (see HostState).
_SERIAL_S = 1.0

# Reports whose resets differ by less than this describe the same window: whole-second deltas
# ("Reset: 3") read at different moments of one window differ by up to a second.
_SAME_WINDOW_S = 1.0


class HostState:
    """What the client knows about one host; thread-safe, updated on each send and answer.

    A learned budget is reserved across concurrent requests: every request in flight may still
    be uncounted by the server, so the estimate is the lowest remaining reported in the window
    less the requests in flight, which never exceeds what the server has left.
    """

    def __init__(
        self, plan: HostPlan, *, backoff_base_s: float = 1.0, shared: bool = False
    ) -> None:
        policy = plan.policy
        self.plan = plan
        self._lock = threading.Lock()
        known = plan.known
        self.adaptive = Adaptive(
            floor_s=policy.min_interval_s,
            ceiling_s=policy.max_delay_s,
            base_s=backoff_base_s,
            window=float(policy.max_in_flight) if known else 1.0,
            max_window=policy.max_in_flight,
        )
        self.last_send = -math.inf
        self.in_flight = 0
        # Requests waiting for a slot, counted by the transports under their slot's lock.
        self.slot_waiters = 0
        self.sent = 0
        self.blocked_until = -math.inf
        self.budget: Budget | None = None
        # A window's size: X-RateLimit-Limit, else one more than the most ever reported left.
        self.window_limit: int | None = None
        # Requests sent up to this count were in flight when the last failure was counted:
        # their answers echo that failure, they are not news (TCP's one cut per round trip).
        self._failure_mark = 0
        self.zone: str | None = None
        self.skew = SkewEstimate()
        # Aligned windows told: decided ahead of the clock, sent early only into room.
        self.aligned = AlignedRoom(plan.clock_shift_s, shared=shared)
        self.pacers = tuple(
            WindowPacer(n, w, policy.margin_s, learn=learn) for n, w, learn in plan.windows
        )
        # Limits seen only in refusals (learned): they pace the host for the whole session.
        self.refused = RefusedLimits(policy.margin_s)
        # Told windows: when each request in flight left (its answer bounds its arrival).
        self._sent_at: dict[int, float] = {}
        # Learned: recent requests as (sent, answered), and whether the window learned (size
        # and a probed period) now paces the host as if told.
        self._track = bool(self.pacers) or not plan.known
        self._recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=1024)
        self._learned = False
        # Learned budgets whose resets may be written late: their true period, probed.
        self.refill = RefillProbe()
        # The reset of the window last warned about (warn once per window at most).
        self._warned_reset: float | None = None
        self.warned = False
        # Learned: one request at a time through the first window (a second after the first
        # send, or to the first reported reset): a limit the answers do not report (MusicBrainz
        # shows its global zone, not the per-client one) then refuses one request, not the
        # several a growing number in flight would have sent before the first refusal came.
        self._serial = not known
        self._serial_until = math.inf

    @property
    def period_s(self) -> float | None:
        """The period of a learned window once a probe confirmed it."""
        return self.refill.period_s

    def _paced(self, charge: Charge | None) -> tuple[WindowPacer, ...]:
        """The windows paced by answers that count a request of ``charge``."""
        indices = self.plan.paced_by(charge)
        pacers = self.pacers
        return pacers if indices is None else tuple(pacers[i] for i in indices)

    def can_start(self, charge: Charge | None = None) -> bool:
        """Whether another request (of ``charge``, for a policy file's routes) may be in flight
        now: the congestion window has room, and a learned budget is not spent by the requests
        in flight. When it is, their answers come first: one counted by the server before the
        lowest report frees a request, and a new window being probed says its size."""
        in_flight = self.in_flight
        if in_flight >= max(int(self.adaptive.window), 1):
            return False
        if (self.refill.sent_seq or self._serial) and in_flight:
            return False
        for pacer in self._paced(charge):
            if pacer.waits_for_answer():
                return False
        for pacer in self.refused.pacers:
            if pacer.waits_for_answer():
                return False
        budget = self.budget
        return (
            in_flight == 0
            or budget is None
            or self.plan.known
            or self._learned
            or budget.remaining > in_flight
        )

    def estimated_remaining(self) -> int | None:
        """What the server has left at least: the lowest remaining it reported in this window,
        less the requests in flight."""
        budget = self.budget
        if budget is None:
            return None
        return budget.remaining - self.in_flight

    def wait_s(self, now: float, charge: Charge | None = None) -> float:
        """Seconds until the next request (of ``charge``) may go, from everything but a known
        policy's limiter."""
        with self._lock:
            delay = (
                self.adaptive.delay_s
                if self.plan.policy.adaptive
                else self.plan.policy.min_interval_s
            )
            wait = max(self.last_send + delay - now, self.blocked_until - now, 0.0)
            for pacer in self._paced(charge):
                wait = max(wait, pacer.wait_s(now))
            for pacer in self.refused.pacers:
                wait = max(wait, pacer.wait_s(now))
            budget = self.budget
            # A known policy paces by itself: servers often report resets late (slowapi and
            # Flask-Limiter add a second), and obeying them would halve short windows.
            if budget is None or budget.reset_at is None or self.plan.known or self._learned:
                return wait
            refill = self.refill
            if refill.window_over(now, budget.reset_at):
                # The window the report described is over: a new one holds a window's size,
                # or, when that is unknown or only guessed, one request probes it.
                sure = refill.next_window()
                limit = self.window_limit
                size = limit if limit is not None and sure else 1
                self.budget = Budget(size, None, budget.name)
                return wait
            remaining = budget.remaining - self.in_flight
            # No margin on the reset: a request sent at it arrives after it.
            if remaining <= 0:
                at = refill.refill_at(budget.reset_at, self.plan.policy.margin_s)
                return max(wait, at - now)
            if self.plan.policy.spread:
                return max(wait, self.last_send + (budget.reset_at - now) / (remaining + 1) - now)
            return wait

    def on_send(self, now: float, charge: Charge | None = None) -> int:
        """Record a request (of ``charge``) leaving; returns its sequence number for
        :meth:`on_answer`."""
        with self._lock:
            self.last_send = now
            self.in_flight += 1
            self.sent += 1
            if self._track:
                self._sent_at[self.sent] = now
                cost = charge.cost if charge is not None else 1
                for pacer in self._paced(charge):
                    pacer.record(now, cost)
                for pacer in self.refused.pacers:
                    pacer.record(now)
            if self._serial and self._serial_until == math.inf:
                self._serial_until = now + _SERIAL_S
            self.refill.on_send(self.sent, now)
            return self.sent

    def observe_date(self, date: str, now: float, sent: float | None = None) -> float:
        """Take an answer's ``Date`` (its request sent at ``sent``); returns the server's clock
        skew to act on."""
        with self._lock:
            return self.skew.observe(date, now, sent)

    def refund(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` was refused or never reached the server: it is not
        counted against the told windows (its retry is)."""
        with self._lock:
            for pacer in self.pacers:
                pacer.refund(sent_at)
            for pacer in self.refused.pacers:
                pacer.refund(sent_at)

    def on_abort(self, seq: int, now: float) -> None:
        """Request ``seq`` ended without an answer (network error, cancellation) at ``now``."""
        with self._lock:
            self.in_flight -= 1
            self.refill.on_abort(seq)
            self._reached(seq, now)

    def _reached(self, seq: int, now: float) -> None:
        """Request ``seq`` reached the server by ``now``, if it ever did."""
        sent = self._sent_at.pop(seq, None)
        if sent is not None:
            for pacer in self.pacers:
                pacer.answered(sent, now)
            for pacer in self.refused.pacers:
                pacer.answered(sent, now)
            if not self.plan.known:
                self._recent.append((sent, now))

    def on_answer(
        self, seq: int, now: float, status: int, hints: Hints, sent_at: float | None = None
    ) -> Quota | None:
        """Learn from an answer; returns the binding quota when it fell under the host's
        ``low_remaining`` threshold with this answer (warn once per crossing)."""
        with self._lock:
            self.in_flight -= 1
            if self._track:
                self._reached(seq, now)
            self.refill.on_answer(seq, now)
            if sent_at is not None:
                self.aligned.round_trip(now - sent_at)
            if hints.zone:
                self.zone = hints.zone
            if self._serial:
                self._end_serial(hints, now)
            failed = status == 429 or status >= 500
            wait = hints.sharp_wait_s
            if failed and wait is not None and status in (429, 503):
                self.blocked_until = max(self.blocked_until, now + wait)
            if seq > self._failure_mark:
                if failed:
                    self.adaptive.failure(hinted=wait is not None or hints.binding is not None)
                    self._failure_mark = self.sent
                else:
                    self.adaptive.success()
            if self._hidden(failed, hints, now, sent_at):
                # Another limit than the answers describe: theirs was not wrong.
                return None
            if self.refill.probed(seq, failed):
                self._adopt(now)
            if failed and self._learned:
                # The window learned was wrong after all: back to what the answers say.
                self.pacers = ()
                self._learned = False
                self.refill.refused = True
            binding = hints.binding
            if binding is None:
                return None
            for pacer in self.pacers:
                if binding.limit in (None, pacer.amount):
                    pacer.observe(binding, now)
            return self._learn(binding, now, failed, seq, wait)

    def _end_serial(self, hints: Hints, now: float) -> None:
        """The first window ends at the first reported reset, if later than a second: an
        answer read after it ends the serial start."""
        binding = hints.binding
        if self.sent == 1 and binding is not None and binding.reset_in_s is not None:
            self._serial_until = max(self._serial_until, now + binding.reset_in_s)
        if now >= self._serial_until:
            self._serial = False

    def _hidden(self, failed: bool, hints: Hints, now: float, sent_at: float | None) -> bool:
        """Whether a refusal named a limit allowed answers never report (remembered; learned
        hosts only: a told policy has its own limits)."""
        if self.plan.known or not hints.quotas:
            return False
        if not failed:
            self.refused.allowed(hints)
            return False
        if sent_at is None:
            return False
        seen = [*self._recent, *((sent, math.inf) for sent in self._sent_at.values())]
        return self.refused.refused(hints, sent_at, now, seen)

    def _adopt(self, now: float) -> None:
        """Pace by the window learned (its size reported, its period probed) as if told: at
        most that many requests in any such span, from the requests seen so far. Units come
        back one by one in a moving window, which a reset cannot say."""
        amount, period = self.window_limit, self.period_s
        if amount is None or period is None or self.pacers:
            return
        pacer = WindowPacer(amount, period, self.plan.policy.margin_s)
        seen = [(sent, answered) for sent, answered in self._recent if answered > now - 2 * period]
        seen += [(sent, math.inf) for sent in self._sent_at.values()]
        for sent, answered in sorted(seen):
            pacer.record(sent)
            if answered < math.inf:
                pacer.answered(sent, answered)
        self.pacers = (pacer,)
        self._learned = True

    def _learn(
        self, binding: Quota, now: float, failed: bool, seq: int, hint_s: float | None
    ) -> Quota | None:
        reset_at = now + binding.reset_in_s if binding.reset_in_s is not None else None
        if binding.limit is not None:
            self.window_limit = binding.limit
        elif self.window_limit is None or binding.remaining >= self.window_limit:
            self.window_limit = binding.remaining + 1
        if reset_at is not None and reset_at <= now:
            # A report from a window that is already over says nothing about the next one.
            return None
        before = self.budget
        if before is not None and before.reset_at is not None and now < before.reset_at:
            # An earlier reset from a request sent after the report's is no late answer: a
            # moving window's reset comes closer once nothing is left (a unit back soon).
            earlier = reset_at is not None and reset_at <= before.reset_at - _SAME_WINDOW_S
            if earlier and seq < before.seq:
                return None  # a late answer from an earlier window
            same = reset_at is None or reset_at < before.reset_at + _SAME_WINDOW_S
            if same and binding.remaining >= before.remaining:
                return None  # counted before the report already held
        else:
            same = False
        self.budget = Budget(binding.remaining, reset_at, binding.name, seq)
        self.refill.rounded = binding.reset_rounding_s > 0
        # A spent quota holds the host until its reset, unless the refusal's own wait is shorter
        # than the reset's rounding explains (a burst's bucket written as the next whole
        # second, a unit back much sooner: Retry-After says when, as the retry does).
        if (
            failed
            and binding.remaining <= 0
            and reset_at is not None
            and (hint_s is None or reset_at - now - binding.reset_rounding_s > hint_s)
        ):
            self.blocked_until = max(self.blocked_until, reset_at)
        return self._low(binding, reset_at, same, before)

    def _low(
        self, binding: Quota, reset_at: float | None, same: bool, before: Budget | None
    ) -> Quota | None:
        """``binding`` when it fell under ``low_remaining`` of its limit, at most once a window
        (a window without a reset: once per crossing)."""
        limit = binding.limit if binding.limit is not None else self.window_limit
        threshold = self.plan.policy.low_remaining * (limit or 0)
        if binding.remaining >= threshold:
            return None
        if reset_at is None:
            crossed = not same or (before is not None and before.remaining >= threshold)
            return binding if crossed else None
        warned = self._warned_reset
        if warned is not None and abs(reset_at - warned) < _SAME_WINDOW_S:
            return None
        self._warned_reset = reset_at
        return binding

    def __repr__(self) -> str:
        return (
            f"<HostState {self.plan.name} in_flight={self.in_flight} "
            f"remaining~{self.estimated_remaining()} {self.adaptive!r}>"
        )


@dataclass(slots=True)
class Pacer:
    """Routes a URL to its host's state: URL-prefix keys first (longest wins), then
    ``host:port``, then ``host``; any other host gets ``default``."""

    hosts: Mapping[str, HostPolicy] = field(default_factory=dict)
    default: HostPolicy = field(default_factory=HostPolicy)
    backoff_base_s: float = 1.0
    shared_store: bool = False
    _prefixes: list[tuple[str, HostPolicy]] = field(init=False)
    _states: dict[str, HostState] = field(init=False)
    _by_host: dict[tuple[str, int | None], HostState] = field(init=False)
    _lock: threading.Lock = field(init=False)

    def __post_init__(self) -> None:
        for key, policy in self.hosts.items():
            if not isinstance(policy, HostPolicy):
                raise ClientConfigError(
                    f"hosts[{key!r}] must be a HostPolicy, got {type(policy).__name__}"
                )
        self._prefixes = sorted(
            ((k, p) for k, p in self.hosts.items() if "://" in k),
            key=lambda item: -len(item[0]),
        )
        self._states = {}
        self._by_host = {}
        self._lock = threading.Lock()

    def state_for(self, url: httpx.URL) -> HostState:
        """The state of the host (or prefix) ``url`` belongs to, created on first use."""
        if self._prefixes:
            text = str(url)
            for prefix, policy in self._prefixes:
                if text.startswith(prefix):
                    return self._state(prefix, policy)
        host = url.host
        port = url.port
        known = self._by_host.get((host, port))
        if known is not None:
            return known
        if port is not None and (found := self.hosts.get(f"{host}:{port}")) is not None:
            return self._state(f"{host}:{port}", found)
        name = host if port is None else f"{host}:{port}"
        state = self._state(name, self.hosts.get(host, self.default))
        # Most requests go to hosts seen before: found by (host, port) without formatting.
        self._by_host[(host, port)] = state
        return state

    def _state(self, name: str, policy: HostPolicy) -> HostState:
        state = self._states.get(name)
        if state is None:
            with self._lock:
                state = self._states.get(name)
                if state is None:
                    plan = HostPlan.build(name, policy)
                    state = self._states[name] = HostState(
                        plan, backoff_base_s=self.backoff_base_s, shared=self.shared_store
                    )
        return state

    def states(self) -> dict[str, HostState]:
        """Every host seen so far, by name."""
        return dict(self._states)
