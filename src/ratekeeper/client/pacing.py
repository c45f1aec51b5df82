"""Pacing per host: known limits, a minimum interval, what the server said, and Picard's
adaptive slowdown, as plain state with no I/O.

A :class:`HostState` answers "how long must the next request to this host wait?" from what it
has seen; the transports sleep, ask the limiter (for a known policy) and send. Everything takes
the clock reading as an argument.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ratekeeper.algorithms import Algorithm
from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.retry import ClientConfigError
from ratekeeper.decision import Decision
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.policy import Policy, load_policy, preset_path
from ratekeeper.rates import Rate, parse_rates
from ratekeeper.routes import RouteTable

__all__ = [
    "Adaptive",
    "Charge",
    "HostPlan",
    "HostPolicy",
    "HostState",
    "Pacer",
    "client_limit_set",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    """How to treat one host (or URL prefix).

    ``limits`` is the server's policy when known (``"10/second"``, ``"100/minute; 1000/hour"``
    or a :class:`LimitSet`), counted the way the server counts (``algorithm``). Without it the
    client learns from the answers, starting with one request in flight. ``min_interval_s`` is
    Picard's per-host minimum delay between requests. ``margin_s`` is the slack kept for network
    latency so that the client's windows never straddle the server's. ``spread`` spaces a learned
    budget evenly until its reset instead of sending it at once. ``key`` names the budget in a
    shared store (default: the host), so several processes can share it.

    ``server_policy`` is the provider's published policy file instead of ``limits`` (see
    :meth:`from_policy`): each request is charged the limits its route has there.
    """

    limits: LimitSet | str | None = None
    algorithm: Algorithm | str = Algorithm.FIXED_WINDOW
    burst: int = 0
    min_interval_s: float = 0.0
    max_in_flight: int = 8
    margin_s: float = 0.025
    spread: bool = False
    adaptive: bool = True
    max_delay_s: float = 32.0
    low_remaining: int = 10
    key: str | None = None
    server_policy: Policy | None = None
    tier: str | None = None

    @classmethod
    def from_policy(
        cls, source: Policy | str | Path, *, tier: str | None = None, **options: Any
    ) -> HostPolicy:
        """Pace by the limits a provider publishes in ratekeeper's TOML policy format.

        ``source`` is a policy file, a preset name (``"musique"``, ``"radio"``, ...) or a loaded
        :class:`~ratekeeper.policy.Policy`; ``tier`` picks a ``[plans.<tier>]`` of higher
        limits. Each request is charged what the server charges it: the ``apply`` limits plus
        its route's rule (``default`` when none matches), at the rule's cost; exempt routes,
        shadow limits and in-flight caps cost nothing. Every scope counts this client's own
        requests, except ``global``, which the client treats as its own upper bound.
        ``options`` are the other :class:`HostPolicy` fields.
        """
        if isinstance(source, Policy):
            policy = source
        elif isinstance(source, Path) or source.endswith(".toml") or "/" in source:
            policy = load_policy(source)
        else:
            policy = load_policy(preset_path(source))
        return cls(server_policy=policy, tier=tier, **options)

    def __post_init__(self) -> None:
        for name in ("min_interval_s", "margin_s", "max_delay_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ClientConfigError(f"HostPolicy.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise ClientConfigError(
                f"HostPolicy.max_in_flight must be a whole number >= 1, got {self.max_in_flight!r}"
            )
        if self.server_policy is not None:
            if self.limits is not None:
                raise ClientConfigError("HostPolicy: give either limits or server_policy, not both")
            plans = self.server_policy.tiers.plans
            if self.tier is not None and self.tier not in plans:
                known = ", ".join(sorted(plans)) or "none"
                raise ClientConfigError(
                    f"HostPolicy.tier {self.tier!r} is not a plan of "
                    f"{self.server_policy.source} (plans: {known})"
                )
        elif self.tier is not None:
            raise ClientConfigError("HostPolicy.tier needs a server_policy (see from_policy)")
        # Read the limits now, so a bad rate fails where it is configured, not at first use.
        client_limit_set(self)


def client_limit_set(policy: HostPolicy) -> tuple[LimitSet, float] | None:
    """The limit set the client enforces on itself for ``policy.limits``, and the clock shift
    (``None`` when the limits are not given as such)."""
    limits = policy.limits
    if limits is None:
        return None
    if isinstance(limits, str):
        algorithm = Algorithm.parse(policy.algorithm)
        parsed: Iterable[Limit] = tuple(
            Limit(rate=rate, algorithm=algorithm, burst=policy.burst)
            for rate in parse_rates(limits)
        )
    else:
        parsed = limits.limits
    return _client_set("client", parsed, policy.margin_s)


def _client_set(name: str, limits: Iterable[Limit], margin: float) -> tuple[LimitSet, float]:
    """The client's own copy of a server's limits, and the clock shift they need.

    Windows aligned to the clock are decided ``margin_s`` ahead of time, and a request that this
    puts in the next window goes early only if the current window has room for it (see
    :meth:`HostState.early_wait_s`): a request sent within ``margin_s`` of a boundary could
    arrive on either side of it. Windows that start at a first hit, sliding windows and GCRA are
    stretched by ``margin_s``: the server's window starts when the request arrives, a little
    after the client's.
    """
    shift = 0.0
    stretched = []
    for limit in limits:
        if limit.algorithm is Algorithm.FIXED_WINDOW:
            shift = margin
            stretched.append(limit)
        else:
            rate = Rate(limit.amount, limit.period_s + margin)
            burst = limit.burst if limit.algorithm is Algorithm.GCRA else 0
            stretched.append(
                Limit(rate=rate, algorithm=limit.algorithm, burst=burst, name=limit.name)
            )
    return LimitSet(name, stretched), shift


@dataclass(frozen=True, slots=True, eq=False)
class Charge:
    """What one request costs under a known policy: ``cost`` units of every
    ``(limit set, key)`` item at once, and where its clock-aligned windows are: ``(index in
    the decision's states, period, the limit's identity)``."""

    items: tuple[tuple[LimitSet, str], ...]
    cost: int
    aligned: tuple[tuple[int, float, tuple[str, int]], ...]

    @classmethod
    def of(cls, items: Iterable[tuple[LimitSet, str]], cost: int = 1) -> Charge:
        """Charge ``items`` ``cost`` units each."""
        items = tuple(items)
        aligned = []
        flat = 0
        for limit_set, _ in items:
            for index, limit in enumerate(limit_set.limits):
                if limit.algorithm is Algorithm.FIXED_WINDOW:
                    aligned.append((flat, limit.period_s, (limit_set.id, index)))
                flat += 1
        return cls(items, cost, tuple(aligned))


def _policy_routes(
    policy: Policy, tier: str | None, key: str, margin: float
) -> tuple[RouteTable[Charge | None], float]:
    """The charge of each route of a server's policy, as :meth:`HostPolicy.from_policy` says."""
    overrides = policy.tiers.plans.get(tier, {}) if tier is not None else {}
    shift = 0.0
    client_sets: dict[str, LimitSet] = {}
    for name, spec in policy.limits.items():
        limit_set = overrides.get(name, spec.limit_set)
        if limit_set is None or spec.shadow or policy.shadow:
            continue
        client_sets[name], set_shift = _client_set(name, limit_set.limits, margin)
        shift = max(shift, set_shift)

    def charge(names: Iterable[str], own: Iterable[str], cost: int, shadow: bool) -> Charge | None:
        skipped = set(own) if shadow else set()
        chosen = [n for n in dict.fromkeys([*policy.apply, *names]) if n not in skipped]
        items = [(client_sets[n], key) for n in chosen if n in client_sets]
        return Charge.of(items, cost) if items else None

    entries = [
        (
            rule.routes,
            rule.methods,
            None if rule.exempt else charge(rule.limits, rule.limits, rule.cost, rule.shadow),
        )
        for rule in policy.rules
    ]
    return RouteTable(entries, charge(policy.default, (), 1, False)), shift


