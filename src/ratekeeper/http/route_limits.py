"""Limits written in code on one route (a decorator, a dependency, a throttle class).

A route's limits are names of the policy's ``[limits]`` or rate strings (``"5/minute"``: a budget
of the route's own). They are charged in the one decision the policy makes for the request,
beside ``apply`` and the limits of the policy's rule for the path, so a route limited both by
the policy and in code is decided once, with one set of headers. Framework integrations build
on :class:`RouteGuard`; none of them decides anything itself.

``key`` and ``cost`` may be functions of the framework's own request (``RequestView.request``,
with ``request.user`` where the framework has one): ``key`` says whom the route's own rates
count per (the policy's caller by default), ``cost`` how many units a request takes (the
policy rule's cost by default). The ``request`` stage (added to the enforcer on first use, after
``identify``) calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ratekeeper.errors import PolicyError
from ratekeeper.http.compiled import CompiledRule, Pairs, compile_rule
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Context, Kit, Stage, Ticket
from ratekeeper.http.identity import hash_secret

__all__ = [
    "REQUEST_SCOPE",
    "RouteGuard",
    "RouteLimits",
    "RouteRule",
    "combine",
    "request_stage",
    "together",
]

REQUEST_SCOPE = "request"
"""The scope (followed by the route's name) its own rates count per with a ``key`` function."""

KeyFunction = Callable[[Any], object]
CostFunction = Callable[[Any], int]
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@+")


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """What a route declares in code: ``limits`` (names or rate strings) counted per
    ``key(request)``, ``cost`` units a request (a number or ``cost(request)``), or ``exempt``
    from every limit, the policy's included."""

    limits: tuple[str, ...] = ()
    key: KeyFunction | None = None
    cost: int | CostFunction | None = None
    exempt: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.limits, str) or not all(isinstance(n, str) for n in self.limits):
            raise PolicyError(f"limits: expected names or rate strings, got {self.limits!r}")
        object.__setattr__(self, "limits", tuple(self.limits))
        cost = self.cost
        if not (cost is None or callable(cost) or _whole(cost)):
            raise PolicyError(f"cost: expected a whole number >= 1 or a function, got {cost!r}")
        if self.key is not None and not callable(self.key):
            raise PolicyError(f"key: expected a function of the request, got {self.key!r}")


