"""The enforcer: one request flow shared by every adapter (ASGI, WSGI, FastAPI, the gateway).

The flow is written once as a generator that yields store operations and receives their
decisions (the shape of httpx's ``auth_flow``); :meth:`Enforcer.admit` and
:meth:`Enforcer.admit_async` are the two thin drivers, and only they touch the store. The
flow identifies the caller, matches the rule, charges every applicable limit in one
all-or-nothing decision and returns a :class:`Ticket`: either a finished :class:`Answer`
(rejection, usage document, cached response) or the headers to add to the app's own answer.
After the app has answered, :meth:`Enforcer.complete` records failed authentications for the
lockout and stores cacheable responses.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.errors import PolicyError, RatekeeperError, StoreError
from ratekeeper.http.cache import CachedResponse, ResponseCache, cacheable_headers
from ratekeeper.http.headers import limit_names, rate_headers, retry_after_headers, retry_after_s
from ratekeeper.http.identity import RequestView
from ratekeeper.http.metrics import Metrics
from ratekeeper.http.usage import usage_document
from ratekeeper.limit import LimitSet
from ratekeeper.limiter import AsyncLimiter, Limiter
from ratekeeper.policy import compile_policy, load_policy
from ratekeeper.policy.plan import CompiledRule, Plan
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.url import mask_url, store_from_url

__all__ = ["Answer", "Enforcer", "Ticket"]

log = logging.getLogger("ratekeeper.http")

Items: TypeAlias = tuple[tuple[LimitSet, str], ...]
# (peek?, items, cost): what the flow asks a driver to run against the store.
Op: TypeAlias = tuple[bool, Items, int]
Flow: TypeAlias = Generator[Op, Decision | None, "Ticket"]
After: TypeAlias = Generator[Op, Decision | None, None]

# How long decisions stay on the in-memory fallback before the real store is tried again.
_FALLBACK_RETRY_S = 5.0


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
    instance or URL) overrides the policy's ``store``.
    """

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
                store = store_from_url(url)
            except (StoreError, ImportError) as exc:
                raise PolicyError(
                    f"{spec.source}: store: expected a usable store URL: {exc}"
                ) from (None)
            log.debug("policy %s uses store %s", spec.source, mask_url(url))
        self.store = store
        self.clock = clock
        self.limiter = Limiter(store, clock=clock) if isinstance(store, Store) else None
        self.async_limiter = (
            AsyncLimiter(store, clock=clock) if isinstance(store, AsyncStore) else None
        )
        self.metrics = Metrics(spec.metrics)
        self._fallback: Limiter | None = None
        self._fallback_until = 0.0
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
        self._exempt = plan.exempt_networks
        self._routes = plan.routes
        self._identify = plan.identifier.identify
        self._status_of = plan.status_of
        self._on_store_error = spec.on_store_error
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
        lockout = self.plan.lockout
        if lockout is not None and (
            lockout.routes is None or lockout.routes.match(view.method, view.path)
        ):
            lock_key = caller.keys[lockout.scope]
            ticket.lock_key = lock_key
            locked = yield (True, ((lockout.lock, lock_key),), 1)
            if locked is not None and locked.states[0].remaining == 0:
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
            if shadowed is not None and not shadowed.allowed:
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
        decision = None
        if enforced:
            decision = yield (False, tuple([(ls, keys[scope]) for ls, scope in enforced]), cost)
            if decision is None:
                if self._on_store_error == "reject":
                    self._leave(ticket.held)
                    return _answer(
                        503,
                        [("Retry-After", "1")],
                        self.plan.body.error(
                            503, "store_unavailable", "Rate limiting is unavailable; retry shortly."
                        ),
                    )
            elif not decision.allowed:
                self._leave(ticket.held)
                return self._rejected(rule, decision)
            else:
                ticket.headers = rate_headers(decision, zone=self._zone, ietf=self._ietf)
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
        binding = decision.binding
        zone = binding.limit_set
        status = self._status_of.get(zone, 429)
        self.metrics.count(rule.name, zone, "rejected")
        wait = retry_after_s(decision)
        violated = [
            name
            for name, state in zip(limit_names(decision), decision.states, strict=True)
            if not state.allowed
        ]
        headers = rate_headers(decision, zone=self._zone, ietf=self._ietf)
        headers += retry_after_headers(wait)
        return _answer(status, headers, self.plan.body.rejection(decision, status, wait, violated))

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
        if failed is not None and (not failed.allowed or failed.remaining == 0):
            yield (False, ((lockout.lock, ticket.lock_key),), 1)

    def store_response(
        self, ticket: Ticket, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Keep a finished 200 answer for the rule's cache TTL (when the ticket asks for it)."""
        if ticket.cache_key is not None and status == 200:
            cached = CachedResponse(status, cacheable_headers(headers), body)
            self.cache.put(ticket.cache_key, ticket.cache_ttl_s, cached)

    # -- drivers ---------------------------------------------------------------------------

    def _failed(self, op: Op, exc: Exception) -> Decision | None:
        if isinstance(exc, RatekeeperError) and not isinstance(exc, StoreError):
            raise exc
        self.metrics.store_error()
        log.warning("store %r failed: %s", self.store, exc)
        if self._on_store_error != "memory":
            return None
        if self._fallback is None:
            self._fallback = Limiter(MemoryStore(), clock=self.clock)
        self._fallback_until = time.monotonic() + _FALLBACK_RETRY_S
        self.metrics.fallback(True)
        return _run(self._fallback, op)

    def _run_sync(self, op: Op) -> Decision | None:
        if self._fallback is not None:
            if time.monotonic() < self._fallback_until:
                return _run(self._fallback, op)
            self.metrics.fallback(False)
            self._fallback = None
        started = time.perf_counter()
        try:
            if self.limiter is not None:
                result = _run(self.limiter, op)
            else:
                raise PolicyError(f"store {self.store!r} has no synchronous interface")
        except Exception as exc:
            return self._failed(op, exc)
        self.metrics.store_latency(time.perf_counter() - started)
        return result

    async def _run_async(self, op: Op) -> Decision | None:
        limiter = self.async_limiter
        if limiter is None or self._fallback is not None:
            return self._run_sync(op)
        started = time.perf_counter()
        try:
            peek, items, cost = op
            result = await (limiter.peek_many(items) if peek else limiter.hit_many(items, cost))
        except Exception as exc:
            return self._failed(op, exc)
        self.metrics.store_latency(time.perf_counter() - started)
        return result

    def admit(self, view: RequestView, rule: CompiledRule | None = None) -> Ticket:
        """Run admission synchronously (WSGI); ``rule`` replaces route matching."""
        flow = self._admit(view, rule)
        try:
            op = next(flow)
            while True:
                op = flow.send(self._run_sync(op))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def admit_async(self, view: RequestView, rule: CompiledRule | None = None) -> Ticket:
        """Run admission on the event loop (ASGI); ``rule`` replaces route matching."""
        flow = self._admit(view, rule)
        try:
            op = next(flow)
            while True:
                op = flow.send(await self._run_async(op))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def complete(self, ticket: Ticket, status: int) -> None:
        """After the app answered: release in-flight slots, count failed authentications."""
        self._leave(ticket.held)
        if ticket.lock_key is None:
            return
        flow = self._after(ticket, status)
        try:
            op = next(flow)
            while True:
                op = flow.send(self._run_sync(op))
        except StopIteration:
            return

    async def complete_async(self, ticket: Ticket, status: int) -> None:
        """The asyncio twin of :meth:`complete`."""
        self._leave(ticket.held)
        if ticket.lock_key is None:
            return
        flow = self._after(ticket, status)
        try:
            op = next(flow)
            while True:
                op = flow.send(await self._run_async(op))
        except StopIteration:
            return


def _run(limiter: Limiter, op: Op) -> Decision:
    peek, items, cost = op
    return limiter.peek_many(items) if peek else limiter.hit_many(items, cost)


def _exempt(ip: str, networks: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