class Adaptive:
    """Picard's controller: repeated failures double the delay (up to a ceiling) and cut the
    in-flight window to 1; successes halve the delay back to the floor and grow the window
    (slow start, then additive increase)."""

    __slots__ = (
        "base_s",
        "ceiling_s",
        "delay_s",
        "exp",
        "floor_s",
        "max_window",
        "streak",
        "threshold",
        "window",
    )

    def __init__(
        self, *, floor_s: float, ceiling_s: float, base_s: float, window: float, max_window: int
    ) -> None:
        self.floor_s = floor_s
        self.ceiling_s = max(ceiling_s, floor_s)
        self.base_s = base_s
        self.delay_s = floor_s
        self.exp = 0
        self.streak = 0
        self.window = window
        self.threshold = float(max_window)
        self.max_window = max_window

    def failure(self, *, hinted: bool) -> None:
        """A 429, 503 or other 5xx. One that says when to come back is obeyed by waiting, so
        only a repeated or unexplained one slows the host down."""
        self.streak += 1
        self.threshold = max(self.window / 2.0, 1.0)
        self.window = 1.0
        if not hinted or self.streak >= 2:
            self.exp = min(self.exp + 1, 6)
            self.delay_s = min(
                max(self.base_s * 2.0 ** (self.exp - 1), self.floor_s), self.ceiling_s
            )

    def success(self) -> None:
        """An answer that is not a failure."""
        self.streak = 0
        self.exp = 0
        half = self.delay_s / 2.0
        self.delay_s = half if half > max(self.floor_s, 0.001) else self.floor_s
        if self.window < self.threshold:
            self.window += 1.0
        else:
            self.window += 1.0 / self.window
        self.window = min(self.window, float(self.max_window))

    def __repr__(self) -> str:
        return f"<Adaptive delay={self.delay_s:.3f}s window={self.window:.2f}>"


