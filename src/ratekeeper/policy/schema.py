"""The policy schema: plain frozen values read from a TOML table, validated with key paths.

Every error is a :class:`~ratekeeper.errors.PolicyError` saying which file, which key path, what
was found and what was expected. The schema is documented in ``docs/policy.md``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ratekeeper.algorithms import Algorithm
from ratekeeper.errors import LimitConfigError, PolicyError, RateSyntaxError
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.rates import parse_rates, seconds_per_unit
from ratekeeper.stores.fail_mode import FailMode

__all__ = [
    "BODY_STYLES",
    "IDENTITY_SOURCES",
    "SCOPES",
    "CacheSpec",
    "IdentitySpec",
    "LimitSpec",
    "LockoutSpec",
    "Policy",
    "RuleSpec",
    "TiersSpec",
    "parse_duration",
    "policy_from_mapping",
]

IDENTITY_SOURCES = ("api_key", "ip", "ip_ua", "account", "global", "callable")
# A limit counts per one of these; "caller" means whatever [identity].source says.
SCOPES = ("caller", "key", "ip", "ip_ua", "account", "global")
BODY_STYLES = ("plain", "musique", "aisoule", "radio", "problem", "template")
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

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_RESERVED_LIMIT_NAMES = frozenset({"lockout", "lockout-failures"})
_HOOK_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySpec:
    """Who the caller is (``[identity]``)."""

    source: str = "ip"
    key_headers: tuple[str, ...] = ("x-api-key", "authorization")
    anonymous: str = "ip"
    trusted_proxies: tuple[str, ...] = ()
    callable: str = ""
    accounts: Mapping[str, str] = field(default_factory=dict)
    account_hook: str = ""
    account_hook_ttl_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSpec:
    """One named limit (``[limits.<name>]``): its limit set, what it counts per, how it answers."""

    name: str
    limit_set: LimitSet | None
    scope: str = "caller"
    status: int = 429
    shadow: bool = False
    in_flight: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSpec:
    """One ``[[rules]]`` entry: routes and methods mapped to limits and behaviour."""

    name: str
    routes: tuple[str, ...]
    methods: frozenset[str] | None
    limits: tuple[str, ...] = ()
    cost: int = 1
    exempt: bool = False
    shadow: bool = False
    cache_ttl_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TiersSpec:
    """Plans (``[plans.<name>]``) and how a key finds its plan (``[tiers]``)."""

    plans: Mapping[str, Mapping[str, LimitSet]] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)
    hook: str = ""
    hook_ttl_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LockoutSpec:
    """Auth lockout (``[lockout]``): ``failures`` answers in ``statuses`` within ``window_s``
    lock the caller out for ``duration_s``."""

    failures: int
    window_s: float
    duration_s: float
    statuses: frozenset[int] = frozenset({401, 403})
    scope: str = "caller"
    routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSpec:
    """The server-side GET response cache (``[cache]``); TTLs are per rule."""

    max_entries: int = 10_000
    max_body_bytes: int = 1_048_576
    vary: str = "caller"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A validated policy; compile it with :func:`ratekeeper.http.compiled.compile_policy`."""

    source: str = "<policy>"
    store: str = "memory://"
    body: str = "plain"
    body_template: str = ""
    body_content_type: str = "application/json"
    shadow: bool = False
    ietf_headers: bool = False
    ietf_partition_key: bool = False
    ietf_partition_key_secret: str = field(default="", repr=False)
    zone_header: bool = False
    user_agent_required: bool = False
    usage_path: str = ""
    apply: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    on_store_error: FailMode = FailMode.FAIL_OPEN
    exempt_ips: tuple[str, ...] = ()
    metrics: bool = True
    identity: IdentitySpec = field(default_factory=IdentitySpec)
    limits: Mapping[str, LimitSpec] = field(default_factory=dict)
    rules: tuple[RuleSpec, ...] = ()
    tiers: TiersSpec = field(default_factory=TiersSpec)
    lockout: LockoutSpec | None = None
    cache: CacheSpec = field(default_factory=CacheSpec)


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15 minutes"``, ``"2h"``; raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        unit = (seconds_per_unit(match[2]) if match[2] else 1.0) if match else None
        if match is None or unit is None:
            raise ValueError("a duration such as 30, '30s', '15 minutes' or '2h'")
        seconds = float(match[1]) * unit
    else:
        raise ValueError("a duration such as 30, '30s', '15 minutes' or '2h'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration of 0 seconds or more")
    return seconds


