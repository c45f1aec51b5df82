"""Rates as people write them: ``100/minute``, ``5/second``, ``60/60s``, ``2/2s``, ``1000/hour``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ratekeeper.errors import RateSyntaxError

__all__ = ["Rate", "parse_rate", "parse_rates", "seconds_per_unit"]

_UNIT_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}

_FORM = "'<count>/<period>' such as '100/minute', '5/second', '60/60s' or '10/2.5 hours'"
_RATE_RE = re.compile(
    r"^\s*(?P<amount>\d+)\s*(?:/|per)\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)
_UNIT_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


def seconds_per_unit(unit: str) -> float | None:
    """Seconds in a time unit as rates and durations write it (``s``, ``minute``, ``h``, ``days``
    ...), or ``None`` for an unknown unit."""
    return _UNIT_SECONDS.get(unit.lower())


@dataclass(frozen=True, slots=True)
class Rate:
    """``amount`` units per ``period_s`` seconds."""

    amount: int
    period_s: float

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 1:
            raise RateSyntaxError(f"rate amount must be a whole number >= 1, got {self.amount!r}")
        if not math.isfinite(self.period_s) or self.period_s <= 0:
            raise RateSyntaxError(f"rate period must be > 0 seconds, got {self.period_s!r}")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse one rate such as ``"100/minute"``; see :func:`parse_rate`."""
        return parse_rate(text)

    def __str__(self) -> str:
        unit = _UNIT_NAMES.get(self.period_s)
        if unit is not None:
            return f"{self.amount}/{unit}"
        return f"{self.amount}/{self.period_s:g}s"


def parse_rate(text: str) -> Rate:
    """Parse ``"<amount>/<period>"``; the period is a unit (``minute``) or a count and unit
    (``60s``, ``2 seconds``, ``1.5h``). Raises :class:`RateSyntaxError` quoting the text."""
    if not isinstance(text, str):
        raise RateSyntaxError(f"a rate must be a string of the form {_FORM}, got {text!r}")
    match = _RATE_RE.match(text)
    if match is None:
        raise RateSyntaxError(f"cannot read rate {text!r}: expected {_FORM}")
    unit = match["unit"].lower()
    unit_s = _UNIT_SECONDS.get(unit)
    if unit_s is None:
        known = "s, second(s), m, min, minute(s), h, hour(s), d, day(s)"
        raise RateSyntaxError(f"cannot read rate {text!r}: unknown unit {unit!r} (known: {known})")
    count = float(match["count"]) if match["count"] else 1.0
    amount = int(match["amount"])
    if amount < 1 or count <= 0:
        raise RateSyntaxError(f"cannot read rate {text!r}: amount and period must be > 0")
    return Rate(amount, count * unit_s)


def parse_rates(text: str) -> tuple[Rate, ...]:
    """Parse several rates separated by ``;``, ``,`` or ``+``: ``"100/minute; 1000/hour"``."""
    parts = [p for p in re.split(r"[;,+]", text) if p.strip()] if isinstance(text, str) else []
    if not parts:
        raise RateSyntaxError(f"no rate found in {text!r}: expected {_FORM}, separated by ';'")
    return tuple(parse_rate(p) for p in parts)
