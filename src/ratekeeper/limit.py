"""A limit (a rate counted by one algorithm) and a named set of limits checked together."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from ratekeeper.algorithms import STEPS, Algorithm, FlatCharger, State, Step, StepFn, charger
from ratekeeper.errors import LimitConfigError
from ratekeeper.rates import Rate, parse_rate, parse_rates

__all__ = ["Limit", "LimitSet"]

# (stored states of one set's limits, or None when fresh; now; cost) -> (each limit's step, the
# states to store, or None when a limit rejected): see ratekeeper.core.decide_entry.
EntryDecider: TypeAlias = Callable[
    [tuple[State | None, ...] | None, float, int],
    tuple[list[Step], tuple[State | None, ...] | None],
]

# The same on the states kept as one flat tuple of numbers (the memory store's layout: a tuple
# per limit costs 56 bytes more each), the new flat tuple or None.
FlatDecider: TypeAlias = Callable[
    [tuple[float, ...] | None, float, int],
    tuple[list[Step], tuple[float, ...] | None],
]

# How many numbers each algorithm's state holds: (start, count), (start, previous, current),
# (theoretical arrival time,).
STATE_WIDTHS = {
    Algorithm.FIXED_WINDOW: 2,
    Algorithm.FIRST_HIT_WINDOW: 2,
    Algorithm.SLIDING_WINDOW: 3,
    Algorithm.GCRA: 1,
}

_PERIOD_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """One rate counted by one algorithm; ``burst`` applies to GCRA only (default: the amount).

    ``name`` labels the limit in headers and usage answers (default: ``minute``, ``hour``,
    ``day`` or ``<period>s``).
    """

    rate: Rate
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    burst: int = 0
    name: str = ""
    # Derived once so the hot path reads plain slots.
    amount: int = field(init=False, repr=False, compare=False)
    period_s: float = field(init=False, repr=False, compare=False)
    interval_s: float = field(init=False, repr=False, compare=False)
    capacity_s: float = field(init=False, repr=False, compare=False)
    ttl_s: float = field(init=False, repr=False, compare=False)
    state_lifetime_s: float = field(init=False, repr=False, compare=False)
    step: StepFn = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, str):
            rate = parse_rate(rate)
            object.__setattr__(self, "rate", rate)
        if not isinstance(rate, Rate):
            raise LimitConfigError(f"Limit.rate must be a Rate or a rate string, got {rate!r}")
        algorithm = Algorithm.parse(self.algorithm)
        object.__setattr__(self, "algorithm", algorithm)
        burst = self.burst
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
            raise LimitConfigError(f"burst must be a whole number >= 1, got {burst!r}")
        if burst and algorithm is not Algorithm.GCRA:
            raise LimitConfigError(
                f"burst={burst} given for {rate} with algorithm {algorithm.value!r}: "
                "burst applies to the 'gcra' algorithm only"
            )
        burst = burst or rate.amount
        object.__setattr__(self, "burst", burst)
        if not self.name:
            object.__setattr__(
                self, "name", _PERIOD_NAMES.get(rate.period_s) or f"{rate.period_s:g}s"
            )
        interval = rate.period_s / rate.amount
        object.__setattr__(self, "amount", rate.amount)
        object.__setattr__(self, "period_s", rate.period_s)
        object.__setattr__(self, "interval_s", interval)
        object.__setattr__(self, "capacity_s", burst * interval)
        # How long a state stays meaningful after its last write (then it equals a fresh key).
        ttl = {
            Algorithm.SLIDING_WINDOW: 2 * rate.period_s,
            Algorithm.GCRA: burst * interval,
        }.get(algorithm, rate.period_s)
        object.__setattr__(self, "ttl_s", ttl)
        # A state equals a fresh key's once the clock passes ``state[0] + state_lifetime_s``
        # (window start + P, or + 2P for the sliding window; GCRA's state is its TAT).
        lifetime = {Algorithm.SLIDING_WINDOW: 2 * rate.period_s, Algorithm.GCRA: 0.0}.get(
            algorithm, rate.period_s
        )
        object.__setattr__(self, "state_lifetime_s", lifetime)
        object.__setattr__(self, "step", STEPS[algorithm])

    @classmethod
    def parse(
        cls, text: str, algorithm: Algorithm | str = Algorithm.FIXED_WINDOW, *, burst: int = 0
    ) -> Limit:
        """Build a limit from a rate string such as ``"100/minute"``."""
        return cls(rate=parse_rate(text), algorithm=Algorithm.parse(algorithm), burst=burst)

    @property
    def spec(self) -> str:
        """A stable text form, e.g. ``100/60s:fixed_window`` (``:b5`` added for GCRA)."""
        text = f"{self.amount}/{self.period_s:g}s:{self.algorithm.value}"
        return f"{text}:b{self.burst}" if self.algorithm is Algorithm.GCRA else text


@dataclass(frozen=True, slots=True)
class LimitSet:
    """Limits checked together for one kind of key, under a name (``"api"``, ``"global"``).

    ``id`` keys the set's stored state: the set's name with each limit's name and algorithm,
    not its numbers. A limit lowered from 100/minute to 50/minute keeps its counts (a key that
    used 60 is refused at once), and a day's usage survives a change of the minute limit. A
    state is only ever read by the algorithm that wrote it (the algorithm is part of the id);
    what a changed window length does to a state is described in ``docs/operating.md``.
    ``spec_id`` also covers the numbers, for caches of what a set compiles to.
    """

    name: str
    limits: tuple[Limit, ...]
    id: str = field(init=False, repr=False, compare=False)
    spec_id: str = field(init=False, repr=False, compare=False)
    ttl_s: float = field(init=False, repr=False, compare=False)
    steps: tuple[tuple[StepFn, Limit], ...] = field(init=False, repr=False, compare=False)
    decide_entry: EntryDecider = field(init=False, repr=False, compare=False)
    decide_flat: FlatDecider = field(init=False, repr=False, compare=False)
    charge_flat: FlatCharger = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        name: str,
        limits: str | Limit | Iterable[Limit | str],
        *,
        algorithm: Algorithm | str = Algorithm.FIXED_WINDOW,
    ) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in ":{}\n"):
            raise LimitConfigError(
                f"a limit set needs a non-empty name without ':{{}}', got {name!r}"
            )
        algo = Algorithm.parse(algorithm)
        if isinstance(limits, str):
            items: tuple[Limit, ...] = tuple(
                Limit(rate=r, algorithm=algo) for r in parse_rates(limits)
            )
        elif isinstance(limits, Limit):
            items = (limits,)
        else:
            items = tuple(
                lim if isinstance(lim, Limit) else Limit(rate=parse_rate(lim), algorithm=algo)
                for lim in limits
            )
        if not items:
            raise LimitConfigError(f"limit set {name!r} has no limits")
        names = [lim.name for lim in items]
        if len(set(names)) != len(names):
            raise LimitConfigError(
                f"limit set {name!r} has two limits named alike ({', '.join(names)}): "
                "give them distinct names"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "limits", items)
        shape = "|".join(f"{lim.name}={lim.algorithm.value}" for lim in items)
        digest = hashlib.blake2b(shape.encode(), digest_size=4).hexdigest()
        object.__setattr__(self, "id", f"{name}:{digest}")
        numbers = hashlib.blake2b("|".join(lim.spec for lim in items).encode(), digest_size=4)
        object.__setattr__(self, "spec_id", f"{name}:{digest}:{numbers.hexdigest()}")
        object.__setattr__(self, "ttl_s", max(lim.ttl_s for lim in items))
        object.__setattr__(self, "steps", tuple((lim.step, lim) for lim in items))
        object.__setattr__(self, "decide_entry", _entry_decider(self.steps))
        object.__setattr__(self, "decide_flat", _flat_decider(self.steps))
        object.__setattr__(self, "charge_flat", charger(items))

    def __len__(self) -> int:
        return len(self.limits)

    def __reduce__(self) -> tuple[type[LimitSet], tuple[str, tuple[Limit, ...]]]:
        # Rebuilt from its name and limits: the derived fields hold a closure.
        return (LimitSet, (self.name, self.limits))


def _entry_decider(steps: tuple[tuple[StepFn, Limit], ...]) -> EntryDecider:
    """The decision of one set's limits on a stored entry, unrolled for sets of one to three
    limits (most sets): it runs once per decision, where a loop costs as much as a step."""
    if len(steps) == 1:
        ((step0, limit0),) = steps

        def one(
            entry: tuple[State | None, ...] | None, now: float, cost: int
        ) -> tuple[list[Step], tuple[State | None, ...] | None]:
            a = step0(None if entry is None else entry[0], now, limit0, cost)
            return [a], ((a[1],) if a[0] else None)

        return one
    if len(steps) == 3:
        (step0, limit0), (step1, limit1), (step2, limit2) = steps

        def three(
            entry: tuple[State | None, ...] | None, now: float, cost: int
        ) -> tuple[list[Step], tuple[State | None, ...] | None]:
            if entry is None:
                a = step0(None, now, limit0, cost)
                b = step1(None, now, limit1, cost)
                c = step2(None, now, limit2, cost)
            else:
                a = step0(entry[0], now, limit0, cost)
                b = step1(entry[1], now, limit1, cost)
                c = step2(entry[2], now, limit2, cost)
            if a[0] and b[0] and c[0]:
                return [a, b, c], (a[1], b[1], c[1])
            return [a, b, c], None

        return three

    def any_size(
        entry: tuple[State | None, ...] | None, now: float, cost: int
    ) -> tuple[list[Step], tuple[State | None, ...] | None]:
        if entry is None:
            results = [step(None, now, limit, cost) for step, limit in steps]
        else:
            results = [
                step(state, now, limit, cost)
                for (step, limit), state in zip(steps, entry, strict=True)
            ]
        for result in results:
            if not result[0]:
                return results, None
        return results, tuple([result[1] for result in results])

    return any_size


def _flat_decider(steps: tuple[tuple[StepFn, Limit], ...]) -> FlatDecider:
    """:func:`_entry_decider` on a flat tuple of the states (see :data:`FlatDecider`)."""
    spans = []
    at = 0
    for _, limit in steps:
        width = STATE_WIDTHS[limit.algorithm]
        spans.append((at, at + width))
        at += width
    if len(steps) == 1:
        ((step0, limit0),) = steps

        # One limit: the flat tuple is its state.
        def one(
            flat: tuple[float, ...] | None, now: float, cost: int
        ) -> tuple[list[Step], tuple[float, ...] | None]:
            a = step0(flat, now, limit0, cost)
            return [a], (a[1] if a[0] else None)

        return one
    if len(steps) == 3:
        (step0, limit0), (step1, limit1), (step2, limit2) = steps
        (a0, b0), (a1, b1), (a2, b2) = spans

        def three(
            flat: tuple[float, ...] | None, now: float, cost: int
        ) -> tuple[list[Step], tuple[float, ...] | None]:
            if flat is None:
                a = step0(None, now, limit0, cost)
                b = step1(None, now, limit1, cost)
                c = step2(None, now, limit2, cost)
            else:
                a = step0(flat[a0:b0], now, limit0, cost)
                b = step1(flat[a1:b1], now, limit1, cost)
                c = step2(flat[a2:b2], now, limit2, cost)
            if a[0] and b[0] and c[0]:
                return [a, b, c], a[1] + b[1] + c[1]  # type: ignore[operator]
            return [a, b, c], None

        return three
    decide = _entry_decider(steps)

    def any_size(
        flat: tuple[float, ...] | None, now: float, cost: int
    ) -> tuple[list[Step], tuple[float, ...] | None]:
        entry = None if flat is None else tuple([flat[a:b] for a, b in spans])
        results, new_entry = decide(entry, now, cost)
        if new_entry is None:
            return results, None
        return results, tuple(itertools.chain.from_iterable(new_entry))  # type: ignore[arg-type]

    return any_size