class _Reader:
    """Reads one table, remembering its key path, and refuses keys it was not asked about."""

    def __init__(self, source: str, path: str, table: object) -> None:
        self.source = source
        self.path = path
        if not isinstance(table, Mapping):
            raise self.error("", f"a table, got {_kind(table)}")
        self.table: Mapping[str, Any] = table
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else self.path or key or "(top level)"

    def error(self, key: str, expected: str) -> PolicyError:
        return PolicyError(f"{self.source}: {self.where(key)}: expected {expected}")

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.table.get(key)

    def has(self, key: str) -> bool:
        return key in self.table

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"true or false, got {_show(value)}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"a string, got {_show(value)}")
        if choices and value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}; got {value!r}")
        return value

    def number(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        top = f" and <= {maximum}" if maximum is not None else ""
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise self.error(key, f"a whole number >= {minimum}{top}, got {_show(value)}")
        return value

    def duration(self, key: str, default: float, positive: bool = False) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, f"{exc}, got {_show(value)}") from None
        if positive and seconds <= 0:
            raise self.error(key, f"a duration above 0, got {_show(value)}")
        return seconds

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"a list of strings, got {_show(value)}")
        return tuple(value)

    def hook(self, key: str) -> str:
        value = self.text(key, "")
        if value and not _HOOK_RE.match(value):
            raise self.error(key, f"'package.module:function', got {value!r}")
        return value

    def str_map(self, key: str, secret_keys: bool = False) -> dict[str, str]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"a table of strings, got {_show(value)}")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(item, str) or not item:
                shown = "a key" if secret_keys else repr(name)
                raise self.error(key, f"a non-empty string for {shown}, got {_show(item)}")
            out[name] = item
        return out

    def table_at(self, key: str) -> _Reader | None:
        value = self.get(key)
        if value is None:
            return None
        return _Reader(self.source, self.where(key), value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"one of the known keys ({known}): unknown key")


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
    }.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _limit_set(reader: _Reader, key: str, name: str, algorithm: str, burst: int) -> LimitSet:
    rates_text = reader.get(key)
    if not isinstance(rates_text, str):
        raise reader.error(
            key, f"a rate string such as '100/minute; 1000/hour', got {_show(rates_text)}"
        )
    try:
        rates = parse_rates(rates_text)
        algo = Algorithm.parse(algorithm)
        limits = [Limit(rate=rate, algorithm=algo, burst=burst) for rate in rates]
        return LimitSet(name, limits)
    except (RateSyntaxError, LimitConfigError) as exc:
        raise reader.error(key, f"a valid limit: {exc}") from None


def _read_limit(source: str, name: str, table: object) -> LimitSpec:
    reader = _Reader(source, f"limits.{name}", table)
    if not name or any(c in name for c in ':{}\n"'):
        raise PolicyError(f"{source}: limits.{name}: expected a name without ':{{}}\" characters")
    if name in _RESERVED_LIMIT_NAMES:
        raise PolicyError(
            f"{source}: limits.{name}: expected another name ({name!r} is the lockout's)"
        )
    algorithm = reader.text("algorithm", "fixed_window")
    try:
        Algorithm.parse(algorithm)
    except LimitConfigError as exc:
        raise reader.error("algorithm", str(exc).replace("unknown algorithm ", "")) from None
    burst = reader.number("burst", 0, 0)
    in_flight = reader.number("in_flight", 0, 0)
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


def _check_route(reader: _Reader, key: str, route: str) -> None:
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


def _read_rule(source: str, index: int, table: object, limits: Mapping[str, LimitSpec]) -> RuleSpec:
    reader = _Reader(source, f"rules[{index}]", table)
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
    names = reader.str_list("limits")
    for name in names:
        if name not in limits:
            known = ", ".join(sorted(limits)) or "none defined"
            raise reader.error("limits", f"names of [limits] tables ({known}); got {name!r}")
    cost = reader.number("cost", 1, 1)
    exempt = reader.flag("exempt", False)
    shadow = reader.flag("shadow", False)
    cache_ttl = reader.duration("cache_ttl", 0.0)
    name = reader.text("name", routes[0])
    reader.done()
    return RuleSpec(
        name=name,
        routes=routes,
        methods=methods,
        limits=names,
        cost=cost,
        exempt=exempt,
        shadow=shadow,
        cache_ttl_s=cache_ttl,
    )


