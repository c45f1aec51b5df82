"""Validating a parsed TOML document (or any mapping) into a :class:`Policy`, section by section.

Every error is a :class:`~ratekeeper.errors.PolicyError` naming the file and the key path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ratekeeper.algorithms import Algorithm
from ratekeeper.errors import LimitConfigError, PolicyError, RateSyntaxError
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.policy.bounds import MAX_AMOUNT, MAX_IN_FLIGHT, capacity, rate_problem
from ratekeeper.policy.inline import inline_limit, looks_like_rate
from ratekeeper.policy.keys import read_keys
from ratekeeper.policy.reader import TableReader, kind_of, shown
from ratekeeper.policy.schema import (
    BODY_STYLES,
    IDENTITY_SOURCES,
    SCOPES,
    USER_AGENT_CONTACTS,
    CacheSpec,
    IdentitySpec,
    LimitSpec,
    LockoutSpec,
    Policy,
    RuleSpec,
    TiersSpec,
)
from ratekeeper.rates import parse_rates
from ratekeeper.stores.fail_mode import FailMode

__all__ = ["ON_STORE_ERROR", "policy_from_mapping"]

# on_store_error values -> what the FallbackStore does; allow, reject and memory are the older
# spellings, still read.
ON_STORE_ERROR = {
    **{mode.value: mode for mode in FailMode},
    **{mode.value.replace("_", "-"): mode for mode in FailMode},
    "allow": FailMode.FAIL_OPEN,
    "reject": FailMode.FAIL_CLOSED,
    "memory": FailMode.FALLBACK,
}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_RESERVED_LIMIT_NAMES = frozenset({"lockout", "lockout-failures"})
_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _limit_set(reader: TableReader, key: str, name: str, algorithm: str, burst: int) -> LimitSet:
    rates_text = reader.get(key)
    if not isinstance(rates_text, str):
        raise reader.error(
            key, f"a rate string such as '100/minute; 1000/hour', got {shown(rates_text)}"
        )
    try:
        rates = parse_rates(rates_text)
        algo = Algorithm.parse(algorithm)
        limits = [Limit(rate=rate, algorithm=algo, burst=burst) for rate in rates]
    except (RateSyntaxError, LimitConfigError) as exc:
        raise reader.error(key, f"a valid limit: {exc}") from None
    for limit in limits:
        problem = rate_problem(limit)
        if problem is not None:
            raise reader.error(key, problem)
    return LimitSet(name, limits)


def _read_limit(source: str, name: str, table: object) -> LimitSpec:
    reader = TableReader(source, f"limits.{name}", table)
    if not name or any(c in name for c in ':{}\n"'):
        raise PolicyError(f"{source}: limits.{name}: expected a name without ':{{}}\" characters")
    if name in _RESERVED_LIMIT_NAMES:
        raise PolicyError(
            f"{source}: limits.{name}: expected another name ({name!r} is the lockout's)"
        )
    algorithm = reader.text("algorithm", "fixed_window")
    try:
        Algorithm.parse(algorithm)
    except LimitConfigError:
        known = ", ".join(a.value for a in Algorithm)
        raise reader.error("algorithm", f"one of {known}; got {algorithm!r}") from None
    burst = reader.number("burst", 0, 0, MAX_AMOUNT)
    in_flight = reader.number("in_flight", 0, 0, MAX_IN_FLIGHT)
    limit_set = None
    if reader.has("rates"):
        limit_set = _limit_set(reader, "rates", name, algorithm, burst)
    elif not in_flight:
        raise reader.error("rates", "a rate string such as '100/minute; 1000/hour' (missing)")
    scope = reader.text("scope", "caller", SCOPES)
    status = reader.number("status", 503 if in_flight else 429, 400, 599)
    shadow = reader.flag("shadow", False)
    if in_flight and scope != "global":
        raise reader.error("in_flight", "in_flight only with scope = 'global' (a load shedder)")
    reader.done()
    return LimitSpec(
        name=name,
        limit_set=limit_set,
        scope=scope,
        status=status,
        shadow=shadow,
        in_flight=in_flight,
    )


def _check_route(reader: TableReader, key: str, route: str) -> None:
    if not route.startswith("/"):
        raise reader.error(key, f"a route starting with '/', got {route!r}")
    segments = route.strip("/").split("/")
    for index, segment in enumerate(segments):
        if segment == "*" and index != len(segments) - 1:
            raise reader.error(key, f"'*' only as the last segment, got {route!r}")
        if ("{" in segment or "}" in segment) and not (
            segment.startswith("{") and segment.endswith("}") and len(segment) > 2
        ):
            raise reader.error(key, f"a whole-segment parameter like '{{id}}', got {route!r}")


def _limit_names(
    reader: TableReader, key: str, owner: str, limits: dict[str, LimitSpec]
) -> tuple[str, ...]:
    """The limits ``key`` names; a rate string there adds a limit of ``owner``'s own."""
    out = []
    for written in reader.str_list(key):
        name = written
        if name not in limits and looks_like_rate(name):
            spec = inline_limit(owner, name, f"{reader.source}: {reader.where(key)}")
            limits.setdefault(spec.name, spec)
            name = spec.name
        if name not in limits:
            known = ", ".join(sorted(limits)) or "none defined"
            raise reader.error(
                key, f"names of [limits] tables ({known}) or rates such as '5/minute'; got {name!r}"
            )
        out.append(name)
    return tuple(out)


