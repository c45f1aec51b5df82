"""The httpx transports: pacing before the wrapped transport, learning and retrying after it.

One flow, written once as a generator of small operations (sleep, ask the limiter, send, read,
close, wait for a slot), drives both transports; :class:`RateLimitTransport` and
:class:`AsyncRateLimitTransport` only carry the operations out, with ``time.sleep`` and a
thread lock or ``asyncio.sleep`` and an asyncio lock. Stack a cache in front
(:class:`ratekeeper.client.cache.CachingTransport`) so that cache hits spend no budget.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import httpx

from ratekeeper.client.hints import NO_HINTS, Quota, hint_headers, read_hints
from ratekeeper.client.pacing import Charge, HostPolicy, HostState, Pacer
from ratekeeper.client.retry import (
    ClientConfigError,
    RetryPolicy,
    check_wait,
    plan_retry,
)
from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.limiter import AsyncLimiter, Limiter
from ratekeeper.policy import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.url import store_from_url

__all__ = ["AsyncRateLimitTransport", "LowRemainingCallback", "RateLimitTransport"]

log = logging.getLogger("ratekeeper.client")

LowRemainingCallback: TypeAlias = Callable[[str, Quota], None]
"""Called with the host's name and the quota that fell under its ``low_remaining``."""


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Hit:
    state: HostState
    charge: Charge


@dataclass(frozen=True, slots=True)
class _Slot:
    state: HostState


@dataclass(frozen=True, slots=True)
class _Send:
    """Leave the host's queue (the request's turn is taken), then send."""

    request: httpx.Request
    state: HostState


@dataclass(frozen=True, slots=True)
class _Read:
    response: httpx.Response


@dataclass(frozen=True, slots=True)
class _Close:
    response: httpx.Response


@dataclass(frozen=True, slots=True)
class _Enter:
    state: HostState


@dataclass(frozen=True, slots=True)
class _Answered:
    state: HostState


@dataclass(frozen=True, slots=True)
class _Peek:
    state: HostState
    charge: Charge


_Op: TypeAlias = _Sleep | _Hit | _Peek | _Slot | _Send | _Read | _Close | _Enter | _Answered


@dataclass(frozen=True, slots=True)
class _HostOps:
    """One host's operations without arguments, made once: the hot path allocates none."""

    enter: _Enter
    answered: _Answered
    slot: _Slot
    # Per charge (one, or one per route of a server's policy): its hit and peek.
    charges: dict[int, tuple[_Hit, _Peek]]

    @classmethod
    def of(cls, state: HostState) -> _HostOps:
        return cls(_Enter(state), _Answered(state), _Slot(state), {})

    def for_charge(self, charge: Charge) -> tuple[_Hit, _Peek]:
        """The hit and peek operations of ``charge`` (charges live as long as their plan)."""
        found = self.charges.get(id(charge))
        if found is None:
            found = (_Hit(self.enter.state, charge), _Peek(self.enter.state, charge))
            self.charges[id(charge)] = found
        return found


_Flow: TypeAlias = Generator[_Op, Any, httpx.Response]

# Error bodies larger than this are not read for hints (they would be buffered in memory).
_MAX_HINT_BODY = 64 * 1024


def _url(request: httpx.Request) -> str:
    """The request's URL without its query (which may carry API keys), for logs and errors."""
    url = request.url
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"


