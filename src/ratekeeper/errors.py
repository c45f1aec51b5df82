"""The one exception tree of ratekeeper.

RatekeeperError
├── RateSyntaxError      a rate string that cannot be read ("100/minute" expected)
├── LimitConfigError     a limit that cannot work (zero amount, burst < 1, unknown algorithm)
├── PolicyError          a policy file that cannot work (names file and key path)
├── StoreError           a store that cannot be reached or used (URL shown, password masked)
│   └── StoreURLError    a store URL with an unknown scheme or bad form
├── RateLimited          a request refused by its limits, where a framework answers by raising
└── GatewayError         ``ratekeeper serve`` cannot start or carry on
    ├── GatewayConfigError  a serve setting that cannot work (upstream URL, demo API name)
    └── UpstreamAborted     the upstream failed after its answer had started (connection cut)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "GatewayConfigError",
    "GatewayError",
    "LimitConfigError",
    "PolicyError",
    "RateLimited",
    "RateSyntaxError",
    "RatekeeperError",
    "StoreError",
    "StoreURLError",
    "UpstreamAborted",
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
