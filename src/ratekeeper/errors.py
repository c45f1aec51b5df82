"""The one exception tree of ratekeeper.

RatekeeperError
├── RateSyntaxError      a rate string that cannot be read ("100/minute" expected)
├── LimitConfigError     a limit that cannot work (zero amount, burst < 1, unknown algorithm)
├── PolicyError          a policy file that cannot work (names file and key path)
├── StoreError           a store that cannot be reached or used (URL shown, password masked)
│   ├── StoreURLError    a store URL with an unknown scheme or bad form
│   ├── RedisStoreError  Redis or Valkey failed during a decision
│   └── RegistryError    a key registry entry that cannot work (bad digest, plan, address)
├── ClientConfigError    a client setting that cannot work (names the setting)
├── WaitTooLongError     a wait past the client's cap (carries the server's deadline)
├── RateLimited          a request refused by its limits, where a framework answers by raising
└── GatewayError         ``ratekeeper serve`` cannot start or carry on
    ├── GatewayConfigError  a serve setting that cannot work (upstream URL, demo API name)
    └── UpstreamAborted     the upstream failed after its answer had started (connection cut)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ClientConfigError",
    "GatewayConfigError",
    "GatewayError",
    "LimitConfigError",
    "PolicyError",
    "RateLimited",
    "RateSyntaxError",
    "RatekeeperError",
    "RedisStoreError",
    "RegistryError",
    "StoreError",
    "StoreURLError",
    "UpstreamAborted",
    "WaitTooLongError",
]


class RatekeeperError(Exception):
    """Base of every error ratekeeper raises on purpose."""


class RateSyntaxError(RatekeeperError, ValueError):
    """A rate string could not be parsed; the message quotes it and shows the expected form."""


class LimitConfigError(RatekeeperError, ValueError):
    """A limit was configured with values that cannot work."""


class PolicyError(RatekeeperError, ValueError):
    """A policy cannot work; the message names the file and the key path."""


class StoreError(RatekeeperError):
    """A store could not be reached or used."""


class StoreURLError(StoreError, ValueError):
    """A store URL has an unknown scheme or a malformed form."""


class RegistryError(StoreError, ValueError):
    """A key registry entry that cannot work; the message names the field and the bound."""


class ClientConfigError(RatekeeperError, ValueError):
    """A client setting that cannot work; the message names it and what is expected."""


class WaitTooLongError(RatekeeperError):
    """The wait before the next attempt exceeds the caller's cap.

    ``deadline`` is the epoch second from which the server would accept the request (or the
    client's own pacing would allow it); ``wait_s`` the wait that was refused.
    """

    def __init__(self, *, url: str, wait_s: float, deadline: float, cap_s: float, why: str) -> None:
        super().__init__(
            f"{url}: {why} asks for a wait of {wait_s:.1f}s (until epoch {deadline:.0f}), "
            f"over the cap of {cap_s:g}s; retry after the deadline or raise the cap"
        )
        self.url = url
        self.wait_s = wait_s
        self.deadline = deadline
        self.cap_s = cap_s


class RedisStoreError(StoreError):
    """Redis or Valkey failed during a decision (connection lost, timeout, refused command)."""


class RateLimited(RatekeeperError):
    """A request refused by its limits, raised where a framework answers by exception (the
    FastAPI dependency); ``status``, ``headers`` and ``body`` are the ready 429/503 answer."""

    def __init__(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"request refused with status {status}")
        self.status = status
        self.headers = list(headers)
        self.body = body


class GatewayError(RatekeeperError):
    """``ratekeeper serve`` cannot start or carry on."""


class GatewayConfigError(GatewayError, ValueError):
    """A ``serve`` setting that cannot work; the message names it and what is expected."""


class UpstreamAborted(GatewayError):
    """The upstream failed after the answer had started: the client's connection must be cut."""
