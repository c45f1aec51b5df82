"""What a store wrapper answers while its shared store is down.

Its own module, not ``fallback.py``: the policy schema reads fail modes from TOML without pulling
in the store drivers, and ``FallbackStore`` acts on them.
"""

from __future__ import annotations

from enum import StrEnum

from ratekeeper.errors import LimitConfigError

__all__ = ["FailMode"]


class FailMode(StrEnum):
    """What :class:`~ratekeeper.stores.fallback.FallbackStore` answers while its primary store
    is down."""

    FAIL_OPEN = "fail_open"
    FAIL_CLOSED = "fail_closed"
    FALLBACK = "fallback"

    @classmethod
    def parse(cls, text: str | FailMode) -> FailMode:
        """Read a mode name; ``-`` and ``_`` are alike (``fail-open``)."""
        if isinstance(text, FailMode):
            return text
        name = str(text).strip().lower().replace("-", "_")
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise LimitConfigError(f"unknown fail mode {text!r}: expected one of {known}") from None