class _Core:
    """The transport logic shared by both drivers: configuration, host states, the flow."""

    def __init__(
        self,
        *,
        hosts: Mapping[str, HostPolicy] | None,
        default: HostPolicy | None,
        retry: RetryPolicy | None,
        clock: Clock,
        random_fn: Callable[[], float],
        on_low_remaining: LowRemainingCallback | None,
    ) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        self.pacer = Pacer(
            hosts=dict(hosts or {}),
            default=default if default is not None else HostPolicy(),
            backoff_base_s=self.retry.backoff_base_s,
        )
        self.clock = clock
        self.random = random_fn
        self.on_low_remaining = on_low_remaining
        self._ops: dict[str, _HostOps] = {}

    def flow(self, request: httpx.Request) -> _Flow:
        """Pace, send, learn, and retry while the retry policy says so."""
        state = self.pacer.state_for(request.url)
        ops = self._ops.get(state.plan.name)
        if ops is None:
            ops = self._ops.setdefault(state.plan.name, _HostOps.of(state))
        send = _Send(request, state)
        charge = state.plan.charge_for(request.method, request.url.path)
        statuses = self.retry.statuses
        retries = 0
        waited = 0.0
        while True:
            yield ops.enter
            waited = yield from self._pace(state, ops, charge, request, waited)
            seq = state.on_send(self.clock())
            try:
                response: httpx.Response = yield send
            except BaseException:
                state.on_abort()
                if state.slot_waiters:
                    yield ops.answered
                raise
            now = self.clock()
            status = response.status_code
            retried = status in statuses
            found = hint_headers(response.headers.raw)
            body = None
            if retried or status == 429:
                length = response.headers.get("content-length", "0")
                if not length.isdigit() or int(length) <= _MAX_HINT_BODY:
                    yield _Read(response)
                    body = response.content[:_MAX_HINT_BODY]
            hints = read_hints(found, body, now) if found or body else NO_HINTS
            low = state.on_answer(seq, now, status, hints)
            # Read after on_answer: a request that starts waiting later sees the free slot.
            if state.slot_waiters:
                yield ops.answered
            if low is not None:
                self._warn_low(state, low)
            if not retried:
                return response
            url = _url(request)
            verdict = plan_retry(
                method=request.method,
                status=status,
                hints=hints,
                retries_done=retries,
                waited_s=waited,
                policy=self.retry,
                random=self.random,
                url=url,
                now=now,
            )
            if not verdict.retry:
                log.info("%s %s: %s, giving up (%s)", request.method, url, status, verdict.reason)
                return response
            log.info(
                "%s %s: retry %d in %.2fs (%s)",
                request.method,
                url,
                retries + 1,
                verdict.wait_s,
                verdict.reason,
            )
            yield _Close(response)
            if verdict.wait_s > 0:
                yield _Sleep(verdict.wait_s)
            waited += verdict.wait_s
            retries += 1

    def _pace(
        self,
        state: HostState,
        ops: _HostOps,
        charge: Charge | None,
        request: httpx.Request,
        waited: float,
    ) -> Generator[_Op, Any, float]:
        """Wait (holding the host's queue) until this request may go; returns total waited."""
        plan = state.plan
        while True:
            if not state.can_start():
                yield ops.slot
                continue
            now = self.clock()
            wait = state.wait_s(now)
            if wait <= 0 and charge is not None:
                hit, peek = ops.for_charge(charge)
                if charge.aligned and state.needs_room(charge, now):
                    state.record_room(charge, (yield peek), now)
                decision: Decision = yield hit
                if decision.allowed:
                    wait = state.early_wait_s(charge, decision, now) if charge.aligned else 0.0
                    if wait > 0:
                        yield _Sleep(wait)
                        waited += wait
                    return waited
                if not decision.satisfiable:
                    raise ClientConfigError(
                        f"{_url(request)}: one request can never pass the policy for "
                        f"{plan.name} ({decision.binding.limit.rate})"
                    )
                wait = decision.retry_after_s
            if wait <= 0:
                return waited
            check_wait(
                wait, waited, self.retry, url=_url(request), now=now, why=f"pacing {plan.name}"
            )
            yield _Sleep(wait)
            waited += wait

    def _warn_low(self, state: HostState, quota: Quota) -> None:
        log.warning(
            "%s: %d request(s) left of %s (quota %r), reset in %s",
            state.plan.name,
            quota.remaining,
            quota.limit if quota.limit is not None else "?",
            quota.name,
            f"{quota.reset_in_s:.0f}s" if quota.reset_in_s is not None else "?",
        )
        if self.on_low_remaining is not None:
            self.on_low_remaining(state.plan.name, quota)


