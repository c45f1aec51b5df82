"""The httpx transports: pacing before the wrapped transport, learning and retrying after it.

Both run :class:`~ratekeeper.client.flow.ClientFlow` and share everything but I/O (a common
base holds the configuration, the store and the per-host limiters);
:class:`RateLimitTransport` carries the operations out with ``time.sleep`` and thread locks,
:class:`AsyncRateLimitTransport` with ``asyncio.sleep`` and asyncio locks. Stack a cache in
front (:class:`ratekeeper.client.cache.CachingTransport`) so that cache hits spend no budget.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from ratekeeper.client.flow import (
    Answered,
    ClientFlow,
    Enter,
    Failed,
    Hit,
    LowRemainingCallback,
    Op,
    Peek,
    Read,
    Send,
    Sleep,
    Slot,
    Wire,
)
from ratekeeper.client.pacing import HostPolicy
from ratekeeper.client.retry import RetryPolicy
from ratekeeper.client.state import HostState, Pacer
from ratekeeper.clock import Clock, system_clock
from ratekeeper.flows import drive, drive_async
from ratekeeper.limiter import AsyncLimiter, Limiter
from ratekeeper.policy import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.url import resolve_store

__all__ = [
    "AsyncRateLimitTransport",
    "HttpxWire",
    "LowRemainingCallback",
    "RateLimitTransport",
    "SyncDriver",
]

T = TypeVar("T", bound="_Transport[Any, Any, Any]")
L = TypeVar("L", Limiter, AsyncLimiter)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class HttpxWire:
    """How the flow sees httpx's requests and answers."""

    __slots__ = ()

    def method(self, request: httpx.Request) -> str:
        """The request's method."""
        return request.method

    def url(self, request: httpx.Request) -> httpx.URL:
        """The request's URL."""
        return request.url

    def status(self, response: httpx.Response) -> int:
        """The answer's status code."""
        return response.status_code

    def raw_headers(self, response: httpx.Response) -> Iterable[tuple[bytes, bytes]]:
        """The answer's raw header fields."""
        return response.headers.raw

    def content_length(self, response: httpx.Response) -> str | None:
        """The answer's ``Content-Length``."""
        length: str | None = response.headers.get("content-length")
        return length

    def body(self, response: httpx.Response) -> bytes:
        """The answer's body (read)."""
        return response.content

    def is_stale(self, error: BaseException) -> bool:
        """A connection closed under the request: nothing, or no answer, came back."""
        return isinstance(error, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)

    def user_agent(self, request: httpx.Request) -> str | None:
        """The request's ``User-Agent``."""
        agent: str | None = request.headers.get("user-agent")
        return agent

    def set_user_agent(self, request: httpx.Request, value: str) -> None:
        """Set the request's ``User-Agent``."""
        request.headers["User-Agent"] = value


_WIRE = HttpxWire()


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


def _leave(flow: Generator[Op, Any, Any], held: Sequence[_FairLock | asyncio.Lock]) -> None:
    """End a request's flow however it ended: free the host's queue it may still hold (an
    error or a cancellation between Enter and Send), and close the flow."""
    for gate in held:
        gate.release()
    flow.close()


