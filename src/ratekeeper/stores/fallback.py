"""A store wrapper that keeps deciding when the shared store is down.

While the primary store fails, :class:`FallbackStore` answers by its :class:`FailMode`:
allow (``fail_open``), reject with a ``retry_after`` (``fail_closed``), or decide on a local
in-memory store of this process (``fallback``). It never lets an exception from the primary
reach the caller. Once down, the primary is not called on every request (each call might wait
for a connect timeout): one request at a time probes it, at most every ``probe_interval_s``,
and the first probe that succeeds ends the outage. Requests therefore return to the primary
within about ``probe_interval_s`` of it coming back (given traffic), and a blocked probe holds
up only the request that carries it.

Every exception from the primary counts as the store being down: a driver bug must not take the
application down with it either, and the outage log line names the exception's type. Only
``BaseException``\\ s such as cancellation pass through. The logger ``ratekeeper.store`` gets one
line per outage, one per recovery, and while the outage lasts one every ``report_every_s`` with
the decisions made without the store (never one per request); ``degraded``, ``outages``,
``failures``, ``degraded_decisions`` and ``unenforced_decisions`` are there for metrics and
health checks.

A store that stays broken (a corrupted file, a script that always fails) looks like an outage
that never ends. ``fail_open`` then would enforce nothing for ever, so ``fail_open_max_s``
bounds it: past that much outage, decisions fall back to the local in-memory store (limits
per process) until the store returns, and a line says so.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from ratekeeper.algorithms import Step
from ratekeeper.core import decide
from ratekeeper.decision import Decision
from ratekeeper.errors import LimitConfigError, StoreError
from ratekeeper.limit import LimitSet
from ratekeeper.stores.base import AsyncStore, Store, decides_on_loop
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.memory import MemoryStore

__all__ = ["DegradedDecision", "FallbackStore"]

logger = logging.getLogger("ratekeeper.store")

Items = Sequence[tuple[LimitSet, str]]

# How a call reaches the primary: not at all (degraded, no probe due), as a normal call, or as
# the one probe allowed to end an outage.
_SKIP, _NORMAL, _PROBE = 0, 1, 2


_DOING = {
    FailMode.FAIL_OPEN: "allowing every request",
    FailMode.FAIL_CLOSED: "rejecting every request",
    FailMode.FALLBACK: "deciding on this process's in-memory store",
}


class DegradedDecision(Decision):
    """A decision made without the primary store; ``fail_mode`` says how.

    ``fail_open``: allowed as a fresh key would be (the real usage is unknown, the remaining
    counts are a fresh key's). ``fail_closed``: rejected, ``retry_after_s`` being the wrapper's
    ``retry_after_s``. ``fallback``: decided on the local store, which counts only this process.
    """

    __slots__ = ("fail_mode",)

    fail_mode: FailMode

    def __init__(
        self,
        allowed: bool,
        retry_after_s: float,
        now: float,
        items: Items,
        results: Sequence[Step],
        *,
        fail_mode: FailMode,
    ) -> None:
        super().__init__(allowed, retry_after_s, now, items, results)
        self.fail_mode = fail_mode

    @classmethod
    def of(cls, decision: Decision, items: Items, fail_mode: FailMode) -> DegradedDecision:
        """The same decision, marked as degraded."""
        results = [
            (s.allowed, None, s.remaining, s.reset_at, s.retry_after_s) for s in decision.states
        ]
        return cls(
            decision.allowed,
            decision.retry_after_s,
            decision.now,
            items,
            results,
            fail_mode=fail_mode,
        )


class FallbackStore:
    """Wraps a shared store; answers by ``mode`` while it is down, and notices its return.

    ``retry_after_s`` is the wait told to rejected callers in ``fail_closed`` mode.
    ``local`` is the store used in ``fallback`` mode (a new :class:`MemoryStore` by default);
    it keeps what it counted across outages. ``monotonic`` times the probes.
    """

    def __init__(
        self,
        primary: Store | AsyncStore,
        mode: FailMode | str = FailMode.FALLBACK,
        *,
        probe_interval_s: float = 0.5,
        retry_after_s: float = 1.0,
        local: MemoryStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        fail_open_max_s: float | None = None,
        report_every_s: float = 60.0,
    ) -> None:
        if not isinstance(probe_interval_s, int | float) or not 0 < probe_interval_s < math.inf:
            raise LimitConfigError(
                f"probe_interval_s must be a finite number > 0 of seconds, got {probe_interval_s!r}"
            )
        if not isinstance(retry_after_s, int | float) or not 0 < retry_after_s < math.inf:
            raise LimitConfigError(
                f"retry_after_s must be a finite number > 0 of seconds, got {retry_after_s!r}"
            )
        bounds = (("fail_open_max_s", fail_open_max_s), ("report_every_s", report_every_s))
        for name, value in bounds:
            if value is None:
                continue
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise LimitConfigError(
                    f"{name} must be a finite number > 0 of seconds, got {value!r}"
                )
        self.primary = primary
        self.mode = FailMode.parse(mode)
        self.fail_open_max_s = fail_open_max_s
        self.report_every_s = float(report_every_s)
        self.unenforced_decisions = 0
        self.probe_interval_s = float(probe_interval_s)
        self.retry_after_s = float(retry_after_s)
        self.local = local if local is not None else MemoryStore()
        self._sync = primary if isinstance(primary, Store) else None
        self._async = primary if isinstance(primary, AsyncStore) else None
        # Asyncio callers use the primary's synchronous face when it asks for that (or has no
        # other), and so does this wrapper's async face.
        self.decides_on_loop = decides_on_loop(primary)
        self.degraded = False
        self.outages = 0
        self.failures = 0
        self.degraded_decisions = 0
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._probing = False
        self._next_probe = 0.0
        self._down_since = 0.0
        self._failures_at_outage = 0
        self._decisions_at_outage = 0
        self._unenforced_at_outage = 0
        self._next_report = 0.0
        self._fell_back = False

    def __repr__(self) -> str:
        health = "degraded" if self.degraded else "healthy"
        return (
            f"<FallbackStore {self.mode.value} {health} outages={self.outages} "
            f"primary={self.primary!r}>"
        )

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide on the primary store, or by the fail mode while it is down; never raises
        because of the primary."""
        sync = self._sync
        if sync is None:
            sync = self._sync_face()
        route = self._route()
        if route != _SKIP:
            try:
                decision = sync.decide(items, cost, now, peek=peek)
            except BaseException as exc:
                self._settle(exc, route)
            else:
                self._succeeded(route)
                return decision
        local = self.local.decide(items, cost, now, peek=peek) if self._uses_local else None
        return self._degraded(items, cost, now, local)

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """The asyncio twin of :meth:`decide`."""
        primary = self._async
        if primary is None or self.decides_on_loop:
            return self.decide(items, cost, now, peek=peek)
        route = self._route()
        if route != _SKIP:
            try:
                decision = await primary.decide_async(items, cost, now, peek=peek)
            except BaseException as exc:
                self._settle(exc, route)
            else:
                self._succeeded(route)
                return decision
        local = (
            await self.local.decide_async(items, cost, now, peek=peek) if self._uses_local else None
        )
        return self._degraded(items, cost, now, local)

    def reset(self, items: Items) -> None:
        """Forget these keys on the primary (if reachable) and on the local store."""
        sync = self._sync_face()
        route = self._route()
        if route != _SKIP:
            try:
                sync.reset(items)
            except BaseException as exc:
                self._settle(exc, route)
            else:
                self._succeeded(route)
        self.local.reset(items)

    async def reset_async(self, items: Items) -> None:
        """The asyncio twin of :meth:`reset`."""
        primary = self._async
        if primary is None or self.decides_on_loop:
            self.reset(items)
            return
        route = self._route()
        if route != _SKIP:
            try:
                await primary.reset_async(items)
            except BaseException as exc:
                self._settle(exc, route)
            else:
                self._succeeded(route)
        await self.local.reset_async(items)

    def close(self) -> None:
        """Close both stores; a primary that fails to close is logged, not raised."""
        try:
            self._sync_face().close()
        except Exception as exc:
            logger.warning("store %r failed to close: %s", self.primary, _describe(exc))
        self.local.close()

    async def close_async(self) -> None:
        """The asyncio twin of :meth:`close`."""
        primary = self._async
        if primary is None or self.decides_on_loop:
            self.close()
            return
        try:
            await primary.close_async()
        except Exception as exc:
            logger.warning("store %r failed to close: %s", self.primary, _describe(exc))
        await self.local.close_async()

    def _sync_face(self) -> Store:
        if self._sync is None:
            raise StoreError(
                f"store {self.primary!r} has no synchronous interface: use it from asyncio "
                "(the ASGI middleware)"
            )
        return self._sync

    @property
    def down_for_s(self) -> float:
        """Seconds since the current outage began; 0 while the store is healthy."""
        return self._monotonic() - self._down_since if self.degraded else 0.0

    @property
    def effective_mode(self) -> FailMode:
        """How decisions are made while the store is down: the mode, except that ``fail_open``
        becomes ``fallback`` once the outage has lasted ``fail_open_max_s``."""
        limit = self.fail_open_max_s
        if self.mode is FailMode.FAIL_OPEN and limit is not None and self.down_for_s >= limit:
            return FailMode.FALLBACK
        return self.mode

    @property
    def _uses_local(self) -> bool:
        return self.effective_mode is FailMode.FALLBACK

    def _route(self) -> int:
        if not self.degraded:
            return _NORMAL
        with self._lock:
            if not self.degraded:
                return _NORMAL
            if self._probing or self._monotonic() < self._next_probe:
                return _SKIP
            self._probing = True
            return _PROBE

    def _failed(self, exc: Exception, route: int) -> None:
        with self._lock:
            self.failures += 1
            if route == _PROBE:
                self._probing = False
                self._next_probe = self._monotonic() + self.probe_interval_s
            if self.degraded:
                return
            self.degraded = True
            self.outages += 1
            self._down_since = self._monotonic()
            self._next_probe = self._down_since + self.probe_interval_s
            self._failures_at_outage = self.failures - 1
            self._decisions_at_outage = self.degraded_decisions
            self._unenforced_at_outage = self.unenforced_decisions
            self._next_report = self._down_since + self.report_every_s
            self._fell_back = False
        bound = ""
        if self.mode is FailMode.FAIL_OPEN and self.fail_open_max_s is not None:
            bound = f" for at most {self.fail_open_max_s:g} s, then {_DOING[FailMode.FALLBACK]}"
        logger.warning(
            "store %r is down (%s); %s%s until it recovers",
            self.primary,
            _describe(exc),
            _DOING[self.mode],
            bound,
        )

    def _succeeded(self, route: int) -> None:
        if route != _PROBE:
            return
        with self._lock:
            self._probing = False
            if not self.degraded:
                return
            self.degraded = False
            down_s = self._monotonic() - self._down_since
            failures = self.failures - self._failures_at_outage
            decisions = self.degraded_decisions - self._decisions_at_outage
            unenforced = self.unenforced_decisions - self._unenforced_at_outage
        logger.info(
            "store %r recovered after %.1f s down (%d failed calls, %d degraded decisions); "
            "%d decisions were not enforced",
            self.primary,
            down_s,
            failures,
            decisions,
            unenforced,
        )

    def _settle(self, exc: BaseException, route: int) -> None:
        """After the primary raised: an ``Exception`` counts as the store being down and is
        swallowed; a ``BaseException`` (cancellation) frees the probe it may hold and goes on."""
        if isinstance(exc, Exception):
            self._failed(exc, route)
            return
        if route == _PROBE:
            with self._lock:
                self._probing = False
        raise exc

    def _report_outage(self) -> None:
        with self._lock:
            failures = self.failures - self._failures_at_outage
            decisions = self.degraded_decisions - self._decisions_at_outage
            unenforced = self.unenforced_decisions - self._unenforced_at_outage
        logger.warning(
            "store %r still down after %.0f s (%d failed calls): %d decisions without it, %d of "
            "them not enforced; %s",
            self.primary,
            self.down_for_s,
            failures,
            decisions,
            unenforced,
            _DOING[self.effective_mode],
        )

    def _degraded(
        self, items: Items, cost: int, now: float, local: Decision | None
    ) -> DegradedDecision:
        mode = self.effective_mode
        with self._lock:
            self.degraded_decisions += 1
            if mode is FailMode.FAIL_OPEN:
                self.unenforced_decisions += 1
            report = self.degraded and self._monotonic() >= self._next_report
            switched = mode is not self.mode and not self._fell_back
            if report:
                self._next_report = self._monotonic() + self.report_every_s
            if switched:
                self._fell_back = True
        if switched:
            logger.warning(
                "store %r still down after %.0f s: fail_open ends (fail_open_max), %s until it "
                "recovers",
                self.primary,
                self.down_for_s,
                _DOING[mode],
            )
        if report:
            self._report_outage()
        if local is not None:
            return DegradedDecision.of(local, items, mode)
        if mode is FailMode.FAIL_OPEN:
            _, fresh = decide(items, [None] * len(items), now, cost)
            return DegradedDecision.of(fresh, items, mode)
        retry = self.retry_after_s
        results = [
            (False, None, 0, now + retry, retry)
            for limit_set, _ in items
            for _limit in limit_set.limits
        ]
        return DegradedDecision(False, retry, now, items, results, fail_mode=mode)


def _describe(exc: BaseException) -> str:
    # One log line per event: a multi-line driver message would break that.
    return " ".join(f"{type(exc).__name__}: {exc}".split())
