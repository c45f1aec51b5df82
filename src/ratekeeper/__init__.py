"""ratekeeper: HTTP API rate limiting on both sides of the wire.

Every public name is exported here: ``from ratekeeper import X``; submodules are implementation
detail. The core, the stores and policies are imported with the package; the middleware, the
gateway, the client and the Redis store when first used, so a name whose optional dependency is
missing says which extra to install (``pip install 'ratekeeper[redis]'``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The version lives in _version.py alone (the build reads it there too).
from ratekeeper._version import __version__ as __version__
from ratekeeper.algorithms import Algorithm
from ratekeeper.clock import Clock, ManualClock, system_clock
from ratekeeper.core import decide
from ratekeeper.decision import ChargedDecision, Decision, LimitState
from ratekeeper.errors import (
    ClientConfigError,
    GatewayConfigError,
    GatewayError,
    LimitConfigError,
    PolicyError,
    RatekeeperError,
    RateLimited,
    RateSyntaxError,
    RedisStoreError,
    StoreError,
    StoreURLError,
    UpstreamAborted,
    WaitTooLongError,
)
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.limiter import AsyncLimiter, Limiter
from ratekeeper.policy import (
    Policy,
    PolicyBuilder,
    load_policy,
    loads_policy,
    policy_from_mapping,
    preset_path,
)
from ratekeeper.rates import Rate, parse_rate, parse_rates
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision, FallbackStore
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.over_limit import OverLimitCache, RecalledRefusal
from ratekeeper.stores.sqlite import SQLiteStore
from ratekeeper.stores.url import store_from_url

if TYPE_CHECKING:
    from ratekeeper.client import (
        AsyncRateLimitTransport,
        Hints,
        HostPolicy,
        Quota,
        RateLimitAdapter,
        RateLimitTransport,
        RetryPolicy,
        read_hints,
    )
    from ratekeeper.gateway.app import Gateway, ServeSettings, build_gateway
    from ratekeeper.http.asgi import RateLimitMiddleware
    from ratekeeper.http.compiled import CompiledPolicy, compile_policy
    from ratekeeper.http.engine import Enforcer
    from ratekeeper.http.fastapi import RateLimit
    from ratekeeper.http.identity import RequestView
    from ratekeeper.http.wsgi import RateLimitWSGIMiddleware
    from ratekeeper.stores.fallback_shards import ShardFallbackStore
    from ratekeeper.stores.redis import RedisStore

# Imported on first use: name -> (module, the extra that installs its dependencies, if any).
_LAZY: dict[str, tuple[str, str | None]] = {
    "AsyncRateLimitTransport": ("ratekeeper.client", "client"),
    "CompiledPolicy": ("ratekeeper.http.compiled", None),
    "Enforcer": ("ratekeeper.http.engine", None),
    "Gateway": ("ratekeeper.gateway.app", "http"),
    "Hints": ("ratekeeper.client", "client"),
    "HostPolicy": ("ratekeeper.client", "client"),
    "Quota": ("ratekeeper.client", "client"),
    "RateLimit": ("ratekeeper.http.fastapi", "fastapi"),
    "RateLimitAdapter": ("ratekeeper.client", "requests"),
    "RateLimitMiddleware": ("ratekeeper.http.asgi", None),
    "RateLimitTransport": ("ratekeeper.client", "client"),
    "RateLimitWSGIMiddleware": ("ratekeeper.http.wsgi", None),
    "RedisStore": ("ratekeeper.stores.redis", "redis"),
    "RequestView": ("ratekeeper.http.identity", None),
    "RetryPolicy": ("ratekeeper.client", "client"),
    "ServeSettings": ("ratekeeper.gateway.app", "http"),
    "ShardFallbackStore": ("ratekeeper.stores.fallback_shards", None),
    "build_gateway": ("ratekeeper.gateway.app", "http"),
    "compile_policy": ("ratekeeper.http.compiled", None),
    "read_hints": ("ratekeeper.client", "client"),
}


def __getattr__(name: str) -> Any:
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'ratekeeper' has no attribute {name!r}")
    module_name, extra = found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if extra is None or missing.partition(".")[0] in ("", "ratekeeper"):
            raise
        raise ImportError(
            f"ratekeeper.{name} needs {missing!r}, which is not installed: "
            f"pip install 'ratekeeper[{extra}]'",
            name=missing,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Algorithm",
    "AsyncLimiter",
    "AsyncRateLimitTransport",
    "AsyncStore",
    "ChargedDecision",
    "ClientConfigError",
    "Clock",
    "CompiledPolicy",
    "Decision",
    "DegradedDecision",
    "Enforcer",
    "FailMode",
    "FallbackStore",
    "Gateway",
    "GatewayConfigError",
    "GatewayError",
    "Hints",
    "HostPolicy",
    "Limit",
    "LimitConfigError",
    "LimitSet",
    "LimitState",
    "Limiter",
    "ManualClock",
    "MemoryStore",
    "OverLimitCache",
    "Policy",
    "PolicyBuilder",
    "PolicyError",
    "Quota",
    "Rate",
    "RateLimit",
    "RateLimitAdapter",
    "RateLimitMiddleware",
    "RateLimitTransport",
    "RateLimitWSGIMiddleware",
    "RateLimited",
    "RateSyntaxError",
    "RatekeeperError",
    "RecalledRefusal",
    "RedisStore",
    "RedisStoreError",
    "RequestView",
    "RetryPolicy",
    "SQLiteStore",
    "ServeSettings",
    "ShardFallbackStore",
    "Store",
    "StoreError",
    "StoreURLError",
    "UpstreamAborted",
    "WaitTooLongError",
    "build_gateway",
    "compile_policy",
    "decide",
    "load_policy",
    "loads_policy",
    "parse_rate",
    "parse_rates",
    "policy_from_mapping",
    "preset_path",
    "read_hints",
    "store_from_url",
    "system_clock",
]