class _Transport(Generic[L, Req, Resp]):
    """What every driver shares: the flow and its configuration, the store, and one limiter
    per host (shifted by the host's clock shift) plus an unshifted one for peeks."""

    _limiter_type: type[L]

    def __init__(
        self,
        wire: Wire[Req, Resp],
        *,
        hosts: Mapping[str, HostPolicy] | None = None,
        default: HostPolicy | None = None,
        retry: RetryPolicy | None = None,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
        random_fn: Callable[[], float] = random.random,
        on_low_remaining: LowRemainingCallback | None = None,
    ) -> None:
        self._flow: ClientFlow[Req, Resp] = ClientFlow(
            wire,
            hosts=hosts,
            default=default,
            retry=retry,
            clock=clock,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
            shared_store=store is not None,
        )
        self._store = resolve_store(store)
        self._limiters: dict[str, L] = {}
        self._unshifted: L = self._limiter_type(self._store, clock=clock)

    @classmethod
    def from_policy(
        cls: type[T],
        source: Policy | str | Path,
        *,
        host: str,
        tier: str | None = None,
        **options: Any,
    ) -> T:
        """A transport pacing ``host`` (a host, ``host:port`` or URL prefix) by the limits its
        provider publishes: a policy file, a preset name or a loaded policy, as
        :meth:`HostPolicy.from_policy` reads them. ``options`` go to the constructor."""
        return cls(hosts={host: HostPolicy.from_policy(source, tier=tier)}, **options)

    @property
    def pacer(self) -> Pacer:
        """The per-host states, for inspection."""
        return self._flow.pacer

    def _limiter(self, state: HostState) -> L:
        limiter = self._limiters.get(state.plan.name)
        if limiter is None:
            clock, aligned = self._flow.clock, state.aligned
            # Aligned windows are decided ahead by the host's shift, which follows latency.
            limiter = self._limiter_type(
                self._store,
                clock=(lambda: clock() + aligned.shift_s) if state.plan.clock_shift_s else clock,
            )
            self._limiters[state.plan.name] = limiter
        return limiter

    def _charge(self, op: Hit) -> Any:
        """The limiter's call charging ``op``: its decision, or (async) an awaitable of it."""
        charge = op.charge
        items = charge.items
        limiter = self._limiter(op.state)
        if len(items) == 1:
            return limiter.hit(items[0][0], items[0][1], charge.cost)
        return limiter.hit_many(items, charge.cost)


