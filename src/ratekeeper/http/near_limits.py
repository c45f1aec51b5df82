"""The callers nearest their limits: a bounded sample kept from the decisions this process makes.

For each limit (``<limit set>/<limit>``, e.g. ``api/minute``) :class:`NearLimits` keeps at most
``size`` callers, those whose binding limit was most used when last seen. A decision costs a
few dict operations (the binding limit is already ranked for the headers); a caller enters a
full sample only above the least-used one, which is then evicted. Nothing is scanned: to list
the callers nearest their limits across workers and instances, each worker publishes its sample
(see :meth:`snapshot`) and a reader merges at most ``workers x size`` entries per limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from ratekeeper.decision import Decision

__all__ = ["NearLimits", "merge_samples"]


class _Seen(NamedTuple):
    used_ratio: float
    used: int
    limit: int
    reset_at: float
    label: str
    at: float


class NearLimits:
    """A sample of at most ``size`` callers per limit, the most used first (thread-safe)."""

    __slots__ = ("_floors", "_groups", "_lock", "size")

    def __init__(self, size: int = 32) -> None:
        self.size = size
        # Keyed by (limit set, limit name): two interned strings, no text built per decision.
        self._groups: dict[tuple[str, str], dict[str, _Seen]] = {}
        self._floors: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<NearLimits size={self.size} limits={len(self._groups)}>"

    def note(self, decision: Decision, label: str) -> None:
        """Record the binding limit of ``decision`` for the caller it was made for."""
        binding = decision.binding
        limit = binding.limit
        amount = limit.amount
        used = amount if not decision.allowed else amount - binding.remaining
        ratio = used / amount
        group_name = (binding.limit_set, limit.name)
        group = self._groups.get(group_name)
        key = binding.key
        if (
            group is not None
            and len(group) >= self.size
            and key not in group
            and ratio <= self._floors.get(group_name, 0.0)
        ):
            return
        seen = _Seen(ratio, used, amount, binding.reset_at, label, decision.now)
        if group is not None and key in group:
            # Replacing a value is atomic; only a new entry can push another one out.
            group[key] = seen
            return
        with self._lock:
            if group is None:
                group = self._groups.setdefault(group_name, {})
            group[key] = seen
            if len(group) > self.size:
                lowest = min(group, key=lambda k: group[k].used_ratio)
                del group[lowest]
                self._floors[group_name] = min(s.used_ratio for s in list(group.values()))

    def snapshot(self, now: float) -> dict[str, list[dict[str, Any]]]:
        """The sample as JSON-ready data, without callers whose window has ended by ``now``."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for (set_name, limit_name), group in list(self._groups.items()):
                name = (set_name, limit_name)
                # list(): other threads may replace values meanwhile (see note).
                for key in [k for k, s in list(group.items()) if s.reset_at <= now]:
                    del group[key]
                # Entries also fall as windows restart: the entry bar is set afresh here.
                full = len(group) >= self.size
                seen_all = list(group.values())
                self._floors[name] = min(s.used_ratio for s in seen_all) if full else 0.0
                if group:
                    entries = [_entry(key, seen) for key, seen in list(group.items())]
                    out[f"{set_name}/{limit_name}"] = entries
        return out


def _entry(key: str, seen: _Seen) -> dict[str, Any]:
    return {
        "key": key,
        "label": seen.label,
        "used": seen.used,
        "limit": seen.limit,
        "remaining": max(seen.limit - seen.used, 0),
        "reset_at": round(seen.reset_at, 3),
        "seen_at": round(seen.at, 3),
    }


def merge_samples(
    samples: Iterable[dict[str, list[dict[str, Any]]]], now: float, top: int
) -> dict[str, list[dict[str, Any]]]:
    """The ``top`` callers nearest each limit over several workers' samples (the latest
    sighting of a caller wins; windows ended by ``now`` are left out)."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for sample in samples:
        for name, entries in sample.items():
            group = merged.setdefault(name, {})
            for entry in entries:
                if entry["reset_at"] <= now:
                    continue
                known = group.get(entry["key"])
                if known is None or entry["seen_at"] > known["seen_at"]:
                    group[entry["key"]] = entry
    return {
        name: sorted(group.values(), key=lambda e: (-e["used"] / e["limit"], e["key"]))[:top]
        for name, group in sorted(merged.items())
    }
