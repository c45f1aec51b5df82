"""Policies written in Python: a typed builder for the same :class:`Policy` a TOML file gives.

    policy = (
        PolicyBuilder(store="sqlite:///ratekeeper.db")
        .identity("api_key", anonymous="reject")
        .limit("api", "100/minute; 1000/hour")
        .limit("media", "10/minute", algorithm="gcra", burst=3)
        .apply("api")
        .rule("/v1/media/*", limits=["media"], cost=2)
        .exempt("/healthz", "/docs")
        .build()
    )

Each method writes the TOML section of the same name (``docs/policy.md``), and :meth:`build`
validates it with the reader a file goes through: the same checks, the same errors (with the
key path a file would have). Hooks may be given as functions defined at module level; they are
stored as ``"module:function"``, as a file writes them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from ratekeeper.errors import PolicyError
from ratekeeper.policy.schema import Policy
from ratekeeper.policy.validate import policy_from_mapping

__all__ = ["PolicyBuilder"]

Source: TypeAlias = Literal["api_key", "ip", "ip_ua", "account", "global", "callable"]
Scope: TypeAlias = Literal["caller", "key", "ip", "ip_ua", "account", "global"]
Algorithm: TypeAlias = Literal["fixed_window", "first_hit_window", "sliding_window", "gcra"]
BodyStyle: TypeAlias = Literal["plain", "musique", "aisoule", "radio", "problem", "template"]
FailMode: TypeAlias = Literal["fail_open", "fail_closed", "fallback"]
Duration: TypeAlias = float | str
Hook: TypeAlias = str | Callable[..., Any]


def _hook_name(hook: Hook, where: str) -> str:
    """``"module:function"`` for a function defined at module level (a string is kept)."""
    if isinstance(hook, str):
        return hook
    name = f"{getattr(hook, '__module__', '')}:{getattr(hook, '__qualname__', '')}"
    module, _, attr = name.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not hook:
        raise PolicyError(
            f"{where}: expected a function importable as 'module:function' (defined at module "
            f"level), got {hook!r}"
        )
    return name


class PolicyBuilder:
    """Builds a :class:`Policy` in code; every method returns the builder, :meth:`build` the
    validated policy (a :class:`~ratekeeper.errors.PolicyError` when it cannot work)."""

    def __init__(
        self,
        *,
        store: str = "memory://",
        body: BodyStyle = "plain",
        body_template: str = "",
        on_store_error: FailMode = "fail_open",
        fail_open_max: Duration = 300.0,
        ietf_headers: bool = False,
        zone_header: bool = False,
        shadow: bool = False,
        usage_path: str = "",
        user_agent_required: bool = False,
        user_agent_contact: Sequence[Literal["email", "url"]] = (),
        headers_limit: str = "",
        exempt_ips: Sequence[str] = (),
        metrics: bool = True,
        source: str = "<PolicyBuilder>",
    ) -> None:
        self._source = source
        self._data: dict[str, Any] = {
            "store": store,
            "body": body,
            "on_store_error": on_store_error,
            "fail_open_max": fail_open_max,
            "ietf_headers": ietf_headers,
            "zone_header": zone_header,
            "shadow": shadow,
            "user_agent_required": user_agent_required,
            "exempt_ips": list(exempt_ips),
            "metrics": metrics,
            "limits": {},
            "rules": [],
        }
        if body_template:
            self._data["body_template"] = body_template
        if usage_path:
            self._data["usage_path"] = usage_path
        if user_agent_contact:
            self._data["user_agent_contact"] = list(user_agent_contact)
        if headers_limit:
            self._data["headers_limit"] = headers_limit

    def __repr__(self) -> str:
        limits = ", ".join(self._data["limits"])
        return f"<PolicyBuilder limits=[{limits}] rules={len(self._data['rules'])}>"

    def identity(
        self,
        source: Source = "ip",
        *,
        key_headers: Sequence[str] = (),
        anonymous: Literal["ip", "reject"] = "ip",
        trusted_proxies: Sequence[str] = (),
        client_ip_header: str = "",
        callable: Hook = "",
        accounts: Mapping[str, str] | None = None,
        account_hook: Hook = "",
        account_hook_ttl: Duration = 60.0,
    ) -> PolicyBuilder:
        """Who the caller is (``[identity]``); ``callable`` receives the request view."""
        table: dict[str, Any] = {"source": source, "anonymous": anonymous}
        if key_headers:
            table["key_headers"] = list(key_headers)
        if trusted_proxies:
            table["trusted_proxies"] = list(trusted_proxies)
        if client_ip_header:
            table["client_ip_header"] = client_ip_header
        if callable:
            table["callable"] = _hook_name(callable, "identity.callable")
        if accounts:
            table["accounts"] = dict(accounts)
        if account_hook:
            table["account_hook"] = _hook_name(account_hook, "identity.account_hook")
            table["account_hook_ttl"] = account_hook_ttl
        self._data["identity"] = table
        return self

    def limit(
        self,
        name: str,
        rates: str | None = None,
        *,
        scope: Scope = "caller",
        algorithm: Algorithm = "fixed_window",
        burst: int = 0,
        status: int | None = None,
        shadow: bool = False,
        in_flight: int = 0,
    ) -> PolicyBuilder:
        """A named limit (``[limits.<name>]``), shared by every rule that names it."""
        table: dict[str, Any] = {"scope": scope, "algorithm": algorithm, "shadow": shadow}
        if rates is not None:
            table["rates"] = rates
        if burst:
            table["burst"] = burst
        if status is not None:
            table["status"] = status
        if in_flight:
            table["in_flight"] = in_flight
        self._data["limits"][name] = table
        return self

    def apply(self, *limits: str) -> PolicyBuilder:
        """Limits every request is charged (names, or rates such as ``"1000/hour"``)."""
        self._data.setdefault("apply", []).extend(limits)
        return self

    def default(self, *limits: str) -> PolicyBuilder:
        """Limits of requests that no rule matches."""
        self._data.setdefault("default", []).extend(limits)
        return self

    def rule(
        self,
        *routes: str,
        limits: Iterable[str] = (),
        methods: Iterable[str] = (),
        cost: int = 1,
        name: str = "",
        shadow: bool = False,
        cache_ttl: Duration = 0,
        headers_limit: str = "",
        cost_header: str = "",
        cost_query: str = "",
        max_cost: int = 0,
    ) -> PolicyBuilder:
        """Routes charged ``limits`` besides ``apply`` (``[[rules]]``); the first match wins.
        ``cost_header``/``cost_query`` (with ``max_cost``) take the cost from the request."""
        table: dict[str, Any] = {
            "routes": list(routes),
            "limits": list(limits),
            "cost": cost,
            "shadow": shadow,
            "cache_ttl": cache_ttl,
        }
        if methods:
            table["methods"] = list(methods)
        if name:
            table["name"] = name
        optional = {
            "headers_limit": headers_limit,
            "cost_header": cost_header,
            "cost_query": cost_query,
            "max_cost": max_cost,
        }
        table.update({key: value for key, value in optional.items() if value})
        self._data["rules"].append(table)
        return self

    def exempt(self, *routes: str, methods: Iterable[str] = ()) -> PolicyBuilder:
        """Routes with no limits at all (a rule with ``exempt = true``)."""
        table: dict[str, Any] = {"routes": list(routes), "exempt": True}
        if methods:
            table["methods"] = list(methods)
        self._data["rules"].append(table)
        return self

    def plan(self, name: str, **rates: str) -> PolicyBuilder:
        """A plan tier (``[plans.<name>]``): other rates for named limits, by limit name."""
        self._data.setdefault("plans", {})[name] = dict(rates)
        return self

    def tiers(
        self,
        *,
        keys: Mapping[str, str] | None = None,
        hook: Hook = "",
        hook_ttl: Duration = 60.0,
    ) -> PolicyBuilder:
        """How a key finds its plan (``[tiers]``): a table of keys, or a hook."""
        table: dict[str, Any] = {"hook_ttl": hook_ttl}
        if keys:
            table["keys"] = dict(keys)
        if hook:
            table["hook"] = _hook_name(hook, "tiers.hook")
        self._data["tiers"] = table
        return self

    def lockout(
        self,
        failures: int,
        *,
        window: Duration = "15 minutes",
        duration: Duration = "15 minutes",
        statuses: Iterable[int] = (401, 403),
        scope: Literal["caller", "key", "ip", "account"] = "caller",
        routes: Iterable[str] = (),
    ) -> PolicyBuilder:
        """Lock a caller out after ``failures`` failed answers within ``window`` (``[lockout]``)."""
        table: dict[str, Any] = {
            "failures": failures,
            "window": window,
            "duration": duration,
            "statuses": list(statuses),
            "scope": scope,
        }
        if routes:
            table["routes"] = list(routes)
        self._data["lockout"] = table
        return self

    def build(self) -> Policy:
        """The validated policy; raises :class:`~ratekeeper.errors.PolicyError` as a file would."""
        data = {key: value for key, value in self._data.items() if value != {}}
        return policy_from_mapping(data, self._source)