class SyncDriver(_Transport[Limiter, Req, Resp], ABC):
    """Carries the flow out with ``time.sleep`` and thread locks; a subclass says how to send,
    read and close (httpx's :class:`RateLimitTransport`, the requests adapter)."""

    _limiter_type = Limiter

    def __init__(
        self,
        wire: Wire[Req, Resp],
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
        super().__init__(
            wire,
            hosts=hosts,
            default=default,
            retry=retry,
            store=store,
            clock=clock,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )
        self._sleep = sleep
        self._gates: dict[str, _FairLock] = {}
        self._slots: dict[str, threading.Condition] = {}
        self._lock = threading.Lock()

    # The three I/O calls each HTTP library answers in its own way (httpx, requests).
    @abstractmethod
    def _send(self, request: Req) -> Resp: ...

    @abstractmethod
    def _read(self, response: Resp) -> None: ...

    @abstractmethod
    def _close(self, response: Resp) -> None: ...

    def _per_host(self, state: HostState) -> tuple[_FairLock, threading.Condition]:
        name = state.plan.name
        gate = self._gates.get(name)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(name, _FairLock())
                self._slots.setdefault(name, threading.Condition())
        return gate, self._slots[name]

    def _drive(self, request: Req) -> Resp:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        flow = self._flow.run(request)
        held: list[_FairLock] = []
        try:
            return drive(flow, lambda op: self._run(op, held))
        finally:
            _leave(flow, held)

    def _run(self, op: Op, held: list[_FairLock]) -> Any:
        # Ordered by how often each operation comes.
        if isinstance(op, Enter):
            gate, _ = self._per_host(op.state)
            gate.acquire()
            held.append(gate)
        elif isinstance(op, Send):
            gate, _ = self._per_host(op.state)
            held.remove(gate)
            gate.release()
            try:
                return self._send(op.request)
            except BaseException as exc:
                return Failed(exc)
        elif isinstance(op, Answered):
            _, slot = self._per_host(op.state)
            with slot:
                slot.notify_all()
        elif isinstance(op, Hit):
            return self._charge(op)
        elif isinstance(op, Peek):
            return self._unshifted.peek_many(op.charge.items)
        elif isinstance(op, Sleep):
            self._sleep(op.seconds)
        elif isinstance(op, Slot):
            _, slot = self._per_host(op.state)
            with slot:
                op.state.slot_waiters += 1
                try:
                    slot.wait_for(op.ready, timeout=op.recheck_s)
                finally:
                    op.state.slot_waiters -= 1
        elif isinstance(op, Read):
            try:
                self._read(op.response)
            except BaseException as exc:
                return Failed(exc)
        else:
            self._close(op.response)
        return None


class RateLimitTransport(SyncDriver[httpx.Request, httpx.Response], httpx.BaseTransport):
    """A polite ``httpx.BaseTransport``: paces, learns and retries around ``transport``.

    ``hosts`` maps a host, ``host:port`` or URL prefix to its :class:`HostPolicy`; ``default``
    serves every other host. ``store`` (a store or URL such as ``sqlite:///budgets.db``) holds
    the budgets of known policies, shared by every process using it. ``clock`` (epoch seconds)
    and ``sleep`` are injectable for exact tests. Waits past ``retry``'s caps raise
    :class:`~ratekeeper.errors.WaitTooLongError`.
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
        super().__init__(
            _WIRE,
            hosts=hosts,
            default=default,
            retry=retry,
            store=store,
            clock=clock,
            sleep=sleep,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        return self._drive(request)

    def _send(self, request: httpx.Request) -> httpx.Response:
        return self.transport.handle_request(request)

    def _read(self, response: httpx.Response) -> None:
        response.read()

    def _close(self, response: httpx.Response) -> None:
        response.close()

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()


class AsyncRateLimitTransport(
    _Transport[AsyncLimiter, httpx.Request, httpx.Response], httpx.AsyncBaseTransport
):
    """The asyncio twin of :class:`RateLimitTransport` (same flow, same options)."""

    _limiter_type = AsyncLimiter

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
        super().__init__(
            _WIRE,
            hosts=hosts,
            default=default,
            retry=retry,
            store=store,
            clock=clock,
            random_fn=random_fn,
            on_low_remaining=on_low_remaining,
        )
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._sleep = sleep
        self._gates: dict[str, asyncio.Lock] = {}
        self._slots: dict[str, asyncio.Condition] = {}

    def _per_host(self, state: HostState) -> tuple[asyncio.Lock, asyncio.Condition]:
        # asyncio.Lock wakes its waiters in arrival order: the queue is fair.
        name = state.plan.name
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = asyncio.Lock()
            self._slots[name] = asyncio.Condition()
        return gate, self._slots[name]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` when its host's pacing allows, retrying as the policy says."""
        flow = self._flow.run(request)
        held: list[asyncio.Lock] = []
        try:
            return await drive_async(flow, lambda op: self._run(op, held))
        finally:
            _leave(flow, held)

    async def _run(self, op: Op, held: list[asyncio.Lock]) -> Any:
        # Ordered by how often each operation comes.
        if isinstance(op, Enter):
            gate, _ = self._per_host(op.state)
            await gate.acquire()
            held.append(gate)
        elif isinstance(op, Send):
            gate, _ = self._per_host(op.state)
            held.remove(gate)
            gate.release()
            try:
                return await self.transport.handle_async_request(op.request)
            except BaseException as exc:
                return Failed(exc)
        elif isinstance(op, Answered):
            _, slot = self._per_host(op.state)
            async with slot:
                slot.notify_all()
        elif isinstance(op, Hit):
            return await self._charge(op)
        elif isinstance(op, Peek):
            return await self._unshifted.peek_many(op.charge.items)
        elif isinstance(op, Sleep):
            await self._sleep(op.seconds)
        elif isinstance(op, Slot):
            _, slot = self._per_host(op.state)
            async with slot:
                op.state.slot_waiters += 1
                try:
                    async with asyncio.timeout(op.recheck_s):
                        await slot.wait_for(op.ready)
                except TimeoutError:
                    pass
                finally:
                    op.state.slot_waiters -= 1
        elif isinstance(op, Read):
            try:
                await op.response.aread()
            except BaseException as exc:
                return Failed(exc)
        else:
            await op.response.aclose()
        return None

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.transport.aclose()