def _read_rule(source: str, index: int, table: object, limits: dict[str, LimitSpec]) -> RuleSpec:
    reader = TableReader(source, f"rules[{index}]", table)
    routes = reader.str_list("routes")
    if not routes:
        raise reader.error("routes", "a non-empty list of routes such as ['/v1/media/*']")
    for route in routes:
        _check_route(reader, "routes", route)
    methods_list = reader.str_list("methods")
    methods = frozenset(m.upper() for m in methods_list) if methods_list else None
    if methods is not None and "*" in methods:
        methods = None
    if methods is not None and not methods <= METHODS:
        bad = sorted(methods - METHODS)
        raise reader.error("methods", f"HTTP methods ({', '.join(sorted(METHODS))}), got {bad}")
    name = reader.text("name", routes[0])
    names = _limit_names(reader, "limits", name, limits)
    cost = reader.number("cost", 1, 1, MAX_AMOUNT)
    cost_header, cost_query, max_cost = _read_cost_source(reader, cost)
    exempt = reader.flag("exempt", False)
    shadow = reader.flag("shadow", False)
    cache_ttl = reader.duration("cache_ttl", 0.0)
    headers_limit = _headers_limit(reader, limits)
    reader.done()
    return RuleSpec(
        name=name,
        routes=routes,
        methods=methods,
        limits=names,
        cost=cost,
        cost_header=cost_header,
        cost_query=cost_query,
        max_cost=max_cost,
        exempt=exempt,
        shadow=shadow,
        cache_ttl_s=cache_ttl,
        headers_limit=headers_limit,
    )


def _headers_limit(reader: TableReader, limits: dict[str, LimitSpec]) -> str:
    """The limit the X-RateLimit-* headers of admitted requests report (``headers_limit``)."""
    name = reader.text("headers_limit", "")
    if name and name not in limits:
        known = ", ".join(sorted(limits)) or "none defined"
        raise reader.error("headers_limit", f"the name of a [limits] table ({known}), got {name!r}")
    return name


def _user_agent_contact(reader: TableReader) -> tuple[str, ...]:
    """What a User-Agent must carry to reach its owner (``user_agent_contact``): any of these."""
    kinds = tuple(reader.str_list("user_agent_contact"))
    bad = [k for k in kinds if k not in USER_AGENT_CONTACTS]
    if bad:
        raise reader.error(
            "user_agent_contact", f"a list of {' and '.join(USER_AGENT_CONTACTS)}, got {bad}"
        )
    return kinds


def _read_cost_source(reader: TableReader, cost: int) -> tuple[str, str, int]:
    """A rule's cost taken from the request: ``cost_header`` or ``cost_query``, up to
    ``max_cost`` (required with either, so no request can charge without bound)."""
    header = reader.text("cost_header", "")
    query = reader.text("cost_query", "")
    if header and query:
        raise reader.error("cost_query", "one of cost_header and cost_query, not both")
    if header and not _HEADER_RE.match(header):
        raise reader.error("cost_header", f"a header name, got {header!r}")
    if not header and not query:
        if reader.has("max_cost"):
            raise reader.error("max_cost", "cost_header or cost_query beside it")
        return "", "", 0
    if not reader.has("max_cost"):
        raise reader.error("max_cost", "the largest cost a request may ask for (missing)")
    max_cost = reader.number("max_cost", 0, max(cost, 1), 1_000_000)
    return header.lower(), query, max_cost