@dataclass(slots=True)
class _Budget:
    """The binding quota of the server's current window: the lowest remaining reported in it
    (answers to concurrent requests arrive in any order; the lowest is the freshest count)."""

    remaining: int
    reset_at: float | None
    name: str


# Window ends computed from different clock readings agree to within float error.
_SAME_END_S = 1e-6

# Reports whose resets differ by less than this describe the same window: whole-second deltas
# ("Reset: 3") read at different moments of one window differ by up to a second.
_SAME_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class HostPlan:
    """A host's fixed configuration: its policy, whether its limits are known, what each
    request is charged then (one :class:`Charge`, or one per route of a server's policy file),
    the clock shift for those limits, and the key its budget is stored under."""

    name: str
    policy: HostPolicy
    known: bool
    clock_shift_s: float
    key: str
    charge: Charge | None = None
    routes: RouteTable[Charge | None] | None = None

    def charge_for(self, method: str, path: str) -> Charge | None:
        """What a request costs (``None``: nothing, its route is exempt or the policy unknown)."""
        routes = self.routes
        return self.charge if routes is None else routes.match(method, path)

    @classmethod
    def build(cls, name: str, policy: HostPolicy) -> HostPlan:
        """The plan of host ``name`` under ``policy``."""
        key = policy.key or urlsplit(name).netloc or name
        if policy.server_policy is not None:
            routes, shift = _policy_routes(policy.server_policy, policy.tier, key, policy.margin_s)
            return cls(name, policy, True, shift, key, routes=routes)
        known = client_limit_set(policy)
        if known is None:
            return cls(name, policy, False, 0.0, key)
        limit_set, shift = known
        return cls(name, policy, True, shift, key, charge=Charge.of([(limit_set, key)]))


