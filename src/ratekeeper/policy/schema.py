"""The policy schema: plain frozen values, as read from a TOML table or built in Python.

Reading and validating them (every error a :class:`~ratekeeper.errors.PolicyError` naming the
file, the key path, what was found and what was expected) is ``ratekeeper.policy.validate``; the
schema is documented in ``docs/policy.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ratekeeper.limit import LimitSet
from ratekeeper.policy.keys import KeysSpec
from ratekeeper.stores.fail_mode import FailMode

__all__ = [
    "BODY_STYLES",
    "IDENTITY_SOURCES",
    "SCOPES",
    "USER_AGENT_CONTACTS",
    "CacheSpec",
    "IdentitySpec",
    "LimitSpec",
    "LockoutSpec",
    "Policy",
    "RuleSpec",
    "TiersSpec",
]

IDENTITY_SOURCES = ("api_key", "ip", "ip_ua", "account", "global", "callable")
# A limit counts per one of these; "caller" means whatever [identity].source says.
SCOPES = ("caller", "key", "ip", "ip_ua", "account", "global")
BODY_STYLES = ("plain", "musique", "aisoule", "radio", "problem", "template")
# What a User-Agent may carry so that its owner can be contacted (user_agent_contact).
USER_AGENT_CONTACTS = ("email", "url")


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySpec:
    """Who the caller is (``[identity]``)."""

    source: str = "ip"
    key_headers: tuple[str, ...] = ("x-api-key", "authorization")
    anonymous: str = "ip"
    trusted_proxies: tuple[str, ...] = ()
    # The one header a trusted proxy is believed for (lower-case).
    client_ip_header: str = "x-forwarded-for"
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
    cost_header: str = ""
    cost_query: str = ""
    max_cost: int = 0
    exempt: bool = False
    shadow: bool = False
    cache_ttl_s: float = 0.0
    headers_limit: str = ""


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
    headers_limit: str = ""
    user_agent_required: bool = False
    user_agent_contact: tuple[str, ...] = ()
    usage_path: str = ""
    apply: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    on_store_error: FailMode = FailMode.FAIL_OPEN
    # How long fail_open may last in one outage before decisions fall back to this process's
    # memory (a store that stays broken must not disable enforcement for ever).
    fail_open_max_s: float = 300.0
    exempt_ips: tuple[str, ...] = ()
    metrics: bool = True
    identity: IdentitySpec = field(default_factory=IdentitySpec)
    limits: Mapping[str, LimitSpec] = field(default_factory=dict)
    rules: tuple[RuleSpec, ...] = ()
    tiers: TiersSpec = field(default_factory=TiersSpec)
    lockout: LockoutSpec | None = None
    cache: CacheSpec = field(default_factory=CacheSpec)
    keys: KeysSpec = field(default_factory=KeysSpec)
