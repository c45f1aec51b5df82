"""Limits a host reports only when it refuses, remembered for the rest of the session.

Servers with several limits often describe one in their allowed answers and another only in
their refusals: MusicBrainz's answers show the global zone (800 per 2 s) while a refusal names
the per-IP+User-Agent zone (2 per 2 s); AISoule's messaging answers show 300 per minute while a
refusal names the 5-per-second burst. A client that learns only from the next allowed answer
forgets such a limit at once and is refused again in every window. :class:`RefusedLimits` keeps
one :class:`~ratekeeper.client.windows.WindowPacer` per limit seen only in refusals (keyed by its
zone and size), so the host is paced by every limit it is known to have, the strictest governing.

A refusal states the limit's size (``X-RateLimit-Limit``) but not its window. The window is at
least the wait the refusal asks for (``Retry-After``, whole seconds), at least the time to its
reset (less the reset's rounding), and longer than the span of the requests it counted (the
``size`` sends before the refused one all fell in one window). Headers speak in whole seconds,
so the window is taken as the next whole second above those bounds; a second refusal of the
same limit proves the window longer than the one paced by, and lengthens it. Pure state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.windows import WindowPacer

__all__ = ["RefusedLimits"]

# Bounds computed from clock readings carry float error: 2.0000001 s is a 2-second window.
_TICK_S = 0.001

_Key = tuple[str | None, int]

# A server naming a new limit in every answer must not grow the client's memory or stack up
# pacers without end: past this many per host, new ones are not remembered.
MAX_REMEMBERED = 16


class RefusedLimits:
    """One host's limits seen only in refusals, each pacing the host as a window learned."""

    __slots__ = ("_by_key", "_since", "_visible", "margin_s", "pacers")

    def __init__(self, margin_s: float) -> None:
        self.margin_s = margin_s
        self._by_key: dict[_Key, WindowPacer] = {}
        # When each was first remembered: requests sent before were not paced by it.
        self._since: dict[_Key, float] = {}
        # Limits allowed answers report: learned from those answers, not remembered here.
        self._visible: set[_Key] = set()
        self.pacers: tuple[WindowPacer, ...] = ()

    def allowed(self, hints: Hints) -> None:
        """An allowed answer: a limit it reports is visible (the answers describe it), and one
        remembered from refusals that allowed answers now report is no longer hidden."""
        for quota in hints.quotas:
            if quota.limit is None:
                continue
            key = (hints.zone, quota.limit)
            if len(self._visible) < MAX_REMEMBERED:
                self._visible.add(key)
            if self._by_key.pop(key, None) is not None:
                del self._since[key]
                self.pacers = tuple(self._by_key.values())

    def refused(
        self,
        hints: Hints,
        sent_at: float,
        now: float,
        seen: Iterable[tuple[float, float]],
    ) -> bool:
        """A refusal of the request sent at ``sent_at``, read at ``now``; ``seen`` is the host's
        recent requests as ``(sent, answered)`` (``inf`` while in flight). Returns whether it
        named a limit allowed answers never report (remembered, and pacing the host now)."""
        quota = hints.binding
        if quota is None or quota.limit is None or quota.limit <= 0:
            return False
        key = (hints.zone, quota.limit)
        if key in self._visible:
            return False
        pacer = self._by_key.get(key)
        if pacer is None:
            if len(self._by_key) >= MAX_REMEMBERED:
                return False
            sends = sorted(sent for sent, _ in seen if sent < sent_at)
            period = _period(hints, quota, sent_at, sends, 0.0)
            pacer = WindowPacer(quota.limit, period, self.margin_s, probe=True)
            for sent, answered in sorted(seen):
                if answered > now - 2 * period:
                    pacer.record(sent)
                    if answered < math.inf:
                        pacer.answered(sent, answered)
            self._by_key[key] = pacer
            self._since[key] = now
            self.pacers = tuple(self._by_key.values())
        else:
            sends = pacer.sent_before(sent_at)
            since = self._since[key]
            # Refused though it and the requests it counted were all paced by this window (sent
            # after it was remembered or last lengthened; one sent before, in flight meanwhile,
            # echoes the refusal that taught it): the window is longer.
            if sent_at >= since and len(sends) >= quota.limit and sends[-quota.limit] >= since:
                period = _period(hints, quota, sent_at, sends, pacer.period_s)
                if period > pacer.period_s:
                    pacer.lengthen(period)
                    self._since[key] = now
        pacer.observe(quota, now)
        # An epoch is a moment, whole seconds and all (a delta's rounding blurs where a
        # window starts): a refusal's reset sooner than the oldest counted send could leave
        # the window is where the server's windows end (MusicBrainz's clock-aligned zones).
        if quota.reset_epoch and quota.reset_in_s is not None:
            pacer.align(now + quota.reset_in_s)
        return True

    def __repr__(self) -> str:
        return f"<RefusedLimits {list(self.pacers)!r}>"


def _period(
    hints: Hints, quota: Quota, sent_at: float, sends: list[float], paced_s: float
) -> float:
    """The shortest whole-second window the refusal allows (see the module's text);
    ``paced_s``: the window the host was paced by when refused (0: none)."""
    bounds = [hints.wait_s or 0.0, paced_s]
    if quota.reset_in_s is not None:
        bounds.append(quota.reset_in_s - quota.reset_rounding_s)
    size = quota.limit or 1
    if len(sends) >= size:
        bounds.append(sent_at - sends[-size])
    period = max(math.ceil(max(bounds) - _TICK_S), 1)
    # Refused while paced by a window: it is longer, by the next whole second at least.
    if paced_s and period <= paced_s:
        period = math.floor(paced_s) + 1
    return float(period)
