"""What a host is paced by: its :class:`HostPolicy` and the :class:`HostPlan` compiled from it
(the client's own copy of the server's limits, and what each request is charged).

What the client learns from the answers lives in :mod:`ratekeeper.client.state`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ratekeeper.algorithms import Algorithm
from ratekeeper.errors import ClientConfigError
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.policy import Policy, load_policy, preset_path
from ratekeeper.rates import Rate, parse_rates
from ratekeeper.routes import RouteTable

__all__ = ["Charge", "HostPlan", "HostPolicy", "client_limit_set", "told_windows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    """How to treat one host (or URL prefix).

    ``limits`` is the server's policy when known (``"10/second"``, ``"100/minute; 1000/hour"``
    or a :class:`LimitSet`). Told how the server counts (``algorithm``, or a :class:`LimitSet`),
    the client counts the same way, in ``store``. Not told, it keeps at most N requests in any
    span of W, which no server refuses, and switches to clock-aligned windows once the answers'
    resets show the server aligns them (see :mod:`ratekeeper.client.windows`). Without
    ``limits`` the client learns from the answers, starting with one request in flight.
    ``min_interval_s`` is Picard's per-host minimum delay between requests. ``margin_s`` is the
    slack kept for network latency so that the client's windows never straddle the server's.
    ``spread`` spaces a learned budget evenly until its reset instead of sending it at once.
    ``key`` names the budget in a shared store (default: the host), so several processes can
    share it (with ``algorithm`` told: the moving-window count of an untold one is kept per
    process).
    ``low_remaining`` is the fraction of a reported limit under which the transport warns (at
    most once per window; 0 never). ``user_agent`` is sent as ``User-Agent`` on requests that
    carry only their library's default; a host whose policy requires one is warned about once
    when none is set.

    ``server_policy`` is the provider's published policy file instead of ``limits`` (see
    :meth:`from_policy`): each request is charged the limits its route has there.
    """

    limits: LimitSet | str | None = None
    algorithm: Algorithm | str | None = None
    burst: int = 0
    min_interval_s: float = 0.0
    max_in_flight: int = 8
    margin_s: float = 0.025
    spread: bool = False
    adaptive: bool = True
    max_delay_s: float = 32.0
    low_remaining: float = 0.1
    user_agent: str | None = None
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
        low = self.low_remaining
        if not isinstance(low, int | float) or not 0 <= low < 1:
            raise ClientConfigError(
                f"HostPolicy.low_remaining is a fraction of the limit in [0, 1), got {low!r}"
            )
        agent = self.user_agent
        if agent is not None and (not agent.strip() or any(c in agent for c in "\r\n\0")):
            raise ClientConfigError(
                "HostPolicy.user_agent must be a non-empty header value without line breaks"
            )
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
        told_windows(self)


def told_windows(policy: HostPolicy) -> tuple[tuple[int, float, bool], ...]:
    """``(amount, period, learn)`` of each window of ``policy.limits`` paced by arrivals: those
    whose counting is not told (``learn``: the server may align them), and windows told to
    start at a first hit (a client-side window would start a network delay too early)."""
    limits = policy.limits
    if limits is None:
        return ()
    if isinstance(limits, str) and policy.algorithm is None:
        return tuple((rate.amount, rate.period_s, True) for rate in parse_rates(limits))
    known = client_limit_set(policy)
    assert known is not None
    return tuple(
        (limit.amount, limit.period_s - policy.margin_s, False)
        for limit in known[0].limits
        if limit.algorithm is Algorithm.FIRST_HIT_WINDOW
    )


def client_limit_set(policy: HostPolicy) -> tuple[LimitSet, float] | None:
    """The limit set the client enforces on itself for ``policy.limits``, and the clock shift
    (``None`` when the limits are not given with the way they are counted)."""
    limits = policy.limits
    if limits is None:
        return None
    if isinstance(limits, str):
        if policy.algorithm is None:
            return None
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
    :meth:`~ratekeeper.client.aligned.AlignedRoom.early_wait_s`): a request sent within
    ``margin_s`` of a boundary could arrive on either side of it. Windows that start at a first
    hit, sliding windows and GCRA are stretched by ``margin_s``: the server's window starts
    when the request arrives, a little after the client's.
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
    ``(limit set, key)`` item at once, where its clock-aligned windows are: ``(index in
    the decision's states, period, the limit's identity)``, which of the plan's ``windows``
    paced by answers count it (indices; a plan without routes: all of them), and whether
    every limit is a window (fixed or first-hit: a unit charged holds until the window ends,
    where a bucket or a sliding window lets it fade)."""

    items: tuple[tuple[LimitSet, str], ...]
    cost: int
    aligned: tuple[tuple[int, float, tuple[str, int]], ...]
    windows: tuple[int, ...] = ()
    windowed: bool = True

    @classmethod
    def of(
        cls, items: Iterable[tuple[LimitSet, str]], cost: int = 1, windows: Iterable[int] = ()
    ) -> Charge:
        """Charge ``items`` ``cost`` units each (and ``cost`` units of ``windows``)."""
        items = tuple(items)
        aligned = []
        flat = 0
        windowed = True
        for limit_set, _ in items:
            for index, limit in enumerate(limit_set.limits):
                if limit.algorithm is Algorithm.FIXED_WINDOW:
                    aligned.append((flat, limit.period_s, (limit_set.id, index)))
                windowed &= limit.algorithm in _WINDOWS
                flat += 1
        return cls(items, cost, tuple(aligned), tuple(windows), windowed)


