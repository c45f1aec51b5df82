"""The enforcer: one request flow shared by every adapter (ASGI, WSGI, FastAPI, the gateway).

The flow is written once as a generator that yields store operations and receives their
decisions (the shape of httpx's ``auth_flow``); :meth:`Enforcer.admit` and
:meth:`Enforcer.admit_async` are the two thin drivers, and only they touch the store. The
flow identifies the caller, matches the rule, charges every applicable limit in one
all-or-nothing decision and returns a :class:`Ticket`: either a finished :class:`Answer`
(rejection, usage document, cached response) or the headers to add to the app's own answer.
After the app has answered, :meth:`Enforcer.complete` records failed authentications for the
lockout and stores cacheable responses; :meth:`Enforcer.report` records them for a request
that a proxy in front admitted through the decision endpoint.

The store is wrapped in a :class:`~ratekeeper.stores.fallback.FallbackStore`, which applies the
policy's ``on_store_error`` while the store is down, logs one line per outage and per recovery,
and probes for the store's return; the flow only has to tell its degraded decisions apart.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.errors import PolicyError, StoreError
from ratekeeper.http.cache import CachedResponse, ResponseCache, cacheable_headers
from ratekeeper.http.compiled import CompiledLockout, CompiledRule, Plan, compile_policy
from ratekeeper.http.headers import (
    PartitionKeys,
    rate_headers,
    retry_after_headers,
    retry_after_s,
)
from ratekeeper.http.identity import Caller, RequestView
from ratekeeper.http.metrics import Metrics
from ratekeeper.http.usage import usage_document
from ratekeeper.limit import LimitSet
from ratekeeper.policy import load_policy
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Items, Store
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision, DualStore, FallbackStore
from ratekeeper.stores.url import mask_url, store_from_url

__all__ = ["Answer", "Enforcer", "Ticket"]

log = logging.getLogger("ratekeeper.http")

Pairs: TypeAlias = tuple[tuple[LimitSet, str], ...]
# (peek?, items, cost): what the flow asks a driver to run against the store.
Op: TypeAlias = tuple[bool, Pairs, int]
Flow: TypeAlias = Generator[Op, Decision, "Ticket"]
After: TypeAlias = Generator[Op, Decision, None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response ratekeeper gives itself: status, headers (str pairs) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class Ticket:
    """The outcome of admission: ``answer`` to send instead of calling the app, or ``headers``
    to add to the app's answer; the rest is what :meth:`Enforcer.complete` needs."""

    answer: Answer | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    lock_key: str | None = None
    cache_key: str | None = None
    cache_ttl_s: float = 0.0
    held: tuple[str, ...] = ()


_PASS = Ticket()


def _answer(status: int, headers: list[tuple[str, str]], body: tuple[bytes, str]) -> Ticket:
    content, content_type = body
    return Ticket(answer=Answer(status, [*headers, ("Content-Type", content_type)], content))


