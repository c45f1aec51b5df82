"""Reading one table of a policy: typed getters that remember the key path.

Every error is a :class:`~ratekeeper.errors.PolicyError` saying which file, which key path, what
was found and what was expected; a key nobody asked about is refused (a typo is not ignored).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ratekeeper.errors import PolicyError
from ratekeeper.rates import seconds_per_unit

__all__ = ["TableReader", "kind_of", "parse_duration", "shown"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_HOOK_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15 minutes"``, ``"2h"``; raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        unit = (seconds_per_unit(match[2]) if match[2] else 1.0) if match else None
        if match is None or unit is None:
            raise ValueError("a duration such as 30, '30s', '15 minutes' or '2h'")
        seconds = float(match[1]) * unit
    else:
        raise ValueError("a duration such as 30, '30s', '15 minutes' or '2h'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration of 0 seconds or more")
    return seconds


class TableReader:
    """Reads one table, remembering its key path, and refuses keys it was not asked about."""

    def __init__(self, source: str, path: str, table: object) -> None:
        self.source = source
        self.path = path
        if not isinstance(table, Mapping):
            raise self.error("", f"a table, got {kind_of(table)}")
        self.table: Mapping[str, Any] = table
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else self.path or key or "(top level)"

    def error(self, key: str, expected: str) -> PolicyError:
        return PolicyError(f"{self.source}: {self.where(key)}: expected {expected}")

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.table.get(key)

    def has(self, key: str) -> bool:
        return key in self.table

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"true or false, got {shown(value)}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"a string, got {shown(value)}")
        if choices and value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}; got {value!r}")
        return value

    def number(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        top = f" and <= {maximum}" if maximum is not None else ""
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise self.error(key, f"a whole number >= {minimum}{top}, got {shown(value)}")
        return value

    def duration(
        self, key: str, default: float, positive: bool = False, maximum: float = 366 * 86400.0
    ) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, f"{exc}, got {shown(value)}") from None
        if positive and seconds <= 0:
            raise self.error(key, f"a duration above 0, got {shown(value)}")
        # Past a year, expiries near no store's limits and no window ever ends in practice.
        if not seconds <= maximum:
            raise self.error(key, f"a duration up to {maximum:g} s, got {shown(value)}")
        return seconds

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"a list of strings, got {shown(value)}")
        return tuple(value)

    def hook(self, key: str) -> str:
        value = self.text(key, "")
        if value and not _HOOK_RE.match(value):
            raise self.error(key, f"'package.module:function', got {value!r}")
        return value

    def str_map(self, key: str, secret_keys: bool = False) -> dict[str, str]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"a table of strings, got {shown(value)}")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(item, str) or not item:
                which = "a key" if secret_keys else repr(name)
                raise self.error(key, f"a non-empty string for {which}, got {shown(item)}")
            out[name] = item
        return out

    def table_at(self, key: str) -> TableReader | None:
        value = self.get(key)
        if value is None:
            return None
        return TableReader(self.source, self.where(key), value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"one of the known keys ({known}): unknown key")


def kind_of(value: object) -> str:
    """What a TOML value is, in words (\"a string\", \"a list\")."""
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
    }.get(type(value), type(value).__name__)


def shown(value: object) -> str:
    """A value as an error message quotes it: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
