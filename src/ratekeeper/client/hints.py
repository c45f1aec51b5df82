"""Reading what a server says about its limits: headers and bodies -> :class:`Hints`.

Pure functions of the text and a clock reading. Anything that cannot be read (negative, not a
number, absurdly large, a malformed date) is ignored rather than raised: a client must survive
whatever a server sends. Dates in the past mean "now" (a wait of 0).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "NO_HINTS",
    "Hints",
    "Quota",
    "hint_headers",
    "parse_body_hint",
    "parse_http_date",
    "parse_ietf_policy",
    "parse_ietf_ratelimit",
    "parse_reset",
    "parse_retry_after",
    "read_hints",
]

# Past this a hint is nonsense, not a plan: ignored, like a non-numeric one.
MAX_HINT_S = 7 * 86400.0
# An X-RateLimit-Reset below this is a delta in seconds, above it an epoch (a week of seconds is
# far below any epoch this code will meet, and far above any sane delta).
_EPOCH_FLOOR = 100_000_000.0
# Epochs in milliseconds (some APIs) are above this.
_EPOCH_MS_FLOOR = 100_000_000_000.0
# Bodies larger than this are not searched for hints.
_MAX_BODY = 64 * 1024

_BODY_KEYS = frozenset(
    {"retryafter", "retry_after", "retry_after_seconds", "retryafterseconds", "retry_after_s"}
)
_TEXT_HINT = re.compile(
    r"(?:retry|try\s+again|wait)\w*\b[^0-9.]{0,24}?(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Quota:
    """One limit as the server reported it.

    ``reset_in_s`` is the wait until it is whole again (or its window ends), relative to the
    moment the answer was read; ``window_s`` is known only from ``RateLimit-Policy``.
    ``reset_rounding_s`` is how coarse the reset was written (1.0 for whole seconds: the true
    reset may be up to that much earlier or later), ``reset_epoch`` whether it was a moment
    (an epoch) rather than a delta.
    """

    name: str
    limit: int | None
    remaining: int
    reset_in_s: float | None
    window_s: float | None = None
    reset_rounding_s: float = 1.0
    reset_epoch: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Hints:
    """Everything an answer said about limits; ``None`` where it said nothing usable."""

    retry_after_s: float | None = None
    body_retry_after_s: float | None = None
    quotas: tuple[Quota, ...] = ()
    zone: str | None = None

    @property
    def wait_s(self) -> float | None:
        """The server's explicit wait: ``Retry-After``, else a wait found in the body."""
        return self.retry_after_s if self.retry_after_s is not None else self.body_retry_after_s

    @property
    def sharp_wait_s(self) -> float | None:
        """:attr:`wait_s`, sharpened by an exhausted quota's reset when ``Retry-After`` is that
        reset rounded up to whole seconds (as the convention says): millisecond resets from
        ``X-RateLimit-Reset`` beat a whole second of slack."""
        wait = self.wait_s
        binding = self.binding
        if wait is None or binding is None or binding.remaining > 0:
            return wait
        reset = binding.reset_in_s
        if reset is not None and wait == math.ceil(wait) and reset <= wait < reset + 1:
            return reset
        return wait

    @property
    def binding(self) -> Quota | None:
        """The most restrictive quota: least remaining, on a tie the longest reset."""
        if not self.quotas:
            return None
        return min(self.quotas, key=lambda q: (q.remaining, -(q.reset_in_s or 0.0)))


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _sane(seconds: float) -> float | None:
    return seconds if 0.0 <= seconds <= MAX_HINT_S else None