class Enforcer:
    """A compiled policy bound to a store, a clock and metrics.

    ``policy`` may be a path, a :class:`Policy` or a compiled :class:`Plan`. ``store`` (an
    instance or URL) overrides the policy's ``store``; ``fallback`` is the
    :class:`FallbackStore` that decisions go through (``.degraded``, ``.outages``).
    """

    store: Store | AsyncStore

    def __init__(
        self,
        policy: Plan | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
    ) -> None:
        if isinstance(policy, str | Path):
            policy = load_policy(policy)
        if isinstance(policy, Policy):
            policy = compile_policy(policy, clock=clock)
        self.plan = plan = policy
        spec = plan.policy
        if store is None or isinstance(store, str):
            url = store or spec.store
            try:
                self.store = store_from_url(url)
            except (StoreError, ImportError) as exc:
                raise PolicyError(
                    f"{spec.source}: store: expected a usable store URL: {exc}"
                ) from (None)
            log.debug("policy %s uses store %s", spec.source, mask_url(url))
        else:
            self.store = store
        self.clock = clock
        self._synchronous = isinstance(self.store, Store)
        # A store with no async face decides on the event loop anyway (see _BothFaces): the
        # async entry points then drive the flow synchronously, with no coroutine per step.
        self._on_loop = self._synchronous and not isinstance(self.store, AsyncStore)
        self.fallback = FallbackStore(_both_faces(self.store), spec.on_store_error)
        self.metrics = Metrics(spec.metrics)
        self.metrics.watch_store(self.fallback)
        self._in_flight: dict[str, int] = {}
        self._in_flight_lock = threading.Lock()
        self.cache = ResponseCache(
            max_entries=spec.cache.max_entries,
            max_body_bytes=spec.cache.max_body_bytes,
            clock=clock,
        )
        self.header_names = plan.identifier.header_names
        self._ua_required = spec.user_agent_required
        self._usage_path = spec.usage_path
        self._zone = spec.zone_header
        self._ietf = spec.ietf_headers
        self._pk = (
            PartitionKeys(spec.ietf_partition_key_secret) if spec.ietf_partition_key else None
        )
        self._exempt = plan.exempt_networks
        self._routes = plan.routes
        self._identify = plan.identifier.identify
        self._status_of = plan.status_of
        self._key_names = " or ".join(
            "Authorization: Bearer" if h == "authorization" else h
            for h in plan.identifier.key_headers
        )

    def __repr__(self) -> str:
        return f"<Enforcer policy={self.plan.policy.source!r} store={self.store!r}>"

    # -- the flow (pure apart from in-process counters; store work is yielded) -----------

    def _admit(self, view: RequestView, rule: CompiledRule | None) -> Flow:
        if self._ua_required and not view.headers.get("user-agent", "").strip():
            return _answer(
                403,
                [],
                self.plan.body.error(
                    403,
                    "user_agent_required",
                    "A User-Agent header naming your application and a contact is required.",
                ),
            )
        if rule is None:
            rule = self._routes.match(view.method, view.path)
        if rule.exempt:
            return _PASS
        caller = self._identify(view)
        if caller is None:
            self.metrics.count(rule.name, "", "refused")
            return _answer(
                401,
                [("WWW-Authenticate", "Bearer")],
                self.plan.body.error(
                    401, "missing_api_key", f"An API key is required ({self._key_names})."
                ),
            )
        if self._exempt and _exempt(caller.ip, self._exempt):
            return _PASS
        ticket = Ticket()
        watched = self._lockout_of(view, caller)
        if watched is not None:
            lockout, lock_key = watched
            ticket.lock_key = lock_key
            locked = yield (True, ((lockout.lock, lock_key),), 0)
            if locked.states[0].remaining == 0 and _counted(locked):
                self.metrics.count(rule.name, "lockout", "rejected")
                wait = max(1, int(-(-(locked.states[0].reset_at - locked.now) // 1)))
                return _answer(
                    429,
                    [("Retry-After", str(wait))],
                    self.plan.body.error(
                        429,
                        "too_many_failed_attempts",
                        f"Too many failed authentication attempts. Retry after {wait} seconds.",
                    ),
                )
        if rule.in_flight:
            refused = self._enter(rule.in_flight)
            if refused is not None:
                self.metrics.count(rule.name, refused, "rejected")
                return self._overloaded(refused)
            ticket.held = tuple(name for name, _ in rule.in_flight)
        enforced, shadow = rule.enforced, rule.shadow
        if rule.tiers and caller.plan is not None:
            enforced, shadow = rule.tiers.get(caller.plan, (enforced, shadow))
        keys = caller.keys
        cost = rule.cost
        if shadow:
            shadowed = yield (False, tuple([(ls, keys[scope]) for ls, scope in shadow]), cost)
            if not shadowed.allowed and _counted(shadowed):
                zone = shadowed.binding.limit_set
                self.metrics.count(rule.name, zone, "shadow_rejected")
                log.info(
                    "shadow: would reject %s %s for %s by %s (retry after %.3fs)",
                    view.method,
                    rule.name,
                    caller.label,
                    zone,
                    shadowed.retry_after_s,
                )
        decision: Decision | None = None
        if enforced:
            decision = yield (False, tuple([(ls, keys[scope]) for ls, scope in enforced]), cost)
            if not _counted(decision):
                if not decision.allowed:
                    self._leave(ticket.held)
                    self.metrics.count(rule.name, "", "store_unavailable")
                    return _answer(
                        503,
                        retry_after_headers(retry_after_s(decision)),
                        self.plan.body.error(
                            503, "store_unavailable", "Rate limiting is unavailable; retry shortly."
                        ),
                    )
                # Failing open: the counts of a fresh key would be made up, so no headers.
                self.metrics.count(rule.name, "", "unchecked")
                decision = None
            elif not decision.allowed:
                self._leave(ticket.held)
                return self._rejected(rule, decision)
            else:
                ticket.headers = rate_headers(
                    decision, zone=self._zone, ietf=self._ietf, partition_keys=self._pk
                )
                self.metrics.count(rule.name, decision.binding.limit_set, "allowed")
        if self._usage_path and view.path == self._usage_path and decision is not None:
            self._leave(ticket.held)
            return Ticket(
                answer=Answer(
                    200,
                    [*ticket.headers, ("Content-Type", "application/json")],
                    usage_document(decision),
                )
            )
        if rule.cache_ttl_s and view.method == "GET":
            key = f"{view.path}?{view.query}"
            if self.plan.policy.cache.vary == "caller":
                key = f"{key}|{caller.keys['caller']}"
            hit = self.cache.get(key)
            if hit is not None:
                self._leave(ticket.held)
                return Ticket(
                    answer=Answer(
                        hit.status, [*hit.headers, *ticket.headers, ("X-Cache", "HIT")], hit.body
                    )
                )
            ticket.cache_key = key
            ticket.cache_ttl_s = rule.cache_ttl_s
        return ticket

    def _rejected(self, rule: CompiledRule, decision: Decision) -> Ticket:
        zone = decision.binding.limit_set
        status = self._status_of.get(zone, 429)
        self.metrics.count(rule.name, zone, "rejected")
        wait = retry_after_s(decision)
        headers = rate_headers(decision, zone=self._zone, ietf=self._ietf, partition_keys=self._pk)
        if wait is not None:
            headers.append(("Retry-After", str(wait)))
        body, content_type = self.plan.body.rejection(decision, status, wait)
        headers.append(("Content-Type", content_type))
        return Ticket(answer=Answer(status, headers, body))

    def _lockout_of(self, view: RequestView, caller: Caller) -> tuple[CompiledLockout, str] | None:
        """The lockout watching this request and the key it counts for, if any."""
        lockout = self.plan.lockout
        if lockout is None or (
            lockout.routes is not None and not lockout.routes.match(view.method, view.path)
        ):
            return None
        return lockout, caller.keys[lockout.scope]

    def _overloaded(self, zone: str) -> Ticket:
        status = self._status_of.get(zone, 503)
        headers = [("Retry-After", "1")]
        if self._zone:
            headers.append(("X-RateLimit-Zone", zone))
        return _answer(
            status,
            headers,
            self.plan.body.error(status, "overloaded", "The service is overloaded; retry shortly."),
        )

    def _enter(self, limits: tuple[tuple[str, int], ...]) -> str | None:
        with self._in_flight_lock:
            counts = self._in_flight
            for name, capacity in limits:
                if counts.get(name, 0) >= capacity:
                    return name
            for name, _ in limits:
                counts[name] = counts.get(name, 0) + 1
        return None

    def _leave(self, names: tuple[str, ...]) -> None:
        if names:
            with self._in_flight_lock:
                for name in names:
                    self._in_flight[name] -= 1

    def in_flight(self, name: str) -> int:
        """Requests currently inside the app under the in-flight limit ``name``."""
        return self._in_flight.get(name, 0)

    def _after(self, ticket: Ticket, status: int) -> After:
        lockout = self.plan.lockout
        if lockout is None or ticket.lock_key is None or status not in lockout.statuses:
            return
        failed = yield (False, ((lockout.failures, ticket.lock_key),), 1)
        if _counted(failed) and (not failed.allowed or failed.remaining == 0):
            yield (False, ((lockout.lock, ticket.lock_key),), 1)

    def _report(self, view: RequestView, status: int) -> After:
        lockout = self.plan.lockout
        if lockout is None or status not in lockout.statuses:
            return
        # The same caller and lockout key as admission found, or none where it found none.
        if self._routes.match(view.method, view.path).exempt:
            return
        caller = self._identify(view)
        if caller is None or (self._exempt and _exempt(caller.ip, self._exempt)):
            return
        watched = self._lockout_of(view, caller)
        if watched is not None:
            yield from self._after(Ticket(lock_key=watched[1]), status)

    def store_response(
        self, ticket: Ticket, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Keep a finished 200 answer for the rule's cache TTL (when the ticket asks for it)."""
        if ticket.cache_key is not None and status == 200:
            cached = CachedResponse(status, cacheable_headers(headers), body)
            self.cache.put(ticket.cache_key, ticket.cache_ttl_s, cached)

    # -- drivers ---------------------------------------------------------------------------

    def _run_sync(self, op: Op) -> Decision:
        if not self._synchronous:
            raise PolicyError(
                f"store {self.store!r} has no synchronous interface: use the ASGI middleware"
            )
        peek, items, cost = op
        started = time.perf_counter()
        decision = self.fallback.decide(items, cost, self.clock(), peek=peek)
        self.metrics.store_latency(time.perf_counter() - started)
        return decision

    async def _run_async(self, op: Op) -> Decision:
        peek, items, cost = op
        started = time.perf_counter()
        decision = await self.fallback.decide_async(items, cost, self.clock(), peek=peek)
        self.metrics.store_latency(time.perf_counter() - started)
        return decision

    def admit(self, view: RequestView, rule: CompiledRule | None = None) -> Ticket:
        """Run admission synchronously (WSGI); ``rule`` replaces route matching."""
        return _drive(self._admit(view, rule), self._run_sync)

    async def admit_async(self, view: RequestView, rule: CompiledRule | None = None) -> Ticket:
        """Run admission on the event loop (ASGI); ``rule`` replaces route matching."""
        if self._on_loop:
            return _drive(self._admit(view, rule), self._run_sync)
        return await _drive_async(self._admit(view, rule), self._run_async)

    def complete(self, ticket: Ticket, status: int) -> None:
        """After the app answered: release in-flight slots, count failed authentications."""
        self._leave(ticket.held)
        if ticket.lock_key is not None:
            _drive(self._after(ticket, status), self._run_sync)

    async def complete_async(self, ticket: Ticket, status: int) -> None:
        """The asyncio twin of :meth:`complete`."""
        self._leave(ticket.held)
        if ticket.lock_key is not None:
            if self._on_loop:
                _drive(self._after(ticket, status), self._run_sync)
            else:
                await _drive_async(self._after(ticket, status), self._run_async)

    def report(self, view: RequestView, status: int) -> None:
        """Count an answer that the app gave to a request admitted elsewhere (a proxy asked the
        decision endpoint): a failed authentication counts for the lockout exactly as
        :meth:`complete` counts it after :meth:`admit`."""
        _drive(self._report(view, status), self._run_sync)

    async def report_async(self, view: RequestView, status: int) -> None:
        """The asyncio twin of :meth:`report`."""
        if self._on_loop:
            _drive(self._report(view, status), self._run_sync)
        else:
            await _drive_async(self._report(view, status), self._run_async)

    @classmethod
    def of(
        cls,
        policy: Enforcer | Plan | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
    ) -> Enforcer:
        """``policy`` itself if it is an enforcer, else a new one (what the middlewares take)."""
        return policy if isinstance(policy, Enforcer) else cls(policy, store=store, clock=clock)


def _drive(flow: Generator[Op, Decision, T], run: Callable[[Op], Decision]) -> T:
    try:
        op = next(flow)
        while True:
            op = flow.send(run(op))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _drive_async(
    flow: Generator[Op, Decision, T], run: Callable[[Op], Awaitable[Decision]]
) -> T:
    try:
        op = next(flow)
        while True:
            op = flow.send(await run(op))
    except StopIteration as stop:
        result: T = stop.value
        return result


def _counted(decision: Decision) -> bool:
    """Whether the decision counted anything: not one a failing-open or -closed store made up."""
    return type(decision) is not DegradedDecision or decision.fail_mode is FailMode.FALLBACK


class _BothFaces:
    """A store with one face (sync or async) given the other, as :class:`FallbackStore` needs.

    A synchronous store's async face decides on the event loop: such stores are local ones
    (the gateway shows only the sync face of SQLite and memory), for which a hop to a worker
    thread would cost more than the decision.
    """

    __slots__ = ("_async", "_sync")

    def __init__(self, store: Store | AsyncStore) -> None:
        self._sync = store if isinstance(store, Store) else None
        self._async = store if isinstance(store, AsyncStore) else None

    def __repr__(self) -> str:
        return repr(self._sync or self._async)

    def _sync_face(self) -> Store:
        if self._sync is None:
            raise PolicyError(f"store {self!r} has no synchronous interface")
        return self._sync

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide on the synchronous face."""
        return self._sync_face().decide(items, cost, now, peek=peek)

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """Decide on the async face, or on the synchronous one when there is none."""
        if self._async is None:
            return self.decide(items, cost, now, peek=peek)
        return await self._async.decide_async(items, cost, now, peek=peek)

    def reset(self, items: Items) -> None:
        """Reset on the synchronous face."""
        self._sync_face().reset(items)

    async def reset_async(self, items: Items) -> None:
        """Reset on the async face, or on the synchronous one."""
        if self._async is None:
            self.reset(items)
        else:
            await self._async.reset_async(items)

    def close(self) -> None:
        """Close the synchronous face."""
        self._sync_face().close()

    async def close_async(self) -> None:
        """Close the async face, or the synchronous one."""
        if self._async is None:
            self.close()
        else:
            await self._async.close_async()


def _both_faces(store: Store | AsyncStore) -> DualStore:
    if isinstance(store, Store) and isinstance(store, AsyncStore):
        return store
    return _BothFaces(store)


def _exempt(ip: str, networks: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
