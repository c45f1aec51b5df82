"""ratekeeper: HTTP API rate limiting on both sides of the wire.

Everything public is exported here; submodules are implementation detail.
"""

import importlib
from typing import Any

# The version lives in _version.py alone (the build reads it there too).
from ratekeeper._version import __version__ as __version__
from ratekeeper.algorithms import Algorithm
from ratekeeper.clock import Clock, ManualClock, system_clock
from ratekeeper.core import decide
from ratekeeper.decision import Decision, LimitState
from ratekeeper.errors import (
    LimitConfigError,
    PolicyError,
    RatekeeperError,
    RateSyntaxError,
    RedisStoreError,
    StoreError,
    StoreURLError,
)
from ratekeeper.limit import Limit, LimitSet
from ratekeeper.limiter import AsyncLimiter, Limiter
from ratekeeper.rates import Rate, parse_rate, parse_rates
from ratekeeper.stores.base import AsyncStore, Store
from ratekeeper.stores.fail_mode import FailMode
from ratekeeper.stores.fallback import DegradedDecision, FallbackStore
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.sqlite import SQLiteStore
from ratekeeper.stores.url import store_from_url


def __getattr__(name: str) -> Any:
    # The Redis store needs the optional redis-py: import it only when asked for.
    if name == "RedisStore":
        return getattr(importlib.import_module("ratekeeper.stores.redis"), name)
    raise AttributeError(f"module 'ratekeeper' has no attribute {name!r}")


__all__ = [
    "Algorithm",
    "AsyncLimiter",
    "AsyncStore",
    "Clock",
    "Decision",
    "DegradedDecision",
    "FailMode",
    "FallbackStore",
    "Limit",
    "LimitConfigError",
    "LimitSet",
    "LimitState",
    "Limiter",
    "ManualClock",
    "MemoryStore",
    "PolicyError",
    "Rate",
    "RateSyntaxError",
    "RatekeeperError",
    "RedisStore",
    "RedisStoreError",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreURLError",
    "decide",
    "parse_rate",
    "parse_rates",
    "store_from_url",
    "system_clock",
]