def parse_http_date(text: str) -> float | None:
    """An HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``) as epoch seconds, else ``None``."""
    try:
        return parsedate_to_datetime(text.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(value: str, now: float, server_now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    A date is read against the server's own ``Date`` (``server_now``) when given, so a skewed
    local clock does not stretch or shrink the wait. A past date gives 0.
    """
    seconds = _number(value)
    if seconds is None:
        when = parse_http_date(value)
        if when is None:
            return None
        seconds = max(when - (server_now if server_now is not None else now), 0.0)
    return _sane(seconds)


def parse_reset(value: str, now: float, server_now: float | None = None) -> float | None:
    """``X-RateLimit-Reset`` as seconds from now, telling an epoch from a delta.

    A value below ``1e8`` is a delta (no epoch is that small); above ``1e11`` an epoch in
    milliseconds; otherwise an epoch in seconds, read against the server's ``Date`` when given.
    """
    number = _number(value)
    if number is None:
        return None
    if number < _EPOCH_FLOOR:
        return _sane(number)
    if number >= _EPOCH_MS_FLOOR:
        number /= 1000.0
    return _sane(max(number - (server_now if server_now is not None else now), 0.0))


def _split_members(text: str) -> list[str]:
    """Split a structured-field list on commas outside quoted strings."""
    members: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return [m.strip() for m in members if m.strip()]


def _member(text: str) -> tuple[str, dict[str, str]]:
    """One list member: its item (a string or token, unquoted) and its parameters."""
    parts = [p.strip() for p in re.split(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", text)]
    name = parts[0].strip('"')
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, raw = part.partition("=")
        params[key.strip().lower()] = raw.strip().strip('"') if raw else "?1"
    return name, params


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    number = _number(text)
    return int(number) if number is not None and number < 2**53 else None


def parse_ietf_policy(text: str) -> dict[str, tuple[int, float]]:
    """``RateLimit-Policy``: policy name -> (quota ``q``, window ``w`` seconds)."""
    policies: dict[str, tuple[int, float]] = {}
    for member in _split_members(text):
        name, params = _member(member)
        quota = _int(params.get("q"))
        window = _number(params.get("w", ""))
        if quota is not None and window:
            policies[name] = (quota, window)
    return policies


def parse_ietf_ratelimit(text: str) -> list[tuple[str, int, float | None]]:
    """``RateLimit``: (policy name, remaining ``r``, reset ``t`` seconds) per listed policy."""
    found: list[tuple[str, int, float | None]] = []
    for member in _split_members(text):
        name, params = _member(member)
        remaining = _int(params.get("r"))
        if remaining is None:
            continue
        reset = _number(params.get("t", ""))
        found.append((name, remaining, _sane(reset) if reset is not None else None))
    return found


def _search_json(value: Any, depth: int = 0) -> float | None:
    if depth > 5:
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in _BODY_KEYS:
                if isinstance(item, int | float) and not isinstance(item, bool):
                    seconds = float(item)
                    if math.isfinite(seconds) and seconds >= 0:
                        return _sane(seconds)
                elif isinstance(item, str) and (seconds_ := _number(item)) is not None:
                    return _sane(seconds_)
        for item in value.values():
            found = _search_json(item, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value[:20]:
            found = _search_json(item, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, str):
        return _search_text(value)
    return None


def _search_text(text: str) -> float | None:
    match = _TEXT_HINT.search(text)
    if match is None:
        return None
    unit = (match[2] or "s").lower()
    if unit.startswith(("ms", "milli")):
        factor = 0.001
    elif unit.startswith("h"):
        factor = 3600.0
    elif unit.startswith("m"):
        factor = 60.0
    else:
        factor = 1.0
    return _sane(float(match[1]) * factor)


def parse_body_hint(body: bytes) -> float | None:
    """A wait found in a 429/503 body: a JSON ``retryAfter`` / ``retry_after_seconds`` (at any
    depth), else text such as "retry after 42 seconds"."""
    if not body or len(body) > _MAX_BODY:
        return None
    text = body.decode("utf-8", "replace")
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return _search_json(json.loads(stripped))
        except (ValueError, RecursionError):
            pass  # looked like JSON but is not: the text search below still applies
    return _search_text(text)


NO_HINTS = Hints()
"""An answer that said nothing about limits."""

_HINT_HEADERS = frozenset(
    {
        b"date",
        b"ratelimit",
        b"ratelimit-policy",
        b"retry-after",
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"x-ratelimit-zone",
    }
)


def hint_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers :func:`read_hints` reads, in one pass over raw ``(name, value)`` pairs, with
    lower-case names; repeated fields are joined with ", " as HTTP allows."""
    found: dict[str, str] = {}
    for name, value in raw:
        lower = name.lower()
        if lower in _HINT_HEADERS:
            key = lower.decode("ascii")
            text = value.decode("latin-1")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


def _date_clock(headers: Mapping[str, str], now: float) -> float | None:
    """The server's clock by this answer's ``Date``, or ``None`` when it has none or agrees
    with ``now``: Date has one-second resolution, so only a larger gap says anything."""
    date = headers.get("date")
    server_now = parse_http_date(date) if date else None
    if server_now is not None and abs(server_now - now) <= 1.5:
        return None
    return server_now


def read_hints(
    headers: Mapping[str, str],
    body: bytes | None,
    now: float,
    skew_s: float | None = None,
) -> Hints:
    """Every hint of one answer. ``headers`` is case-insensitive (``httpx.Headers``) or has
    lower-case keys; ``now`` is the local epoch clock. Epochs and HTTP-dates are read against
    the server's clock: ``now + skew_s`` when the caller has estimated the skew from many
    answers (:class:`ratekeeper.client.skew.SkewEstimate`), else this answer's ``Date`` when it
    disagrees with ``now`` by more than its whole-second resolution explains."""
    retry_after = headers.get("retry-after")
    reset_text = headers.get("x-ratelimit-reset")
    server_now: float | None = None
    if skew_s is not None:
        server_now = now + skew_s if skew_s else None
    elif retry_after or reset_text:
        # Date matters only to read an epoch or an HTTP-date: most answers have neither.
        server_now = _date_clock(headers, now)

    retry_after_s = parse_retry_after(retry_after, now, server_now) if retry_after else None
    body_s = parse_body_hint(body) if body else None

    quotas: list[Quota] = []
    ietf = headers.get("ratelimit")
    if ietf:
        policy_text = headers.get("ratelimit-policy")
        policies = parse_ietf_policy(policy_text) if policy_text else {}
        for name, remaining, reset in parse_ietf_ratelimit(ietf):
            quota, window = policies.get(name, (None, None))
            quotas.append(
                Quota(
                    name=name, limit=quota, remaining=remaining, reset_in_s=reset, window_s=window
                )
            )
    remaining_text = headers.get("x-ratelimit-remaining")
    x_remaining = _int(remaining_text) if remaining_text else None
    if x_remaining is not None:
        limit_text = headers.get("x-ratelimit-limit")
        reset_number = _number(reset_text) if reset_text else None
        quotas.append(
            Quota(
                name="x-ratelimit",
                limit=_int(limit_text) if limit_text else None,
                remaining=x_remaining,
                reset_in_s=parse_reset(reset_text, now, server_now) if reset_text else None,
                # Written with a fraction ("1796034905.000"), it was not rounded to seconds.
                reset_rounding_s=0.0 if reset_text and "." in reset_text else 1.0,
                reset_epoch=reset_number is not None and reset_number >= _EPOCH_FLOOR,
            )
        )
    return Hints(
        retry_after_s=retry_after_s,
        body_retry_after_s=body_s,
        quotas=tuple(quotas),
        zone=headers.get("x-ratelimit-zone"),
    )