def combine(specs: Iterable[RouteLimits | None]) -> RouteLimits | None:
    """One route's limits from several declarations (a view's and its blueprint's, say): every
    limit, the first ``key`` and ``cost`` given; exempt if any of them is."""
    found = [spec for spec in specs if spec is not None]
    if len(found) < 2:
        return found[0] if found else None
    if any(spec.exempt for spec in found):
        return RouteLimits(exempt=True)
    return RouteLimits(
        tuple(dict.fromkeys(name for spec in found for name in spec.limits)),
        next((spec.key for spec in found if spec.key is not None), None),
        next((spec.cost for spec in found if spec.cost is not None), None),
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule(CompiledRule):
    """A compiled rule whose keys or cost come from the request (see :func:`request_stage`):
    ``keys`` pairs a scope of its own rates with the function giving its key."""

    keys: tuple[tuple[str, KeyFunction], ...] = ()
    cost_of: CostFunction | None = None


_EXEMPT = CompiledRule(
    name="", exempt=True, cost=1, cache_ttl_s=0.0, enforced=(), shadow=(), in_flight=()
)


def _union(*pairs: Pairs) -> Pairs:
    return tuple(dict.fromkeys(pair for group in pairs for pair in group))


def _tiers(rules: Sequence[CompiledRule]) -> dict[str, tuple[Pairs, Pairs]]:
    tiers: dict[str, tuple[Pairs, Pairs]] = {}
    for tier in {tier for rule in rules for tier in rule.tiers}:
        chosen = [rule.tiers.get(tier, (rule.enforced, rule.shadow)) for rule in rules]
        tiers[tier] = (_union(*(e for e, _ in chosen)), _union(*(s for _, s in chosen)))
    return tiers


def _merge(base: CompiledRule, own: CompiledRule, spec: RouteLimits, scope: str) -> RouteRule:
    """``base`` (the policy's rule for the path) and ``own`` (the route's) as one rule."""
    if base.exempt:
        base = replace(_EXEMPT, exempt=False, name=own.name)
    rules = (base, own)
    return RouteRule(
        name=f"{base.name} {own.name}" if spec.limits else base.name,
        exempt=False,
        cost=spec.cost if isinstance(spec.cost, int) else base.cost,
        cache_ttl_s=base.cache_ttl_s,
        enforced=_union(base.enforced, own.enforced),
        shadow=_union(base.shadow, own.shadow),
        in_flight=tuple(dict.fromkeys((*base.in_flight, *own.in_flight))),
        tiers=_tiers(rules),
        # The policy's cost from the request (a header, a query parameter) unless code says.
        cost_source=base.cost_source if spec.cost is None else None,
        keys=((scope, spec.key),) if spec.key is not None else (),
        cost_of=spec.cost if callable(spec.cost) else None,
    )


def together(rules: Sequence[CompiledRule]) -> CompiledRule:
    """Several routes' rules for one request (a router's limits and an endpoint's, say), each
    already merged with the same policy rule, as one: every limit, the first cost given."""
    if len(rules) == 1 or any(rule.exempt for rule in rules):
        return next((rule for rule in rules if rule.exempt), rules[0])
    first = rules[0]
    route_rules = [rule for rule in rules if isinstance(rule, RouteRule)]
    return RouteRule(
        name=" ".join(dict.fromkeys(rule.name for rule in rules)),
        exempt=False,
        cost=first.cost,
        cache_ttl_s=first.cache_ttl_s,
        enforced=_union(*(rule.enforced for rule in rules)),
        shadow=_union(*(rule.shadow for rule in rules)),
        in_flight=tuple(dict.fromkeys(pair for rule in rules for pair in rule.in_flight)),
        tiers=_tiers(rules),
        cost_source=first.cost_source,
        keys=tuple(pair for rule in route_rules for pair in rule.keys),
        cost_of=next((r.cost_of for r in route_rules if r.cost_of is not None), None),
    )


class RouteGuard:
    """The limits of one route (``owner``: a name stable across processes, such as the view's
    qualified name or the route's path) under one enforcer: :meth:`rule` is the one rule to
    admit a request with."""

    __slots__ = ("_rules", "enforcer", "owner", "scope", "spec")

    def __init__(self, enforcer: Enforcer, owner: str, spec: RouteLimits) -> None:
        self.enforcer = enforcer
        self.owner = owner
        self.spec = spec
        # What this route's own rates count per when it has a key function: a scope of its own,
        # so two routes' key functions (a router's and an endpoint's) never share a key.
        self.scope = f"{REQUEST_SCOPE} {owner}"
        self._rules: dict[tuple[int, int], tuple[CompiledRule, CompiledRule]] = {}
        if spec.key is not None or callable(spec.cost):
            request_stage.install(enforcer)
        self.rule("GET", "/")  # a name that is neither a limit nor a rate fails now

    def __repr__(self) -> str:
        return f"<RouteGuard {self.owner!r} {self.spec.limits} exempt={self.spec.exempt}>"

    def rule(self, method: str, path: str) -> CompiledRule:
        """The policy's rule for ``method path`` merged with this route's limits."""
        plan = self.enforcer.plan
        base = plan.routes.match(method, path)
        probe = (id(plan), id(base))
        found = self._rules.get(probe)
        if found is not None:
            return found[1]
        if self.spec.exempt:
            merged = replace(_EXEMPT, name=self.owner)
        else:
            own = compile_rule(
                plan.policy,
                self.owner,
                list(self.spec.limits),
                cost=1,
                cache_ttl_s=0.0,
                shadow_rule=False,
                apply=False,
                inline_scope=self.scope if self.spec.key is not None else "caller",
            )
            merged = _merge(base, own, self.spec, self.scope)
        # The base rule is kept with its merge, so its id is not reused while the entry lives.
        self._rules[probe] = (base, merged)
        return merged


def _store_key(value: object) -> str:
    text = str(value)
    if len(text) <= 64 and all(c in _PLAIN for c in text):
        return text
    return "#" + hash_secret(text)


class _RequestStage:
    """Factory of the ``request`` stage; :meth:`install` adds it to an enforcer once."""

    name = REQUEST_SCOPE

    def __call__(self, kit: Kit) -> Stage:
        return _request

    def install(self, enforcer: Enforcer) -> None:
        """Add the stage after ``identify`` unless the enforcer has it already."""
        if all(name != self.name for name, _ in enforcer.stages):
            enforcer.add_stage(self.name, self, after="identify")


def _request(ctx: Context) -> Ticket | None:
    rule = ctx.rule
    if type(rule) is not RouteRule:
        return None
    request = ctx.view.request
    if rule.keys:
        caller = ctx.identified
        keys: dict[str, str] = dict(caller.keys)
        for scope, key_of in rule.keys:
            value = key_of(request)
            keys[scope] = keys["caller"] if value is None else _store_key(value)
        ctx.caller = replace(caller, keys=keys)
    if rule.cost_of is not None:
        cost = rule.cost_of(request)
        if not _whole(cost):
            raise PolicyError(
                f"cost function {rule.cost_of!r}: expected a whole number >= 1, got {cost!r}"
            )
        ctx.cost = cost
    return None


request_stage = _RequestStage()
"""Calls a :class:`RouteRule`'s ``key`` and ``cost`` functions with the framework's request."""
