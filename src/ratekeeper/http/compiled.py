"""A policy compiled once into a plan: what the hot path needs, as dicts and tuples.

It sits at the HTTP level, not in ``ratekeeper.policy``: a plan holds live HTTP pieces (the
:class:`Identifier` with its caches and imported hooks, the body renderer, the route table),
while ``ratekeeper.policy`` stays the validated configuration that the client reads too.

For each rule (and for requests no rule matches) the plan holds the ``(limit_set, scope)``
pairs to enforce and to shadow, per plan tier, so a request only substitutes the caller's keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ratekeeper.algorithms import Algorithm
from ratekeeper.clock import Clock, system_clock
from ratekeeper.errors import PolicyError
from ratekeeper.http.bodies import BodyFormat
from ratekeeper.http.identity import Identifier, load_hook
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.policy.inline import inline_limit, looks_like_rate
from ratekeeper.policy.schema import LimitSpec, LockoutSpec, Policy
from ratekeeper.rates import Rate
from ratekeeper.routes import RouteTable

__all__ = ["CompiledLockout", "CompiledPolicy", "CompiledRule", "compile_policy", "compile_rule"]

Pairs = tuple[tuple[LimitSet, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    """One rule ready for the hot path; ``tiers`` maps a plan name to its (enforced, shadow)."""

    name: str
    exempt: bool
    cost: int
    cache_ttl_s: float
    enforced: Pairs
    shadow: Pairs
    in_flight: tuple[tuple[str, int], ...]
    tiers: Mapping[str, tuple[Pairs, Pairs]] = field(default_factory=dict)
    # ("header" | "query", name, max_cost) when the request says what it costs.
    cost_source: tuple[str, str, int] | None = None
    # The limit set the X-RateLimit-* headers of admitted requests report ("": the binding).
    headers_limit: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledLockout:
    """Auth lockout: ``failures`` counts failed answers, ``lock`` holds the lock for its period."""

    failures: LimitSet
    lock: LimitSet
    statuses: frozenset[int]
    scope: str
    routes: RouteTable[bool] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledPolicy:
    """A compiled policy: see :func:`compile_policy`."""

    policy: Policy
    identifier: Identifier
    routes: RouteTable[CompiledRule]
    status_of: Mapping[str, int]
    body: BodyFormat
    lockout: CompiledLockout | None
    exempt_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _pairs(
    names: list[str], limits: Mapping[str, LimitSpec], overrides: Mapping[str, LimitSet]
) -> Pairs:
    out: list[tuple[LimitSet, str]] = []
    for name in dict.fromkeys(names):
        spec = limits[name]
        limit_set = overrides.get(name, spec.limit_set)
        if limit_set is not None:
            out.append((limit_set, spec.scope))
    return tuple(out)


def _inline(policy: Policy, owner: str, text: str, scope: str) -> LimitSpec:
    where = f"{policy.source}: limit {text!r} of {owner!r}"
    if not looks_like_rate(text):
        known = ", ".join(sorted(policy.limits)) or "none defined"
        raise PolicyError(f"{where}: expected one of the policy's limits ({known}) or a rate")
    return replace(inline_limit(owner, text, where), scope=scope)


def compile_rule(
    policy: Policy,
    name: str,
    names: list[str],
    *,
    cost: int,
    cache_ttl_s: float,
    shadow_rule: bool,
    apply: bool = True,
    inline_scope: str = "caller",
) -> CompiledRule:
    """The rule charging ``names`` (after the policy's ``apply`` limits, unless ``apply`` is
    false) ``cost`` units.

    A name may be a rate string (``"5/minute"``): a budget of this rule's own, counted per
    ``inline_scope`` (the caller by default).
    """
    limits = policy.limits
    unknown = [n for n in names if n not in limits]
    if unknown:
        limits = {**limits, **{n: _inline(policy, name, n, inline_scope) for n in unknown}}
    all_names = [*policy.apply, *names] if apply else list(names)
    shadow_names = [
        n for n in all_names if policy.shadow or limits[n].shadow or (shadow_rule and n in names)
    ]
    enforced_names = [n for n in all_names if n not in shadow_names]
    tiers = {
        tier: (_pairs(enforced_names, limits, overrides), _pairs(shadow_names, limits, overrides))
        for tier, overrides in policy.tiers.plans.items()
    }
    in_flight = tuple(
        (n, limits[n].in_flight) for n in dict.fromkeys(enforced_names) if limits[n].in_flight
    )
    return CompiledRule(
        name=name,
        exempt=False,
        cost=cost,
        cache_ttl_s=cache_ttl_s,
        enforced=_pairs(enforced_names, limits, {}),
        shadow=_pairs(shadow_names, limits, {}),
        in_flight=in_flight,
        tiers=tiers,
        headers_limit=policy.headers_limit,
    )


def compile_policy(policy: Policy, *, clock: Clock = system_clock) -> CompiledPolicy:
    """Compile a validated policy; imports its hooks (errors name the file and key)."""
    if not policy.store:
        raise PolicyError(f"{policy.source}: store: expected a store URL such as 'memory://'")
    status_of = {name: s.status for name, s in policy.limits.items()}
    status_of["lockout"] = 429
    identifier = _identifier(policy, clock)
    cost_headers = {rule.cost_header for rule in policy.rules if rule.cost_header}
    if cost_headers and identifier.header_names is not None:
        identifier.header_names = identifier.header_names | cost_headers
    return CompiledPolicy(
        policy=policy,
        identifier=identifier,
        routes=_routes(policy),
        status_of=status_of,
        body=BodyFormat(policy.body, policy.body_template, policy.body_content_type),
        lockout=_lockout(policy.lockout),
        exempt_networks=tuple(ipaddress.ip_network(n, strict=False) for n in policy.exempt_ips),
    )


def _identifier(policy: Policy, clock: Clock) -> Identifier:
    source = policy.source
    ident = policy.identity
    tiers = policy.tiers
    scopes = {spec.scope for spec in policy.limits.values()}
    if policy.lockout is not None:
        scopes.add(policy.lockout.scope)
    # Credential headers are read only when something needs the key: a request's headers are
    # otherwise never looked at for one.
    needs_key = bool(
        ident.source in ("api_key", "account")
        or scopes & {"key", "account"}
        or tiers.keys
        or tiers.hook
        or policy.keys.declared
    )

    def hook(spec: str, where: str) -> Callable[..., Any] | None:
        return load_hook(spec, f"{source}: {where}") if spec else None

    return Identifier(
        source=ident.source,
        key_headers=ident.key_headers if needs_key else (),
        anonymous=ident.anonymous,
        trusted_proxies=ident.trusted_proxies,
        client_ip_header=ident.client_ip_header,
        scopes=scopes,
        function=hook(ident.callable, "identity.callable"),
        accounts=ident.accounts,
        account_hook=hook(ident.account_hook, "identity.account_hook"),
        account_ttl_s=ident.account_hook_ttl_s,
        plan_keys=tiers.keys,
        plan_hook=hook(tiers.hook, "tiers.hook"),
        plan_ttl_s=tiers.hook_ttl_s,
        clock=clock,
    )


_EXEMPT = CompiledRule(
    name="", exempt=True, cost=1, cache_ttl_s=0.0, enforced=(), shadow=(), in_flight=()
)


def _routes(policy: Policy) -> RouteTable[CompiledRule]:
    entries = []
    for rule in policy.rules:
        if rule.exempt:
            compiled = replace(_EXEMPT, name=rule.name)
        else:
            compiled = compile_rule(
                policy,
                rule.name,
                list(rule.limits),
                cost=rule.cost,
                cache_ttl_s=rule.cache_ttl_s,
                shadow_rule=rule.shadow,
            )
            if rule.max_cost:
                kind = "header" if rule.cost_header else "query"
                source = (kind, rule.cost_header or rule.cost_query, rule.max_cost)
                compiled = replace(compiled, cost_source=source)
            if rule.headers_limit:
                compiled = replace(compiled, headers_limit=rule.headers_limit)
        entries.append((rule.routes, rule.methods, compiled))
    default = compile_rule(
        policy, "default", list(policy.default), cost=1, cache_ttl_s=0.0, shadow_rule=False
    )
    return RouteTable(entries, default)


def _lockout(spec: LockoutSpec | None) -> CompiledLockout | None:
    if spec is None:
        return None
    failures = LimitSet(
        "lockout-failures", Limit(rate=Rate(spec.failures, spec.window_s), name="failures")
    )
    lock = LimitSet(
        "lockout",
        Limit(rate=Rate(1, spec.duration_s), algorithm=Algorithm.FIRST_HIT_WINDOW, name="lock"),
    )
    return CompiledLockout(
        failures=failures,
        lock=lock,
        statuses=spec.statuses,
        scope=spec.scope,
        routes=RouteTable([(spec.routes, None, True)], False) if spec.routes else None,
    )
