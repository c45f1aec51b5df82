"""The enforcer: one admission flow shared by every adapter (ASGI, WSGI, FastAPI, the gateway).

Admission is a list of stages (:mod:`ratekeeper.http.stages`: user agent, route, identify,
lockout, in-flight, tiers, shadow, decide, usage) run over one request context; stages yield
store operations and receive their decisions (:mod:`ratekeeper.http.flow`), so
:meth:`Enforcer.admit` and :meth:`Enforcer.admit_async` are only the two drivers
(:mod:`ratekeeper.flows`) and they alone touch the store. Admission returns a
:class:`~ratekeeper.http.flow.Ticket`: a finished answer (a refusal, the usage document) or the
headers to add to the app's own answer. After the app has answered, :meth:`Enforcer.complete`
releases in-flight slots and counts failed authentications for the lockout;
:meth:`Enforcer.report` counts them for a request that a proxy in front admitted through the
decision endpoint.

The store is wrapped in a :class:`~ratekeeper.stores.fallback.FallbackStore`, which applies the
policy's ``on_store_error`` while the store is down, logs one line per outage and per recovery,
and probes for the store's return; the decide stage only has to tell degraded decisions apart.
On a sharded store (Redis Cluster) it is one per shard
(:func:`~ratekeeper.stores.fallback_shards.guard`), so a failed master degrades its keys only.
Under it, an :class:`~ratekeeper.stores.over_limit.OverLimitCache` keeps the store's refusals:
the decide stage answers a key known to be over its limit from it without a store call (exact;
a reset elsewhere is seen within ``over_limit_cache_s``, see that module).
A store that decides on the event loop (:func:`~ratekeeper.stores.base.decides_on_loop`) is
driven synchronously from the async entry points too, with no coroutine per operation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from pathlib import Path

from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.errors import PolicyError, StoreError
from ratekeeper.flows import drive, drive_async
from ratekeeper.http.compiled import CompiledPolicy, CompiledRule, Pairs, compile_policy
from ratekeeper.http.flow import (
    Answer,
    Context,
    Kit,
    Op,
    Stage,
    StageFactory,
    Ticket,
    admission,
    same,
)
from ratekeeper.http.identity import RequestView
from ratekeeper.http.metrics import Metrics
from ratekeeper.http.stages import STAGES
from ratekeeper.http.stages.answer import Answers
from ratekeeper.http.stages.identify import in_networks
from ratekeeper.http.stages.in_flight import InFlightGauge
from ratekeeper.http.stages.lockout import count_failure, lockout_key
from ratekeeper.policy import load_policy
from ratekeeper.policy.schema import Policy
from ratekeeper.stores.base import AsyncStore, Store, decides_on_loop
from ratekeeper.stores.fallback_shards import guard
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.over_limit import OverLimitCache
from ratekeeper.stores.url import mask_url, store_from_url

__all__ = ["Answer", "Enforcer", "Ticket"]

log = logging.getLogger("ratekeeper.http")

After = Generator[Op, Decision, None]
Observer = Callable[[Context, Ticket], None]
# Refusals kept for their repeats (see Enforcer.repeated), at most.
_REPEATS_MAX = 4096
# A kept refusal: the view, the stages and their tokens' values then, its context, the items
# and cost charged.
_Repeat = tuple[
    RequestView, tuple[Stage, ...], tuple[object, ...], Context, CompiledRule, Pairs, int
]


class Enforcer:
    """A compiled policy bound to a store, a clock and metrics.

    ``policy`` may be a path, a :class:`Policy` or a compiled :class:`CompiledPolicy`. ``store`` (an
    instance or URL) overrides the policy's ``store``; ``fallback`` is the
    fail-mode wrapper decisions go through (``.degraded``, ``.outages``; per shard on a
    cluster), over
    ``over_limit``, the :class:`OverLimitCache` of refusals (entries live ``over_limit_cache_s``
    at most: the longest a reset made by another process can go unseen here).
    """

    store: Store | AsyncStore

    def __init__(
        self,
        policy: CompiledPolicy | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
        over_limit_cache_s: float = 1.0,
    ) -> None:
        if isinstance(policy, str | Path):
            policy = load_policy(policy)
        if isinstance(policy, Policy):
            policy = compile_policy(policy, clock=clock)
        self.plan = plan = policy
        spec = plan.policy
        # The URL the store was opened from (None for a store given as an instance): what
        # else lives beside it (the shared response cache) is found from it.
        self.store_url: str | None = None
        if store is None or isinstance(store, str):
            url = self.store_url = store or spec.store
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
        self.over_limit = OverLimitCache(self.store, max_age_s=over_limit_cache_s, recalls=False)
        self.fallback = guard(
            self.store,
            spec.on_store_error,
            store=self.over_limit,
            fail_open_max_s=spec.fail_open_max_s,
        )
        self._on_loop = decides_on_loop(self.fallback)
        # The memory store cannot be down, and its calls take microseconds: its decisions skip
        # the fallback wrapper and are not timed (ratekeeper_store_seconds times real stores).
        self._run = self._run_memory if type(self.store) is MemoryStore else self._run_sync
        self.metrics = Metrics(spec.metrics)
        self.metrics.watch_store(self.fallback)
        self.gauge = InFlightGauge()
        self.kit = self._kit(plan)
        self.header_names = plan.identifier.header_names
        # Every stage keeps its place by name, even one with nothing to do under this policy
        # (None), so that others can be added next to it.
        self.stages: list[tuple[str, Stage | None]] = []
        self._stages: tuple[Stage, ...] = ()
        # The tokens of the stages that read outside state (None: a stage is not repeatable),
        # and the refusals kept for their repeats: id(view) -> what admission found.
        self._tokens: tuple[Callable[[], object], ...] | None = ()
        self._repeats: dict[int, _Repeat] = {}
        self._factories: dict[str, StageFactory] = {}
        self._observers: tuple[Observer, ...] = ()
        for name, factory in STAGES:
            self.add_stage(name, factory)

    def __repr__(self) -> str:
        return f"<Enforcer policy={self.plan.policy.source!r} store={self.store!r}>"

    def add_stage(
        self,
        name: str,
        factory: StageFactory,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Build a stage from ``factory(kit)`` and run it before or after the stage named so
        (at the end when neither is given); a factory returning ``None`` adds only the name."""
        names = [n for n, _ in self.stages]
        if name in names:
            raise PolicyError(f"stage {name!r}: there is one of that name already")
        stage = factory(self.kit)
        index = len(names)
        for anchor, shift in ((before, 0), (after, 1)):
            if anchor is not None:
                if anchor not in names:
                    raise PolicyError(
                        f"stage {name!r}: no stage {anchor!r} to add it next to "
                        f"(expected one of {', '.join(names)})"
                    )
                index = names.index(anchor) + shift
        self.stages.insert(index, (name, stage))
        self._factories[name] = factory
        self._set_stages()

    def replace_stage(self, name: str, factory: StageFactory) -> None:
        """Build the stage ``name`` from ``factory`` from now on, in the same place (the
        gateway gives the ``keys`` stage its live key registry)."""
        names = [n for n, _ in self.stages]
        if name not in names:
            raise PolicyError(f"stage {name!r}: no such stage (expected one of {', '.join(names)})")
        self.stages[names.index(name)] = (name, factory(self.kit))
        self._factories[name] = factory
        self._set_stages()

    def observe(self, observer: Observer) -> None:
        """Call ``observer(ctx, ticket)`` after every admission (logs, samples); an observer
        that raises is logged and never fails the request."""
        self._observers = (*self._observers, observer)

    def use_policy(self, policy: CompiledPolicy | Policy) -> None:
        """Enforce ``policy`` from the next request on: every stage (added ones too) is rebuilt
        from its factory; the store, metrics and in-flight counts stay. Requests already in
        admission finish under the policy they started with."""
        if isinstance(policy, Policy):
            policy = compile_policy(policy, clock=self.clock)
        kit = self._kit(policy)
        stages = [(name, self._factories[name](kit)) for name, _ in self.stages]
        self.plan, self.kit = policy, kit
        self.header_names = policy.identifier.header_names
        self.stages = stages
        self._set_stages()

    def _set_stages(self) -> None:
        self._stages = stages = tuple(s for _, s in self.stages if s is not None)
        found = [getattr(stage, "repeat_token", None) for stage in stages]
        tokens = tuple(t for t in found if t is not same and t is not None)
        self._tokens = None if None in found else tokens
        self._repeats = {}

    def _kit(self, plan: CompiledPolicy) -> Kit:
        return Kit(
            plan,
            self.metrics,
            Answers(plan),
            self.gauge,
            self.over_limit,
            self.fallback,
            self.clock,
            self._remember,
        )

    @property
    def decides_on_loop(self) -> bool:
        """Whether ``admit_async``, ``complete_async`` and ``report_async`` finish without
        suspending (the store answers in microseconds on the event loop: memory, SQLite)."""
        return self._on_loop

    def in_flight(self, name: str) -> int:
        """Requests currently inside the app under the in-flight limit ``name``."""
        return self.gauge.count(name)

    # -- flows (pure apart from in-process counters; store work is yielded) ---------------

    def _admit(
        self, view: RequestView, rule: CompiledRule | None, remember: bool = False
    ) -> tuple[Context, Generator[Op, Decision, Ticket]]:
        ctx = Context(view, rule)
        if remember:
            ctx.remember = True
        return ctx, admission(self._stages, ctx, self.gauge.leave)

    def _observe(self, ctx: Context, ticket: Ticket) -> Ticket:
        # Called after the flow is driven, not from a generator wrapped around it: every
        # request then passes one frame less on its way through.
        for observer in self._observers:
            try:
                observer(ctx, ticket)
            except Exception:
                log.warning("admission observer %r failed", observer, exc_info=True)
        return ticket

    def _remember(self, ctx: Context, items: Pairs, cost: int) -> None:
        """Keep a refusal by the decide stage for :meth:`repeated`, if every stage it passed
        would pass it again: all repeatable, and none holding anything for it (in-flight
        slots, a lockout key, shadow limits charged)."""
        tokens = self._tokens
        ticket, rule = ctx.ticket, ctx.rule
        if (
            tokens is None
            or rule is None
            or ticket.lock_key is not None
            or ticket.held
            or ctx.shadow
        ):
            return
        repeats = self._repeats
        if len(repeats) >= _REPEATS_MAX:
            repeats.clear()
        view = ctx.view
        values = tuple(t() for t in tokens)
        repeats[id(view)] = (view, self._stages, values, ctx, rule, items, cost)

    def repeated(self, view: RequestView) -> Ticket | None:
        """The refusal of ``view`` again (the same object, admitted before with ``remember``)
        without running the stages: when it was refused by the decide stage, nothing it passed
        through has changed since (the stages, the policy, their tokens), the store is healthy
        and the over-limit cache still knows its key over the limit. Counted, observed and
        answered as admission would (observers get the context of its first admission, its
        ``decision`` replaced); ``None`` otherwise (admit it then)."""
        repeat = self._repeats.get(id(view))
        if repeat is None or repeat[0] is not view or repeat[1] is not self._stages:
            return None
        _, _, values, ctx, rule, items, cost = repeat
        for token, value in zip(self._tokens or (), values, strict=True):
            if token() is not value:
                return None
        over_limit = self.over_limit
        if not over_limit.size or self.fallback.degraded:
            return None
        known = over_limit.recall(items, cost, self.clock())
        if known is None:
            return None
        ticket = self.kit.answers.rejected(known)
        self.metrics.count(rule.name, ticket.reason, "rejected")
        if self._observers:
            ctx.decision = known
            for observer in self._observers:
                try:
                    observer(ctx, ticket)
                except Exception:
                    log.warning("admission observer %r failed", observer, exc_info=True)
        return ticket

    def _report(self, view: RequestView, status: int) -> After:
        plan = self.plan
        spec = plan.lockout
        if spec is None or status not in spec.statuses:
            return
        # The same caller and lockout key as admission found, or none where it found none.
        if plan.routes.match(view.method, view.path).exempt:
            return
        caller = plan.identifier.identify(view)
        exempt = plan.exempt_networks
        if caller is None or (exempt and in_networks(caller.ip, exempt)):
            return
        key = lockout_key(plan, view, caller)
        if key is not None:
            yield from count_failure(spec, Ticket(lock_key=key), status)

    # -- drivers ---------------------------------------------------------------------------

    def _run_memory(self, op: Op) -> Decision:
        items, cost, peek = op
        return self.over_limit.decide(items, cost, self.clock(), peek=peek)

    def _run_sync(self, op: Op) -> Decision:
        items, cost, peek = op
        started = time.perf_counter()
        decision = self.fallback.decide(items, cost, self.clock(), peek=peek)
        self.metrics.store_latency(time.perf_counter() - started)
        return decision

    async def _run_async(self, op: Op) -> Decision:
        items, cost, peek = op
        started = time.perf_counter()
        decision = await self.fallback.decide_async(items, cost, self.clock(), peek=peek)
        self.metrics.store_latency(time.perf_counter() - started)
        return decision

    def admit(self, view: RequestView, rule: CompiledRule | None = None) -> Ticket:
        """Run admission synchronously (WSGI); ``rule`` replaces route matching."""
        ctx, flow = self._admit(view, rule)
        ticket = drive(flow, self._run)
        return self._observe(ctx, ticket) if self._observers else ticket

    async def admit_async(
        self, view: RequestView, rule: CompiledRule | None = None, *, remember: bool = False
    ) -> Ticket:
        """Run admission on the event loop (ASGI); ``rule`` replaces route matching;
        ``remember``: keep a refusal of ``view`` for :meth:`repeated` (a caller that gives
        the same view object for the same request again)."""
        ctx, flow = self._admit(view, rule, remember)
        if self._on_loop:
            ticket = drive(flow, self._run)
        else:
            ticket = await drive_async(flow, self._run_async)
        return self._observe(ctx, ticket) if self._observers else ticket

    def complete(self, ticket: Ticket, status: int) -> None:
        """After the app answered: release in-flight slots, count failed authentications."""
        self.gauge.leave(ticket.held)
        if ticket.lock_key is not None:
            drive(count_failure(self.plan.lockout, ticket, status), self._run_sync)

    async def complete_async(self, ticket: Ticket, status: int) -> None:
        """The asyncio twin of :meth:`complete`."""
        self.gauge.leave(ticket.held)
        if ticket.lock_key is not None:
            await self._run_after(count_failure(self.plan.lockout, ticket, status))

    def report(self, view: RequestView, status: int) -> None:
        """Count an answer that the app gave to a request admitted elsewhere (a proxy asked the
        decision endpoint): a failed authentication counts for the lockout exactly as
        :meth:`complete` counts it after :meth:`admit`."""
        drive(self._report(view, status), self._run_sync)

    async def report_async(self, view: RequestView, status: int) -> None:
        """The asyncio twin of :meth:`report`."""
        await self._run_after(self._report(view, status))

    async def _run_after(self, flow: After) -> None:
        if self._on_loop:
            drive(flow, self._run_sync)
        else:
            await drive_async(flow, self._run_async)

    @classmethod
    def of(
        cls,
        policy: Enforcer | CompiledPolicy | Policy | str | Path,
        *,
        store: Store | AsyncStore | str | None = None,
        clock: Clock = system_clock,
    ) -> Enforcer:
        """``policy`` itself if it is an enforcer, else a new one (what the middlewares take)."""
        return policy if isinstance(policy, Enforcer) else cls(policy, store=store, clock=clock)