def _read_identity(reader: TableReader | None) -> IdentitySpec:
    if reader is None:
        return IdentitySpec()
    source = reader.text("source", "ip", IDENTITY_SOURCES)
    headers = reader.str_list("key_headers") or ("X-API-Key", "Authorization")
    for header in headers:
        if not _HEADER_RE.match(header):
            raise reader.error("key_headers", f"header names, got {header!r}")
    anonymous = reader.text("anonymous", "ip", ("ip", "reject"))
    proxies = reader.str_list("trusted_proxies")
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise reader.error(
                "trusted_proxies", f"IP addresses or CIDR networks, got {proxy!r}"
            ) from None
    client_ip_header = reader.text("client_ip_header", "X-Forwarded-For")
    if not _HEADER_RE.match(client_ip_header):
        raise reader.error(
            "client_ip_header", f"one header name such as X-Forwarded-For, got {client_ip_header!r}"
        )
    function = reader.hook("callable")
    if source == "callable" and not function:
        raise reader.error("callable", "'package.module:function' when source = 'callable'")
    spec = IdentitySpec(
        source=source,
        key_headers=tuple(h.lower() for h in headers),
        anonymous=anonymous,
        trusted_proxies=proxies,
        client_ip_header=client_ip_header.lower(),
        callable=function,
        accounts=reader.str_map("accounts", secret_keys=True),
        account_hook=reader.hook("account_hook"),
        account_hook_ttl_s=reader.duration("account_hook_ttl", 60.0),
    )
    reader.done()
    return spec


def _read_tiers(
    source: str,
    plans_table: TableReader | None,
    tiers: TableReader | None,
    limits: Mapping[str, LimitSpec],
) -> TiersSpec:
    plans: dict[str, dict[str, LimitSet]] = {}
    if plans_table is not None:
        for plan_name in plans_table.table:
            plan = TableReader(source, f"plans.{plan_name}", plans_table.get(plan_name))
            overrides: dict[str, LimitSet] = {}
            for limit_name in plan.table:
                base = limits.get(limit_name)
                if base is None or base.limit_set is None:
                    known = ", ".join(sorted(n for n, s in limits.items() if s.limit_set)) or "none"
                    raise plan.error(
                        limit_name, f"the name of a [limits] table with rates ({known})"
                    )
                first = base.limit_set.limits[0]
                burst = first.burst if first.algorithm is Algorithm.GCRA else 0
                overrides[limit_name] = _limit_set(
                    plan, limit_name, limit_name, first.algorithm.value, burst
                )
            plan.done()
            plans[plan_name] = overrides
    if tiers is None:
        return TiersSpec(plans=plans)
    keys = tiers.str_map("keys", secret_keys=True)
    for plan_name in set(keys.values()):
        if plan_name not in plans:
            known = ", ".join(sorted(plans)) or "none defined"
            raise tiers.error("keys", f"plan names from [plans] ({known}); got {plan_name!r}")
    spec = TiersSpec(
        plans=plans,
        keys=keys,
        hook=tiers.hook("hook"),
        hook_ttl_s=tiers.duration("hook_ttl", 60.0),
    )
    tiers.done()
    return spec


def _read_lockout(reader: TableReader | None) -> LockoutSpec | None:
    if reader is None:
        return None
    if not reader.has("failures"):
        raise reader.error("failures", "the number of failed answers that lock out (missing)")
    statuses = reader.get("statuses")
    if statuses is None:
        codes = frozenset({401, 403})
    elif isinstance(statuses, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in statuses
    ):
        codes = frozenset(statuses)
    else:
        raise reader.error("statuses", f"a list of 4xx/5xx status codes, got {shown(statuses)}")
    routes = reader.str_list("routes")
    for route in routes:
        _check_route(reader, "routes", route)
    spec = LockoutSpec(
        failures=reader.number("failures", 5, 1),
        window_s=reader.duration("window", 900.0, positive=True),
        duration_s=reader.duration("duration", 900.0, positive=True),
        statuses=codes,
        scope=reader.text("scope", "caller", ("caller", "key", "ip", "account")),
        routes=routes,
    )
    reader.done()
    return spec


def _read_cache(reader: TableReader | None) -> CacheSpec:
    if reader is None:
        return CacheSpec()
    spec = CacheSpec(
        max_entries=reader.number("max_entries", 10_000, 1),
        max_body_bytes=reader.number("max_body_bytes", 1_048_576, 0),
        vary=reader.text("vary", "caller", ("caller", "none")),
    )
    reader.done()
    return spec


def _check_template(reader: TableReader, template: str) -> None:
    sample = {
        "retry_after": 1,
        "limit": 1,
        "remaining": 0,
        "reset": 0,
        "zone": "z",
        "window": "minute",
        "message": "m",
        "status": 429,
        "code": "c",
    }
    try:
        template.format_map(sample)
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + k + "}" for k in sample)
        raise reader.error(
            "body_template",
            f"a template using only {fields} (double braces for literal ones): {exc!r}",
        ) from None


