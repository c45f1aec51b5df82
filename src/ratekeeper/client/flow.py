"""The client's one flow: pace, send, learn, retry, written once as a generator of operations.

The flow yields small operations (enter the host's queue, wait for a slot, ask the limiter,
sleep, send, read, close) and receives their results; the transports only carry them out,
driven by :func:`ratekeeper.flows.drive` or :func:`~ratekeeper.flows.drive_async`. An HTTP
library is seen through a :class:`Wire` (its request's method and URL, its answer's status,
headers and body), so httpx's transports and a requests adapter run the same flow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import httpx

from ratekeeper.client.hints import NO_HINTS, Hints, Quota, hint_headers, read_hints
from ratekeeper.client.pacing import Charge, HostPolicy
from ratekeeper.client.retry import (
    IDEMPOTENT_METHODS,
    RetryPolicy,
    RetryVerdict,
    check_wait,
    plan_retry,
)
from ratekeeper.client.state import HostState, Pacer
from ratekeeper.clock import Clock
from ratekeeper.decision import Decision
from ratekeeper.errors import ClientConfigError

__all__ = [
    "Answered",
    "ClientFlow",
    "Close",
    "Enter",
    "Failed",
    "Hit",
    "LowRemainingCallback",
    "Op",
    "Peek",
    "Read",
    "Send",
    "Sleep",
    "Slot",
    "Wire",
]

log = logging.getLogger("ratekeeper.client")

LowRemainingCallback: TypeAlias = Callable[[str, Quota], None]
"""Called with the host's name and the quota that fell under its ``low_remaining``."""

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ReqT_contra = TypeVar("ReqT_contra", contravariant=True)
RespT_contra = TypeVar("RespT_contra", contravariant=True)


class Wire(Protocol[ReqT_contra, RespT_contra]):
    """How the flow sees one HTTP library's requests and answers."""

    def method(self, request: ReqT_contra) -> str:
        """The request's method, upper-case."""

    def url(self, request: ReqT_contra) -> httpx.URL:
        """The request's URL."""

    def status(self, response: RespT_contra) -> int:
        """The answer's status code."""

    def raw_headers(self, response: RespT_contra) -> Iterable[tuple[bytes, bytes]]:
        """The answer's header fields as ``(name, value)`` bytes."""

    def content_length(self, response: RespT_contra) -> str | None:
        """The answer's ``Content-Length`` field, if any."""

    def body(self, response: RespT_contra) -> bytes:
        """The answer's body, once :class:`Read` has been carried out."""

    def is_stale(self, error: BaseException) -> bool:
        """Whether ``error`` says a kept-alive connection was closed before an answer came."""

    def user_agent(self, request: ReqT_contra) -> str | None:
        """The request's ``User-Agent``, if any."""

    def set_user_agent(self, request: ReqT_contra, value: str) -> None:
        """Set the request's ``User-Agent``."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Hit:
    """Charge ``charge`` to the host's known policy; answers a :class:`Decision`."""

    state: HostState
    charge: Charge


@dataclass(frozen=True, slots=True)
class Peek:
    """Look at ``charge``'s windows on the real clock without charging; answers a Decision."""

    state: HostState
    charge: Charge


@dataclass(frozen=True, slots=True)
class Slot:
    """Wait until the host may have another request (of ``charge``) in flight, or
    ``recheck_s`` has passed (the flow checks again: a wake-up missed between threads costs a
    moment, not a hang)."""

    state: HostState
    charge: Charge | None = None
    recheck_s: float = 1.0

    def ready(self) -> bool:
        """Whether the request may be in flight now."""
        return self.state.can_start(self.charge)


@dataclass(frozen=True, slots=True)
class Send(Generic[Req]):
    """Leave the host's queue (the request's turn is taken), then send; answers the response
    or :class:`Failed`."""

    request: Req
    state: HostState


@dataclass(frozen=True, slots=True)
class Read(Generic[Resp]):
    """Read the answer's body; answers ``None`` or :class:`Failed`."""

    response: Resp


@dataclass(frozen=True, slots=True)
class Close(Generic[Resp]):
    """Close an answer that will not be returned."""

    response: Resp


@dataclass(frozen=True, slots=True)
class Enter:
    """Join the host's queue (one request paces at a time, in arrival order)."""

    state: HostState


@dataclass(frozen=True, slots=True)
class Answered:
    """Wake the requests waiting for a slot of the host."""

    state: HostState


@dataclass(frozen=True, slots=True)
class Failed:
    """The I/O of a :class:`Send` or :class:`Read` raised: the flow settles the host's books
    before the error goes on, so a driver hands it back instead of raising it."""

    error: BaseException


Op: TypeAlias = Sleep | Hit | Peek | Slot | Send[Any] | Read[Any] | Close[Any] | Enter | Answered