def _read_identity(reader: _Reader | None) -> IdentitySpec:
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
    function = reader.hook("callable")
    if source == "callable" and not function:
        raise reader.error("callable", "'package.module:function' when source = 'callable'")
    spec = IdentitySpec(
        source=source,
        key_headers=tuple(h.lower() for h in headers),
        anonymous=anonymous,
        trusted_proxies=proxies,
        callable=function,
        accounts=reader.str_map("accounts", secret_keys=True),
        account_hook=reader.hook("account_hook"),
        account_hook_ttl_s=reader.duration("account_hook_ttl", 60.0),
    )
    reader.done()
    return spec


def _read_tiers(
    source: str, plans_table: _Reader | None, tiers: _Reader | None, limits: Mapping[str, LimitSpec]
) -> TiersSpec:
    plans: dict[str, dict[str, LimitSet]] = {}
    if plans_table is not None:
        for plan_name in plans_table.table:
            plan = _Reader(source, f"plans.{plan_name}", plans_table.get(plan_name))
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


def _read_lockout(reader: _Reader | None) -> LockoutSpec | None:
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
        raise reader.error("statuses", f"a list of 4xx/5xx status codes, got {_show(statuses)}")
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


def _read_cache(reader: _Reader | None) -> CacheSpec:
    if reader is None:
        return CacheSpec()
    spec = CacheSpec(
        max_entries=reader.number("max_entries", 10_000, 1),
        max_body_bytes=reader.number("max_body_bytes", 1_048_576, 0),
        vary=reader.text("vary", "caller", ("caller", "none")),
    )
    reader.done()
    return spec


def _check_template(reader: _Reader, template: str) -> None:
    sample = {
        "retry_after": 1,
        "limit": 1,
        "remaining": 0,
        "reset": 0,
        "zone": "z",
        "window": "minute",
        "message": "m",
        "status": 429,
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
    top = _Reader(source, "", data)
    limits_reader = top.table_at("limits")
    limits: dict[str, LimitSpec] = {}
    if limits_reader is not None:
        for name in limits_reader.table:
            limits[name] = _read_limit(source, name, limits_reader.get(name))
    if not limits:
        raise top.error("limits", "at least one [limits.<name>] table with a 'rates' key")
    rules_value = top.get("rules")
    if rules_value is None:
        rules_value = []
    if not isinstance(rules_value, list):
        raise top.error("rules", f"an array of tables ([[rules]]), got {_kind(rules_value)}")
    rules = tuple(_read_rule(source, i, t, limits) for i, t in enumerate(rules_value))
    applied = top.str_list("apply")
    default = top.str_list("default")
    for key, names in (("apply", applied), ("default", default)):
        for name in names:
            if name not in limits:
                raise top.error(key, f"names of [limits] tables ({', '.join(sorted(limits))})")
    body = top.text("body", "plain", BODY_STYLES)
    template = top.text("body_template", "")
    if body == "template":
        if not template:
            raise top.error("body_template", "a template string when body = 'template'")
        _check_template(top, template)
    usage_path = top.text("usage_path", "")
    if usage_path and not usage_path.startswith("/"):
        raise top.error("usage_path", f"a path starting with '/', got {usage_path!r}")
    exempt_ips = top.str_list("exempt_ips")
    for net in exempt_ips:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise top.error("exempt_ips", f"IP addresses or CIDR networks, got {net!r}") from None
    identity = _read_identity(top.table_at("identity"))
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
        user_agent_required=top.flag("user_agent_required", False),
        usage_path=usage_path,
        apply=applied,
        default=default,
        on_store_error=ON_STORE_ERROR[
            top.text("on_store_error", "fail_open", tuple(ON_STORE_ERROR))
        ],
        exempt_ips=exempt_ips,
        metrics=top.flag("metrics", True),
        identity=identity,
        limits=limits,
        rules=rules,
        tiers=tiers,
        lockout=_read_lockout(top.table_at("lockout")),
        cache=_read_cache(top.table_at("cache")),
    )
    top.done()
    if policy.ietf_partition_key and not policy.ietf_headers:
        raise top.error(
            "ietf_partition_key", "ietf_headers = true as well (pk is part of RateLimit)"
        )
    if policy.ietf_partition_key_secret and not policy.ietf_partition_key:
        raise top.error("ietf_partition_key_secret", "ietf_partition_key = true as well")
    if not applied and not default and not any(r.limits for r in rules):
        raise top.error("apply", "at least one limit in 'apply', 'default' or a rule's 'limits'")
    return policy