class _FairLock:
    """A lock that serves waiters in arrival order (threading.Lock promises no order): a free
    lock is taken at once, a held one is handed to the longest waiter on release."""

    __slots__ = ("_held", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by release(), which passes the lock on held

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


def _store(store: Store | AsyncStore | str | None) -> Any:
    if isinstance(store, str):
        return store_from_url(store)
    return store if store is not None else MemoryStore()


class RateLimitTransport(httpx.BaseTransport):
    """A polite ``httpx.BaseTransport``: paces, learns and retries around ``transport``.

    ``hosts`` maps a host, ``host:port`` or URL prefix to its :class:`HostPolicy`; ``default``
    serves every other host. ``store`` (a store or URL such as ``sqlite:///budgets.db``) holds
    the budgets of known policies, shared by every process using it. ``clock`` (epoch seconds)
    and ``sleep`` are injectable for exact tests. Waits past ``retry``'s caps raise
    :class:`~ratekeeper.client.retry.WaitTooLongError`.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        hosts: Mapping[str, HostPolicy] | None = None,
        default: HostPolicy | None = None,
        retry: RetryPolicy | None = None,
        store: Store | str | None = None,
        clock: Clock = system_clock,
        sleep: Callable[[float], None] = time.sleep,
        random_fn: Callable[[], float] = random.random,
        on_low_remaining: LowRemainingCallback | None = None,
    ) -> None:
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self._core = _Core(
            hosts=hosts,
            default=default,
            retry=retry,
            clock=clock,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )
        self._store: Store = _store(store)
        self._sleep = sleep
        self._limiters: dict[str, Limiter] = {}
        self._unshifted = Limiter(self._store, clock=clock)
        self._gates: dict[str, _FairLock] = {}
        self._slots: dict[str, threading.Condition] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_policy(
        cls, source: Policy | str | Path, *, host: str, tier: str | None = None, **options: Any
    ) -> RateLimitTransport:
        """A transport pacing ``host`` (a host, ``host:port`` or URL prefix) by the limits its
        provider publishes: a policy file, a preset name or a loaded policy, as
        :meth:`HostPolicy.from_policy` reads them. ``options`` go to the constructor."""
        return cls(hosts={host: HostPolicy.from_policy(source, tier=tier)}, **options)

    @property
    def pacer(self) -> Pacer:
        """The per-host states, for inspection."""
        return self._core.pacer

    def _per_host(self, state: HostState) -> tuple[_FairLock, threading.Condition]:
        name = state.plan.name
        gate = self._gates.get(name)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(name, _FairLock())
                self._slots.setdefault(name, threading.Condition())
        return gate, self._slots[name]

    def _limiter(self, state: HostState) -> Limiter:
        limiter = self._limiters.get(state.plan.name)
        if limiter is None:
            shift = state.plan.clock_shift_s
            clock = self._core.clock
            limiter = Limiter(self._store, clock=(lambda: clock() + shift) if shift else clock)
            self._limiters[state.plan.name] = limiter
        return limiter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        flow = self._core.flow(request)
        held: list[_FairLock] = []
        try:
            op = next(flow)
            while True:
                try:
                    result = self._run(op, held)
                except BaseException as exc:
                    op = flow.throw(exc)
                else:
                    op = flow.send(result)
        except StopIteration as stop:
            response: httpx.Response = stop.value
            return response
        finally:
            for gate in held:
                gate.release()
            flow.close()

    def _run(self, op: _Op, held: list[_FairLock]) -> Any:
        # Ordered by how often each operation comes.
        if isinstance(op, _Enter):
            gate, _ = self._per_host(op.state)
            gate.acquire()
            held.append(gate)
        elif isinstance(op, _Send):
            gate, _ = self._per_host(op.state)
            held.remove(gate)
            gate.release()
            return self.transport.handle_request(op.request)
        elif isinstance(op, _Answered):
            _, slot = self._per_host(op.state)
            with slot:
                slot.notify_all()
        elif isinstance(op, _Hit):
            charge = op.charge
            items = charge.items
            if len(items) == 1:
                return self._limiter(op.state).hit(items[0][0], items[0][1], charge.cost)
            return self._limiter(op.state).hit_many(items, charge.cost)
        elif isinstance(op, _Peek):
            return self._unshifted.peek_many(op.charge.items)
        elif isinstance(op, _Sleep):
            self._sleep(op.seconds)
        elif isinstance(op, _Slot):
            _, slot = self._per_host(op.state)
            with slot:
                op.state.slot_waiters += 1
                try:
                    slot.wait_for(op.state.can_start, timeout=1.0)
                finally:
                    op.state.slot_waiters -= 1
        elif isinstance(op, _Read):
            op.response.read()
        else:
            op.response.close()
        return None

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()


class AsyncRateLimitTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`RateLimitTransport` (same flow, same options)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        hosts: Mapping[str, HostPolicy] | None = None,
        default: HostPolicy | None = None,
        retry: RetryPolicy | None = None,
        store: AsyncStore | str | None = None,
        clock: Clock = system_clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random_fn: Callable[[], float] = random.random,
        on_low_remaining: LowRemainingCallback | None = None,
    ) -> None:
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._core = _Core(
            hosts=hosts,
            default=default,
            retry=retry,
            clock=clock,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )
        self._store: AsyncStore = _store(store)
        self._sleep = sleep
        self._limiters: dict[str, AsyncLimiter] = {}
        self._unshifted = AsyncLimiter(self._store, clock=clock)
        self._gates: dict[str, asyncio.Lock] = {}
        self._slots: dict[str, asyncio.Condition] = {}

    @classmethod
    def from_policy(
        cls, source: Policy | str | Path, *, host: str, tier: str | None = None, **options: Any
    ) -> AsyncRateLimitTransport:
        """A transport pacing ``host`` (a host, ``host:port`` or URL prefix) by the limits its
        provider publishes: a policy file, a preset name or a loaded policy, as
        :meth:`HostPolicy.from_policy` reads them. ``options`` go to the constructor."""
        return cls(hosts={host: HostPolicy.from_policy(source, tier=tier)}, **options)

    @property
    def pacer(self) -> Pacer:
        """The per-host states, for inspection."""
        return self._core.pacer

    def _per_host(self, state: HostState) -> tuple[asyncio.Lock, asyncio.Condition]:
        # asyncio.Lock wakes its waiters in arrival order: the queue is fair.
        name = state.plan.name
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = asyncio.Lock()
            self._slots[name] = asyncio.Condition()
        return gate, self._slots[name]

    def _limiter(self, state: HostState) -> AsyncLimiter:
        limiter = self._limiters.get(state.plan.name)
        if limiter is None:
            shift = state.plan.clock_shift_s
            clock = self._core.clock
            limiter = AsyncLimiter(self._store, clock=(lambda: clock() + shift) if shift else clock)
            self._limiters[state.plan.name] = limiter
        return limiter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        flow = self._core.flow(request)
        held: list[asyncio.Lock] = []
        try:
            op = next(flow)
            while True:
                try:
                    result = await self._run(op, held)
                except BaseException as exc:
                    op = flow.throw(exc)
                else:
                    op = flow.send(result)
        except StopIteration as stop:
            response: httpx.Response = stop.value
            return response
        finally:
            for gate in held:
                gate.release()
            flow.close()

    async def _run(self, op: _Op, held: list[asyncio.Lock]) -> Any:
        # Ordered by how often each operation comes.
        if isinstance(op, _Enter):
            gate, _ = self._per_host(op.state)
            await gate.acquire()
            held.append(gate)
        elif isinstance(op, _Send):
            gate, _ = self._per_host(op.state)
            held.remove(gate)
            gate.release()
            return await self.transport.handle_async_request(op.request)
        elif isinstance(op, _Answered):
            _, slot = self._per_host(op.state)
            async with slot:
                slot.notify_all()
        elif isinstance(op, _Hit):
            charge = op.charge
            items = charge.items
            if len(items) == 1:
                return await self._limiter(op.state).hit(items[0][0], items[0][1], charge.cost)
            return await self._limiter(op.state).hit_many(items, charge.cost)
        elif isinstance(op, _Peek):
            return await self._unshifted.peek_many(op.charge.items)
        elif isinstance(op, _Sleep):
            await self._sleep(op.seconds)
        elif isinstance(op, _Slot):
            _, slot = self._per_host(op.state)
            async with slot:
                op.state.slot_waiters += 1
                try:
                    await slot.wait_for(op.state.can_start)
                finally:
                    op.state.slot_waiters -= 1
        elif isinstance(op, _Read):
            await op.response.aread()
        else:
            await op.response.aclose()
        return None

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.transport.aclose()
