"""The consumer side: httpx transports that pace, learn and retry within any API's limits.

import httpx
from ratekeeper.client import HostPolicy, RateLimitTransport

transport = RateLimitTransport(hosts={"api.example.com": HostPolicy(limits="100/minute")})
with httpx.Client(transport=transport) as client:
    client.get("https://api.example.com/items")

# Or pace by the policy file the provider publishes (a path or a preset name):
transport = RateLimitTransport.from_policy("musique", host="api.musique.example")
"""

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

__all__ = [
    "AsyncRateLimitTransport",
    "ClientConfigError",
    "Hints",
    "HostPolicy",
    "Quota",
    "RateLimitTransport",
    "RetryPolicy",
    "WaitTooLongError",
    "read_hints",
]