class HostState:
    """What the client knows about one host; thread-safe, updated on each send and answer.

    A learned budget is reserved across concurrent requests: every request in flight may still
    be uncounted by the server, so the estimate is the lowest remaining reported in the window
    less the requests in flight, which never exceeds what the server has left.
    """

    def __init__(self, plan: HostPlan, *, backoff_base_s: float = 1.0) -> None:
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
        self.budget: _Budget | None = None
        # A window's size: X-RateLimit-Limit, else one more than the most ever reported left.
        self.window_limit: int | None = None
        # Requests sent up to this count were in flight when the last failure was counted:
        # their answers echo that failure, they are not news (TCP's one cut per round trip).
        self._failure_mark = 0
        self.zone: str | None = None
        # Per aligned limit: (end of the window, its room when its last margin_s began).
        self._room: dict[tuple[str, int], tuple[float, int]] = {}

    def can_start(self) -> bool:
        """Whether another request may be in flight now: the congestion window has room, and
        a learned budget is not spent by the requests in flight. When it is, their answers
        come first: one counted by the server before the lowest report frees a request, and
        a new window being probed says its size."""
        in_flight = self.in_flight
        if in_flight >= max(int(self.adaptive.window), 1):
            return False
        budget = self.budget
        return in_flight == 0 or budget is None or self.plan.known or budget.remaining > in_flight

    def estimated_remaining(self) -> int | None:
        """What the server has left at least: the lowest remaining it reported in this window,
        less the requests in flight."""
        budget = self.budget
        if budget is None:
            return None
        return budget.remaining - self.in_flight

    def wait_s(self, now: float) -> float:
        """Seconds until the next request may go, from everything but a known policy."""
        with self._lock:
            delay = (
                self.adaptive.delay_s
                if self.plan.policy.adaptive
                else self.plan.policy.min_interval_s
            )
            wait = max(self.last_send + delay - now, self.blocked_until - now, 0.0)
            budget = self.budget
            # A known policy paces by itself: servers often report resets late (slowapi and
            # Flask-Limiter add a second), and obeying them would halve short windows.
            if budget is None or budget.reset_at is None or self.plan.known:
                return wait
            if now >= budget.reset_at:
                # The window the report described is over: a new one holds a window's size,
                # or, when that is unknown, one request probes it.
                limit = self.window_limit
                self.budget = _Budget(limit if limit is not None else 1, None, budget.name)
                return wait
            remaining = budget.remaining - self.in_flight
            # No margin on the reset: a request sent at it arrives after it.
            if remaining <= 0:
                return max(wait, budget.reset_at - now)
            if self.plan.policy.spread:
                return max(wait, self.last_send + (budget.reset_at - now) / (remaining + 1) - now)
            return wait

    def needs_room(self, charge: Charge, now: float) -> bool:
        """Whether ``now`` is within ``margin_s`` of an aligned window's end whose room is not
        yet known: the flow then peeks at the window before charging the next one."""
        shift = self.plan.clock_shift_s
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
        shift = self.plan.clock_shift_s
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
        to the next one: wherever the server counts it, it stays within the limit.
        """
        shift = self.plan.clock_shift_s
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
            if known is None or abs(known[0] - start) > _SAME_END_S or early > known[1]:
                wait = max(wait, start - now)
        return wait

    def on_send(self, now: float) -> int:
        """Record a request leaving; returns its sequence number for :meth:`on_answer`."""
        with self._lock:
            self.last_send = now
            self.in_flight += 1
            self.sent += 1
            return self.sent

    def on_abort(self) -> None:
        """A sent request ended without an answer (network error, cancellation)."""
        with self._lock:
            self.in_flight -= 1

    def on_answer(self, seq: int, now: float, status: int, hints: Hints) -> Quota | None:
        """Learn from an answer; returns the binding quota when it fell under the host's
        ``low_remaining`` threshold with this answer (warn once per crossing)."""
        with self._lock:
            self.in_flight -= 1
            if hints.zone:
                self.zone = hints.zone
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
            binding = hints.binding
            if binding is None:
                return None
            return self._learn(binding, now, failed)

    def _learn(self, binding: Quota, now: float, failed: bool) -> Quota | None:
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
            if reset_at is not None and reset_at <= before.reset_at - _SAME_WINDOW_S:
                return None  # a late answer from an earlier window
            same = reset_at is None or reset_at < before.reset_at + _SAME_WINDOW_S
            if same and binding.remaining >= before.remaining:
                return None  # counted before the report already held
        else:
            same = False
        self.budget = _Budget(binding.remaining, reset_at, binding.name)
        threshold = self.plan.policy.low_remaining
        crossed = binding.remaining < threshold and (
            not same or (before is not None and before.remaining >= threshold)
        )
        if failed and binding.remaining <= 0 and reset_at is not None:
            self.blocked_until = max(self.blocked_until, reset_at)
        return binding if crossed else None

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
    _prefixes: list[tuple[str, HostPolicy]] = field(init=False)
    _states: dict[str, HostState] = field(init=False)
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
        self._lock = threading.Lock()

    def state_for(self, url: httpx.URL) -> HostState:
        """The state of the host (or prefix) ``url`` belongs to, created on first use."""
        text = str(url)
        for prefix, policy in self._prefixes:
            if text.startswith(prefix):
                return self._state(prefix, policy)
        host = url.host
        port = url.port
        if port is not None and (found := self.hosts.get(f"{host}:{port}")) is not None:
            return self._state(f"{host}:{port}", found)
        name = host if port is None else f"{host}:{port}"
        return self._state(name, self.hosts.get(host, self.default))

    def _state(self, name: str, policy: HostPolicy) -> HostState:
        state = self._states.get(name)
        if state is None:
            with self._lock:
                state = self._states.get(name)
                if state is None:
                    plan = HostPlan.build(name, policy)
                    state = self._states[name] = HostState(plan, backoff_base_s=self.backoff_base_s)
        return state

    def states(self) -> dict[str, HostState]:
        """Every host seen so far, by name."""
        return dict(self._states)
