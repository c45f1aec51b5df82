"""The server-side GET response cache: whole 200 answers kept for a rule's TTL.

The cache is not rate limiting: it is a middleware of its own (:mod:`ratekeeper.http.cache_asgi`,
:mod:`ratekeeper.http.cache_wsgi`) placed inside the rate-limit middleware, so a hit is served
after the caller's limits were charged and cached answers still count. Only small, complete
answers are kept; per-request headers (rate limits, dates, cookies, the length, which the
middleware writes once itself) are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ratekeeper.clock import Clock
from ratekeeper.http.compiled import CompiledPolicy
from ratekeeper.http.flow import Ticket
from ratekeeper.http.identity import RequestView

__all__ = [
    "TICKET",
    "CacheKeys",
    "CachedResponse",
    "ResponseCache",
    "ResponseStore",
    "cacheable_headers",
    "caches",
]

TICKET = "ratekeeper.ticket"
"""The ASGI scope / WSGI environ key under which the rate-limit middleware leaves its ticket."""

_SKIP = frozenset(
    {
        "connection",
        "content-length",
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


class ResponseStore(Protocol):
    """Where cached answers live: this process (:class:`ResponseCache`) or the shared store
    (:class:`~ratekeeper.http.cache_shared.SharedResponseCache`); sync and async twins."""

    def get(self, key: str) -> CachedResponse | None:
        """The fresh answer stored under ``key``, if any."""
        ...

    def put(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """Keep ``response`` for ``ttl_s`` seconds (if small enough)."""
        ...

    async def get_async(self, key: str) -> CachedResponse | None:
        """The asyncio twin of :meth:`get`."""
        ...

    async def put_async(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """The asyncio twin of :meth:`put`."""
        ...


def caches(plan: CompiledPolicy) -> bool:
    """Whether any rule of the plan caches answers."""
    return any(rule.cache_ttl_s for rule in plan.policy.rules)


class CacheKeys:
    """Which GET answers a plan caches, for how long, under which key.

    A request the rate-limit middleware admitted is keyed by its ticket (rule and caller); one
    it let through unidentified (exempt) is not cached. Without a ticket (the cache used on its
    own) the rule is matched and, when answers vary by caller, the caller identified here.
    """

    __slots__ = ("_by_caller", "_plan")

    def __init__(self, plan: CompiledPolicy) -> None:
        self._plan = plan
        self._by_caller = plan.policy.cache.vary == "caller"

    def entry(self, view: RequestView, ticket: Ticket | None) -> tuple[str, float] | None:
        """``(key, ttl_s)`` of a cacheable request, else ``None``."""
        if view.method != "GET":
            return None
        if ticket is not None:
            rule, caller = ticket.rule, ticket.caller
            if rule is None or caller is None:
                return None
        else:
            rule = self._plan.routes.match(view.method, view.path)
            caller = self._plan.identifier.identify(view) if self._by_caller else None
            if rule.exempt or (self._by_caller and caller is None):
                return None
        if not rule.cache_ttl_s:
            return None
        key = f"{view.path}?{view.query}"
        if self._by_caller and caller is not None:
            key = f"{key}|{caller.keys['caller']}"
        return key, rule.cache_ttl_s

    @property
    def wanted(self) -> frozenset[str] | None:
        """The request headers keying needs (those identifying the caller)."""
        return self._plan.identifier.header_names


def ticket_of(carrier: Mapping[str, object]) -> Ticket | None:
    """The rate-limit middleware's ticket in an ASGI scope or WSGI environ, if any."""
    ticket = carrier.get(TICKET)
    return ticket if isinstance(ticket, Ticket) else None


class ResponseCache:
    """A bounded in-process cache; expired entries are dropped when met or when full."""

    __slots__ = ("_clock", "_data", "max_body_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_body_bytes: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._data: dict[str, tuple[float, CachedResponse]] = {}

    @classmethod
    def for_plan(cls, plan: CompiledPolicy, clock: Clock) -> ResponseCache:
        """An empty cache sized by the policy's ``[cache]``."""
        spec = plan.policy.cache
        return cls(max_entries=spec.max_entries, max_body_bytes=spec.max_body_bytes, clock=clock)

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

    async def get_async(self, key: str) -> CachedResponse | None:
        """:meth:`get`, from asyncio (a dict lookup: on the event loop)."""
        return self.get(key)

    async def put_async(self, key: str, ttl_s: float, response: CachedResponse) -> None:
        """:meth:`put`, from asyncio."""
        self.put(key, ttl_s, response)