@dataclass(frozen=True, slots=True)
class _HostOps:
    """One host's operations without arguments, made once: the hot path allocates none."""

    enter: Enter
    answered: Answered
    slot: Slot
    # Per charge (one, or one per route of a server's policy): its hit, peek and slot.
    charges: dict[int, tuple[Hit, Peek, Slot]]

    @classmethod
    def of(cls, state: HostState) -> _HostOps:
        return cls(Enter(state), Answered(state), Slot(state), {})

    def for_charge(self, charge: Charge) -> tuple[Hit, Peek, Slot]:
        """The hit, peek and slot operations of ``charge`` (charges live as long as their
        plan)."""
        found = self.charges.get(id(charge))
        if found is None:
            state = self.enter.state
            found = (Hit(state, charge), Peek(state, charge), Slot(state, charge))
            self.charges[id(charge)] = found
        return found


# Error bodies larger than this are not read for hints (they would be buffered in memory).
_MAX_HINT_BODY = 64 * 1024
# What HTTP libraries send when the caller sets no User-Agent.
_LIBRARY_AGENTS = ("python-httpx/", "python-requests/", "python-urllib3/")


def _loggable(url: httpx.URL) -> str:
    """The URL without its query (which may carry API keys), for logs and errors."""
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"


class ClientFlow(Generic[Req, Resp]):
    """The client's configuration, its hosts' states and the flow of one request."""

    def __init__(
        self,
        wire: Wire[Req, Resp],
        *,
        hosts: Mapping[str, HostPolicy] | None,
        default: HostPolicy | None,
        retry: RetryPolicy | None,
        clock: Clock,
        random_fn: Callable[[], float],
        on_low_remaining: LowRemainingCallback | None,
        shared_store: bool = False,
    ) -> None:
        self.wire = wire
        self.retry = retry if retry is not None else RetryPolicy()
        self.pacer = Pacer(
            hosts=dict(hosts or {}),
            default=default if default is not None else HostPolicy(),
            backoff_base_s=self.retry.backoff_base_s,
            shared_store=shared_store,
        )
        self.clock = clock
        self.random = random_fn
        self.on_low_remaining = on_low_remaining
        self._ops: dict[str, _HostOps] = {}

    def run(self, request: Req) -> Generator[Op, Any, Resp]:
        """Pace, send, learn, and retry while the retry policy says so."""
        wire = self.wire
        method = wire.method(request)
        url = wire.url(request)
        state = self.pacer.state_for(url)
        ops = self._ops.get(state.plan.name)
        if ops is None:
            ops = self._ops.setdefault(state.plan.name, _HostOps.of(state))
            self._identify(state, request)
        elif state.plan.policy.user_agent is not None:
            self._identify(state, request)
        send: Send[Req] = Send(request, state)
        charge = state.plan.charge_for(method, url.path)
        retries = 0
        waited = 0.0
        # A refused attempt or one that never reached the server was charged already: its
        # retry is not charged again while that charge holds, i.e. until the soonest of its
        # windows ends; after that, the retry is charged. A bucket or sliding window lets a unit
        # fade while the retry's own charge would hold longer: there the retry is charged.
        paid = charge is not None and charge.windowed
        paid_until = -math.inf
        charged_until = -math.inf
        stale_retried = False
        while True:
            yield ops.enter
            waited, lapses = yield from self._pace(state, ops, charge, paid_until, url, waited)
            if lapses > -math.inf:
                charged_until = lapses
            sent_at = self.clock()
            seq = state.on_send(sent_at, charge)
            outcome = yield send
            if type(outcome) is Failed:
                yield from self._abort(state, ops, seq)
                if stale_retried or not self._stale(method, outcome.error):
                    raise outcome.error
                # A keep-alive connection the server closed as the request left: it never
                # arrived. Once, on a fresh connection (the pool dropped the dead one).
                log.info("%s %s: %r, retrying once", method, _loggable(url), outcome.error)
                state.refund(sent_at)
                stale_retried = True
                paid_until = charged_until if paid else -math.inf
                continue
            response: Resp = outcome
            hints, status = yield from self._answer(state, ops, seq, sent_at, response)
            if status not in self.retry.statuses:
                return response
            verdict = self._verdict(method, url, status, hints, retries, waited)
            if not verdict.retry:
                return response
            if status == 429 or hints.sharp_wait_s is not None:
                # Refused, not failed: the server did not count it.
                state.refund(sent_at)
                paid_until = charged_until if paid else -math.inf
            yield Close(response)
            if verdict.wait_s > 0:
                yield Sleep(verdict.wait_s)
            waited += verdict.wait_s
            retries += 1

    def _answer(
        self, state: HostState, ops: _HostOps, seq: int, sent_at: float, response: Resp
    ) -> Generator[Op, Any, tuple[Hints, int]]:
        """Read what an answer says about the limits and learn from it."""
        wire = self.wire
        now = self.clock()
        status = wire.status(response)
        found = hint_headers(wire.raw_headers(response))
        body = None
        if status in self.retry.statuses or status == 429:
            # Only a body of a stated, small length: a server streaming an endless refusal
            # must not hold the client (or its memory).
            length = wire.content_length(response)
            if length is not None and length.isdigit() and int(length) <= _MAX_HINT_BODY:
                read = yield Read(response)
                if type(read) is Failed:
                    yield from self._abort(state, ops, seq)
                    raise read.error
                body = wire.body(response)[:_MAX_HINT_BODY]
        date = found.get("date")
        skew = state.observe_date(date, now, sent_at) if date is not None else state.skew.skew_s
        useful = len(found) > (date is not None) or body
        hints = read_hints(found, body, now, skew) if useful else NO_HINTS
        low = state.on_answer(seq, now, status, hints, sent_at)
        # Read after on_answer: a request that starts waiting later sees the free slot.
        if state.slot_waiters:
            yield ops.answered
        if low is not None:
            self._warn_low(state, low)
        return hints, status

    def _verdict(
        self,
        method: str,
        url: httpx.URL,
        status: int,
        hints: Hints,
        retries: int,
        waited: float,
    ) -> RetryVerdict:
        loggable = _loggable(url)
        verdict = plan_retry(
            method=method,
            status=status,
            hints=hints,
            retries_done=retries,
            waited_s=waited,
            policy=self.retry,
            random=self.random,
            url=loggable,
            now=self.clock(),
        )
        if verdict.retry:
            log.info(
                "%s %s: retry %d in %.2fs (%s)",
                method,
                loggable,
                retries + 1,
                verdict.wait_s,
                verdict.reason,
            )
        else:
            log.info("%s %s: %s, giving up (%s)", method, loggable, status, verdict.reason)
        return verdict

    def _stale(self, method: str, error: BaseException) -> bool:
        """Whether ``error`` is a kept-alive connection found closed, on a request safe to
        send again."""
        return method.upper() in IDEMPOTENT_METHODS and self.wire.is_stale(error)

    def _identify(self, state: HostState, request: Req) -> None:
        """Send the host's ``user_agent`` instead of a library's default; warn once when the
        host's policy requires one and none is set."""
        policy = state.plan.policy
        agent = policy.user_agent
        current = self.wire.user_agent(request)
        if current is not None and not current.startswith(_LIBRARY_AGENTS):
            return
        if agent is not None:
            self.wire.set_user_agent(request, agent)
            return
        server = policy.server_policy
        if server is not None and server.user_agent_required:
            log.warning(
                "%s requires a User-Agent that lets its owner reach you; set "
                "HostPolicy(user_agent='yourapp/1.0 (you@example.com)')",
                state.plan.name,
            )

    def _abort(self, state: HostState, ops: _HostOps, seq: int) -> Generator[Op, Any, None]:
        """Request ``seq`` ended without an answer: free its slot."""
        state.on_abort(seq, self.clock())
        if state.slot_waiters:
            yield ops.answered

    def _pace(
        self,
        state: HostState,
        ops: _HostOps,
        charge: Charge | None,
        paid_until: float,
        url: httpx.URL,
        waited: float,
    ) -> Generator[Op, Any, tuple[float, float]]:
        """Wait (holding the host's queue) until this request may go; returns total waited and
        when the soonest window ``charge`` was charged to ends (``-inf``: nothing charged, or
        paid already by a refused attempt whose charge holds until ``paid_until``: decided
        when the request may go, not before its wait, which may outlast that charge)."""
        plan = state.plan
        slot = ops.for_charge(charge)[2] if charge is not None else ops.slot
        while True:
            if not state.can_start(charge):
                yield slot
                continue
            now = self.clock()
            wait = state.wait_s(now, charge)
            if wait <= 0 and charge is not None and now >= paid_until:
                hit, peek, _ = ops.for_charge(charge)
                if charge.aligned and state.aligned.needs_room(charge, now):
                    state.aligned.record_room(charge, (yield peek), now)
                decision: Decision = yield hit
                if decision.allowed:
                    ends = min(s.reset_at for s in decision.states) - decision.now
                    wait = 0.0
                    if charge.aligned:
                        wait = state.aligned.early_wait_s(charge, decision, now)
                    if wait > 0:
                        yield Sleep(wait)
                        waited += wait
                    return waited, now + ends
                if not decision.satisfiable:
                    raise ClientConfigError(
                        f"{_loggable(url)}: one request can never pass the policy for "
                        f"{plan.name} ({decision.binding.limit.rate})"
                    )
                wait = decision.retry_after_s
            if wait <= 0:
                return waited, -math.inf
            check_wait(
                wait, waited, self.retry, url=_loggable(url), now=now, why=f"pacing {plan.name}"
            )
            yield Sleep(wait)
            waited += wait

    def _warn_low(self, state: HostState, quota: Quota) -> None:
        # A warning the first time for a host; after that the log would repeat every window.
        level = logging.INFO if state.warned else logging.WARNING
        state.warned = True
        log.log(
            level,
            "%s: %d request(s) left of %s (quota %r), reset in %s",
            state.plan.name,
            quota.remaining,
            quota.limit if quota.limit is not None else "?",
            quota.name,
            f"{quota.reset_in_s:.0f}s" if quota.reset_in_s is not None else "?",
        )
        if self.on_low_remaining is not None:
            self.on_low_remaining(state.plan.name, quota)
