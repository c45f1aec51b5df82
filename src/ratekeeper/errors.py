"""The one exception tree of ratekeeper.

RatekeeperError
├── RateSyntaxError      a rate string that cannot be read ("100/minute" expected)
├── LimitConfigError     a limit that cannot work (zero amount, burst < 1, unknown algorithm)
├── PolicyError          a policy file that cannot work (names file and key path)
└── StoreError           a store that cannot be reached or used (URL shown, password masked)
    └── StoreURLError    a store URL with an unknown scheme or bad form
"""

from __future__ import annotations

__all__ = [
    "LimitConfigError",
    "PolicyError",
    "RateSyntaxError",
    "RatekeeperError",
    "StoreError",
    "StoreURLError",
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
