"""The shape of admission: a request's context, the stages that read and fill it, the ticket.

Admission is a list of named stages run in order over one mutable :class:`Context`. A stage is
a callable ``stage(ctx)`` that returns ``None`` to hand the request to the next stage, or a
:class:`Ticket` to end admission with it (a refusal carries its :class:`Answer`; :data:`PASS`
lets the request through untouched). A stage that needs the store is a generator function
instead: it yields :data:`Op`\\ s (``charge(items, cost)``, ``peek(items)``), receives their
:class:`~ratekeeper.decision.Decision`\\ s and returns the same ``Ticket | None``. Stages never
touch the store themselves, so one stage list serves the sync and the async drivers
(:mod:`ratekeeper.flows`).

A stage is built once per enforcer from a :class:`Kit` (the compiled plan and the shared
pieces: metrics, answers, in-flight gauge) by a factory ``make(kit) -> Stage | None`` (``None``
when the policy gives the stage nothing to do, so it costs nothing per request); the built-in
list is :data:`ratekeeper.http.stages.STAGES`, and
:meth:`ratekeeper.http.engine.Enforcer.add_stage` inserts another before or after any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import GeneratorType
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from ratekeeper.clock import Clock, system_clock
from ratekeeper.decision import Decision
from ratekeeper.errors import PolicyError
from ratekeeper.http.compiled import CompiledPolicy, CompiledRule, Pairs
from ratekeeper.http.identity import Caller, RequestView
from ratekeeper.http.metrics import Metrics

if TYPE_CHECKING:
    from ratekeeper.http.stages.answer import Answers
    from ratekeeper.http.stages.in_flight import InFlightGauge
    from ratekeeper.stores.fallback_shards import Guard
    from ratekeeper.stores.over_limit import OverLimitCache

__all__ = [
    "PASS",
    "Answer",
    "Context",
    "Kit",
    "Op",
    "Stage",
    "StageFactory",
    "Ticket",
    "admission",
    "charge",
    "peek",
    "repeatable",
    "same",
]

# (items, cost, peek): what a stage asks the driver to decide. A peek charges nothing and
# reports the current state, so it carries cost 0.
Op: TypeAlias = tuple[Pairs, int, bool]
StageFlow: TypeAlias = Generator[Op, Decision, "Ticket | None"]
Stage: TypeAlias = Callable[["Context"], "Ticket | StageFlow | None"]
# A factory returns None when its stage has nothing to do under this policy.
StageFactory: TypeAlias = Callable[["Kit"], "Stage | None"]


_S = TypeVar("_S", bound=Callable[..., object])


def same() -> None:
    """The token of a stage that reads nothing but the request and the policy."""


def repeatable(stage: _S, token: Callable[[], object] = same) -> _S:
    """Mark ``stage`` as passing a request it passed before in the same way again, for as long
    as ``token()`` returns the same object (a stage that reads outside state, such as a key
    registry, names that state here). Only refusals whose every stage is marked are repeated
    without the stages (:meth:`~ratekeeper.http.engine.Enforcer.repeated`)."""
    # A function attribute: stages are plain callables (mypy knows no such attribute).
    setattr(stage, "repeat_token", token)  # noqa: B010
    return stage


def charge(items: Pairs, cost: int) -> Op:
    """The operation charging ``cost`` units to every item, all or nothing."""
    return (items, cost, False)


def peek(items: Pairs) -> Op:
    """The operation reading the items' state, charging nothing."""
    return (items, 0, True)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response ratekeeper gives itself: status, headers (str pairs) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class Ticket:
    """The outcome of admission: ``answer`` to send instead of calling the app, or ``headers``
    to add to the app's answer. ``rule`` and ``caller`` say what admission found (the response
    cache keys by them); ``lock_key`` and ``held`` are what
    :meth:`~ratekeeper.http.engine.Enforcer.complete` needs afterwards."""

    answer: Answer | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    rule: CompiledRule | None = None
    caller: Caller | None = None
    lock_key: str | None = None
    held: tuple[str, ...] = ()
    # What a refusal was for: the limit that rejected, or the error code (for logs).
    reason: str = ""


PASS = Ticket()
"""The ticket of a request that goes through unlimited (exempt route or address)."""


@dataclass(slots=True)
class Context:
    """One request on its way through the stages; each stage reads what earlier ones filled.

    ``rule`` is the matched rule (preset when an adapter names it), ``caller`` who asks,
    ``enforced``/``shadow`` the pairs to charge for the caller's tier, ``decision`` the
    enforced decision (``None`` before it, or when a failing-open store decided nothing), and
    ``ticket`` the ticket being filled for an admitted request.
    """

    view: RequestView
    rule: CompiledRule | None = None
    caller: Caller | None = None
    enforced: Pairs = ()
    shadow: Pairs = ()
    cost: int = 0
    decision: Decision | None = None
    ticket: Ticket = field(default_factory=Ticket)
    # Whether a refusal of this request is worth keeping for its repeats (its view is kept).
    remember: bool = False

    @property
    def matched(self) -> CompiledRule:
        """The matched rule, for stages that run after ``route``."""
        if self.rule is None:
            raise PolicyError("this stage needs the matched rule: add it after the 'route' stage")
        return self.rule

    @property
    def identified(self) -> Caller:
        """The caller, for stages that run after ``identify``."""
        if self.caller is None:
            raise PolicyError("this stage needs the caller: add it after the 'identify' stage")
        return self.caller


@dataclass(frozen=True, slots=True)
class Kit:
    """What stage factories build from: the compiled plan and the enforcer's shared pieces.

    ``over_limit`` holds the refusals the store made lately (a key over its limit is refused
    from it without a store call, while ``fallback`` reports the store healthy); ``clock`` is
    the enforcer's.
    """

    plan: CompiledPolicy
    metrics: Metrics
    answers: Answers
    gauge: InFlightGauge
    over_limit: OverLimitCache | None = None
    fallback: Guard | None = None
    clock: Clock = system_clock
    # Called by the decide stage with a refusal's context, items and cost when the context
    # asks for it to be remembered (``Context.remember``).
    refused: Callable[[Context, Pairs, int], None] | None = None


def admission(
    stages: Sequence[Stage], ctx: Context, release: Callable[[tuple[str, ...]], None]
) -> Generator[Op, Decision, Ticket]:
    r"""Run ``stages`` over ``ctx`` until one ends admission; the flow a driver carries out.

    A ticket that ends admission early means the app will not run (and no one will call
    ``complete``), so the in-flight slots taken for ``ctx.ticket`` are ``release``\ d here.
    """
    for stage in stages:
        out = stage(ctx)
        if type(out) is GeneratorType:
            out = yield from out
        if out is not None:
            held = ctx.ticket.held
            if held and out is not ctx.ticket:
                release(held)
            return out  # type: ignore[return-value]
    return ctx.ticket
