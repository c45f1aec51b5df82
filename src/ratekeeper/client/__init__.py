"""The consumer side: httpx transports that pace, learn and retry within any API's limits.

import httpx
from ratekeeper.client import HostPolicy, RateLimitTransport

transport = RateLimitTransport(hosts={"api.example.com": HostPolicy(limits="100/minute")})
with httpx.Client(transport=transport) as client:
    client.get("https://api.example.com/items")

# Or pace by the policy file the provider publishes (a path or a preset name):
transport = RateLimitTransport.from_policy("musique", host="api.musique.example")

# requests users mount the adapter (the requests extra):
session.mount("https://api.example.com/", RateLimitAdapter(default=HostPolicy(limits="5/second")))
"""

from typing import Any

# httpx comes with the client extra: without it, say so instead of a bare ModuleNotFoundError
# from deep inside the package.
try:
    import httpx as _httpx  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"ratekeeper.client needs the client extra ({exc.name} is missing): "
        "pip install 'ratekeeper[client]'",
        name=exc.name,
    ) from exc

from ratekeeper.client.hints import Hints, Quota, read_hints
from ratekeeper.client.pacing import HostPolicy
from ratekeeper.client.retry import RetryPolicy
from ratekeeper.client.transport import AsyncRateLimitTransport, RateLimitTransport
from ratekeeper.errors import ClientConfigError, WaitTooLongError


def __getattr__(name: str) -> Any:
    # The requests adapter needs requests: imported only when asked for.
    if name == "RateLimitAdapter":
        try:
            from ratekeeper.client.requests_adapter import RateLimitAdapter  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"RateLimitAdapter needs the requests extra ({exc.name} is missing): "
                "pip install 'ratekeeper[requests]'",
                name=exc.name,
            ) from exc
        return RateLimitAdapter
    raise AttributeError(f"module 'ratekeeper.client' has no attribute {name!r}")


__all__ = [
    "AsyncRateLimitTransport",
    "ClientConfigError",
    "Hints",
    "HostPolicy",
    "Quota",
    "RateLimitAdapter",
    "RateLimitTransport",
    "RetryPolicy",
    "WaitTooLongError",
    "read_hints",
]