_WINDOWS = frozenset({Algorithm.FIXED_WINDOW, Algorithm.FIRST_HIT_WINDOW})


def _policy_routes(
    policy: Policy, tier: str | None, key: str, margin: float
) -> tuple[RouteTable[Charge | None], float, tuple[tuple[int, float, bool], ...]]:
    """The charge of each route of a server's policy, as :meth:`HostPolicy.from_policy` says,
    the clock shift, and the windows paced by answers (those told to start at a first hit,
    as :func:`told_windows` says; each route's charge names those it is counted in)."""
    overrides = policy.tiers.plans.get(tier, {}) if tier is not None else {}
    shift = 0.0
    client_sets: dict[str, LimitSet] = {}
    windows: list[tuple[int, float, bool]] = []
    paced: dict[str, list[int]] = {}
    for name, spec in policy.limits.items():
        limit_set = overrides.get(name, spec.limit_set)
        if limit_set is None or spec.shadow or policy.shadow:
            continue
        client_sets[name], set_shift = _client_set(name, limit_set.limits, margin)
        shift = max(shift, set_shift)
        for limit in limit_set.limits:
            if limit.algorithm is Algorithm.FIRST_HIT_WINDOW:
                paced.setdefault(name, []).append(len(windows))
                windows.append((limit.amount, limit.period_s, False))

    def charge(names: Iterable[str], own: Iterable[str], cost: int, shadow: bool) -> Charge | None:
        skipped = set(own) if shadow else set()
        chosen = [n for n in dict.fromkeys([*policy.apply, *names]) if n not in skipped]
        items = [(client_sets[n], key) for n in chosen if n in client_sets]
        counted = [index for n in chosen for index in paced.get(n, ())]
        return Charge.of(items, cost, counted) if items else None

    entries = [
        (
            rule.routes,
            rule.methods,
            None if rule.exempt else charge(rule.limits, rule.limits, rule.cost, rule.shadow),
        )
        for rule in policy.rules
    ]
    return RouteTable(entries, charge(policy.default, (), 1, False)), shift, tuple(windows)


@dataclass(frozen=True, slots=True)
class HostPlan:
    """A host's fixed configuration: its policy, whether its limits are known, what each
    request is charged then (one :class:`Charge`, or one per route of a server's policy file),
    the clock shift for those limits, the key its budget is stored under, and the windows
    told without their way of counting (paced by :class:`~ratekeeper.client.windows.WindowPacer`).
    """

    name: str
    policy: HostPolicy
    known: bool
    clock_shift_s: float
    key: str
    charge: Charge | None = None
    routes: RouteTable[Charge | None] | None = None
    windows: tuple[tuple[int, float, bool], ...] = ()

    def paced_by(self, charge: Charge | None) -> tuple[int, ...] | None:
        """Which ``windows`` count a request of ``charge`` (``None``: all of them)."""
        if self.routes is None:
            return None
        return charge.windows if charge is not None else ()

    def charge_for(self, method: str, path: str) -> Charge | None:
        """What a request costs (``None``: nothing, its route is exempt or the policy unknown)."""
        routes = self.routes
        return self.charge if routes is None else routes.match(method, path)

    @classmethod
    def build(cls, name: str, policy: HostPolicy) -> HostPlan:
        """The plan of host ``name`` under ``policy``."""
        key = policy.key or urlsplit(name).netloc or name
        if policy.server_policy is not None:
            routes, shift, windows = _policy_routes(
                policy.server_policy, policy.tier, key, policy.margin_s
            )
            return cls(name, policy, True, shift, key, routes=routes, windows=windows)
        windows = told_windows(policy)
        known = client_limit_set(policy)
        if known is None:
            return cls(name, policy, bool(windows), 0.0, key, windows=windows)
        limit_set, shift = known
        charge = Charge.of([(limit_set, key)])
        return cls(name, policy, True, shift, key, charge=charge, windows=windows)