def policy_from_mapping(data: Mapping[str, Any], source: str = "<policy>") -> Policy:
    """Validate a parsed TOML document; ``source`` names it in errors (usually the file path)."""
    top = TableReader(source, "", data)
    limits = _read_limits(source, top.table_at("limits"))
    rules = _read_rules(source, top, limits)
    applied = _limit_names(top, "apply", "apply", limits)
    default = _limit_names(top, "default", "default", limits)
    body, template = _read_body(top)
    usage_path = top.text("usage_path", "")
    if usage_path and not usage_path.startswith("/"):
        raise top.error("usage_path", f"a path starting with '/', got {usage_path!r}")
    tiers = _read_tiers(source, top.table_at("plans"), top.table_at("tiers"), limits)
    policy = Policy(
        source=source,
        store=top.text("store", "memory://"),
        body=body,
        body_template=template,
        body_content_type=top.text("body_content_type", "application/json"),
        shadow=top.flag("shadow", False),
        ietf_headers=top.flag("ietf_headers", False),
        ietf_partition_key=top.flag("ietf_partition_key", False),
        ietf_partition_key_secret=top.text("ietf_partition_key_secret", ""),
        zone_header=top.flag("zone_header", False),
        headers_limit=_headers_limit(top, limits),
        user_agent_required=top.flag("user_agent_required", False),
        user_agent_contact=_user_agent_contact(top),
        usage_path=usage_path,
        apply=applied,
        default=default,
        on_store_error=ON_STORE_ERROR[
            top.text("on_store_error", "fail_open", tuple(ON_STORE_ERROR))
        ],
        fail_open_max_s=top.duration("fail_open_max", 300.0, positive=True),
        exempt_ips=_read_networks(top, "exempt_ips"),
        metrics=top.flag("metrics", True),
        identity=_read_identity(top.table_at("identity")),
        limits=limits,
        rules=rules,
        tiers=tiers,
        lockout=_read_lockout(top.table_at("lockout")),
        cache=_read_cache(top.table_at("cache")),
        keys=read_keys(top.table_at("keys"), tiers.plans),
    )
    top.done()
    _check_whole(top, policy)
    return policy


def _read_limits(source: str, reader: TableReader | None) -> dict[str, LimitSpec]:
    if reader is None:
        return {}
    return {name: _read_limit(source, name, reader.get(name)) for name in reader.table}


def _read_rules(
    source: str, top: TableReader, limits: dict[str, LimitSpec]
) -> tuple[RuleSpec, ...]:
    value = top.get("rules")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise top.error("rules", f"an array of tables ([[rules]]), got {kind_of(value)}")
    return tuple(_read_rule(source, i, table, limits) for i, table in enumerate(value))


def _read_body(top: TableReader) -> tuple[str, str]:
    body = top.text("body", "plain", BODY_STYLES)
    template = top.text("body_template", "")
    if body == "template":
        if not template:
            raise top.error("body_template", "a template string when body = 'template'")
        _check_template(top, template)
    return body, template


def _read_networks(reader: TableReader, key: str) -> tuple[str, ...]:
    networks = reader.str_list(key)
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise reader.error(key, f"IP addresses or CIDR networks, got {net!r}") from None
    return networks


def _check_whole(top: TableReader, policy: Policy) -> None:
    """What no single key can say: settings that need each other, and something to enforce."""
    if policy.ietf_partition_key and not policy.ietf_headers:
        raise top.error(
            "ietf_partition_key", "ietf_headers = true as well (pk is part of RateLimit)"
        )
    if policy.ietf_partition_key_secret and not policy.ietf_partition_key:
        raise top.error("ietf_partition_key_secret", "ietf_partition_key = true as well")
    if not policy.limits:
        raise top.error("limits", "at least one [limits.<name>] table with a 'rates' key")
    if not policy.apply and not policy.default and not any(r.limits for r in policy.rules):
        raise top.error("apply", "at least one limit in 'apply', 'default' or a rule's 'limits'")
    for index, rule in enumerate(policy.rules):
        if not rule.exempt:
            _check_cost(top, index, rule, [*policy.apply, *rule.limits], policy.limits)


def _check_cost(
    top: TableReader, index: int, rule: RuleSpec, names: list[str], limits: Mapping[str, LimitSpec]
) -> None:
    """A rule whose (largest) cost no limit it is charged to can ever admit would refuse every
    request, with no Retry-After that could help."""
    cost, key = (rule.max_cost, "max_cost") if rule.max_cost else (rule.cost, "cost")
    for name in dict.fromkeys(names):
        limit_set = limits[name].limit_set
        if limit_set is None:
            continue
        for limit in limit_set.limits:
            if cost > capacity(limit):
                raise top.error(
                    f"rules[{index}].{key}",
                    f"a cost up to {capacity(limit)}, the most that limit {name!r} ({limit.rate}) "
                    f"ever admits at once; got {cost}, which would refuse every request",
                )
