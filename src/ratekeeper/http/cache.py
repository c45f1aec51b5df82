"""The server-side GET response cache: whole 200 answers kept for a rule's TTL.

A hit is served after the caller's limits were charged, so cached answers still count. Only
small, complete answers are kept; per-request headers (rate limits, dates, cookies) are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratekeeper.clock import Clock

__all__ = ["CachedResponse", "ResponseCache"]

_SKIP = frozenset(
    {
        "connection",
        "date",
        "keep-alive",
        "retry-after",
        "server",
        "set-cookie",
        "transfer-encoding",
        "ratelimit",
        "ratelimit-policy",
        "x-cache",
    }
)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored answer: status, headers (str pairs) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def cacheable_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The headers worth replaying from a cache."""
    return tuple(
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in _SKIP and not low.startswith("x-ratelimit-")
    )


class ResponseCache:
    """A bounded in-process cache; expired entries are dropped when met or when full."""

    __slots__ = ("_clock", "_data", "max_body_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_body_bytes: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._data: dict[str, tuple[float, CachedResponse]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> CachedResponse | None:
        """The fresh answer stored under ``key``, if any."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._data.pop(key, None)
            return None
        return item[1]

    def put(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """Keep ``response`` for ``ttl_s`` seconds (if small enough)."""
        if len(response.body) > self.max_body_bytes:
            return
        data = self._data
        if len(data) >= self.max_entries and key not in data:
            now = self._clock()
            for old in [k for k, (expires, _) in data.items() if expires <= now]:
                del data[old]
            if len(data) >= self.max_entries:
                for old in list(data)[: max(1, self.max_entries // 10)]:
                    del data[old]
        data[key] = (self._clock() + ttl_s, response)
