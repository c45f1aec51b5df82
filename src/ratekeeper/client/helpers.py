"""Request-shaping helpers the seed APIs recommend: debounce, a poller with a floor on its
interval, cursor pagination, and running with bounded concurrency; each for asyncio and for
threads, the twins sharing their logic (who is the latest call, when the next poll is due,
where the next page is) and differing only in how they wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import httpx

from ratekeeper.client.pacing import HostPolicy
from ratekeeper.errors import ClientConfigError
from ratekeeper.routes import RouteTable

__all__ = [
    "Debouncer",
    "Poller",
    "SyncDebouncer",
    "SyncPoller",
    "gather_bounded",
    "paginate",
    "paginate_sync",
    "run_bounded",
]

T = TypeVar("T")


def _check_delay(delay_s: float) -> float:
    if not isinstance(delay_s, int | float) or not delay_s >= 0:
        raise ClientConfigError(f"Debouncer delay_s must be a number >= 0, got {delay_s!r}")
    return float(delay_s)


class Debouncer(Generic[T]):
    """Runs ``func`` only once calls have paused for ``delay_s`` (300 ms by default, for
    search-as-you-type): each call replaces the pending one, whose caller gets ``None``."""

    def __init__(self, func: Callable[..., Awaitable[T]], delay_s: float = 0.3) -> None:
        self.func = func
        self.delay_s = _check_delay(delay_s)
        self._pending: asyncio.Task[T] | None = None

    async def __call__(self, *args: Any, **kwargs: Any) -> T | None:
        """Schedule the call; returns its result, or ``None`` if a later call superseded it."""
        if self._pending is not None:
            self._pending.cancel()

        async def later() -> T:
            await asyncio.sleep(self.delay_s)
            return await self.func(*args, **kwargs)

        task = self._pending = asyncio.ensure_future(later())
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled() and not _current_cancelling():
                return None
            raise
        finally:
            if self._pending is task:
                self._pending = None


def _current_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class SyncDebouncer(Generic[T]):
    """The threads twin of :class:`Debouncer`: ``func`` runs only once calls have paused for
    ``delay_s``; a caller whose call was superseded gets ``None`` at once."""

    def __init__(self, func: Callable[..., T], delay_s: float = 0.3) -> None:
        self.func = func
        self.delay_s = _check_delay(delay_s)
        self._latest = 0
        self._changed = threading.Condition()

    def __call__(self, *args: Any, **kwargs: Any) -> T | None:
        """Wait out the delay; returns the result, or ``None`` if a later call superseded it."""
        with self._changed:
            self._latest += 1
            mine = self._latest
            self._changed.notify_all()
            superseded = self._changed.wait_for(lambda: self._latest != mine, self.delay_s)
        return None if superseded else self.func(*args, **kwargs)


class _Schedule:
    """When the next poll is due: ``interval_s`` after the start of the previous one, never
    below the host's floor."""

    def __init__(self, interval_s: float, floor_s: float) -> None:
        if not isinstance(interval_s, int | float) or not interval_s > 0:
            raise ClientConfigError(f"Poller interval_s must be > 0, got {interval_s!r}")
        if interval_s < floor_s:
            raise ClientConfigError(
                f"Poller interval_s {interval_s:g}s is below the host's floor of {floor_s:g}s "
                "(polling faster only reads the server's cache again)"
            )
        self.interval_s = float(interval_s)
        self.last = -float("inf")

    def wait_s(self, now: float) -> float:
        return self.last + self.interval_s - now


def route_floor_s(policy: HostPolicy | None, url: str) -> float:
    """The shortest useful interval between polls of ``url`` under ``policy``: its route's
    cache TTL in the provider's policy (0 when there is none)."""
    server = policy.server_policy if policy is not None else None
    if server is None:
        return 0.0
    ttls = RouteTable([(rule.routes, rule.methods, rule.cache_ttl_s) for rule in server.rules], 0.0)
    return ttls.match("GET", httpx.URL(url).path)


class Poller:
    """Calls ``fetch`` repeatedly, never more often than every ``interval_s``, measured from
    the start of one call to the start of the next. Given the host's ``policy`` and the polled
    ``url``, an interval below the route's floor (its cache TTL in the provider's policy: 15 s
    for the radio's now-playing) is refused with :class:`ClientConfigError`."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        interval_s: float,
        *,
        policy: HostPolicy | None = None,
        url: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.fetch = fetch
        self._schedule = _Schedule(interval_s, route_floor_s(policy, url))
        self.interval_s = self._schedule.interval_s
        self._clock = clock
        self._sleep = sleep

    async def poll(self) -> Any:
        """Wait until the interval has passed since the previous call, then call ``fetch``."""
        wait = self._schedule.wait_s(self._clock())
        if wait > 0:
            await self._sleep(wait)
        self._schedule.last = self._clock()
        return await self.fetch()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            yield await self.poll()


class SyncPoller:
    """The threads twin of :class:`Poller` (same interval, floor and options)."""

    def __init__(
        self,
        fetch: Callable[[], Any],
        interval_s: float,
        *,
        policy: HostPolicy | None = None,
        url: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fetch = fetch
        self._schedule = _Schedule(interval_s, route_floor_s(policy, url))
        self.interval_s = self._schedule.interval_s
        self._clock = clock
        self._sleep = sleep

    def poll(self) -> Any:
        """Wait until the interval has passed since the previous call, then call ``fetch``."""
        wait = self._schedule.wait_s(self._clock())
        if wait > 0:
            self._sleep(wait)
        self._schedule.last = self._clock()
        return self.fetch()

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.poll()


async def paginate(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    items_key: str = "data",
    cursor_key: str = "next_cursor",
    cursor_param: str = "cursor",
) -> AsyncIterator[Any]:
    """Yield the items of every page of a cursor-paginated JSON list, following
    ``next_cursor`` (found at the top level or under ``pagination``/``meta``) until it is
    empty. Each page is one request through ``client``, so it is paced like any other."""
    query: dict[str, str] | None = dict(params or {})
    while query is not None:
        response = await client.get(url, params=query)
        items, query = _turn_page(response, query, items_key, cursor_key, cursor_param)
        for item in items:
            yield item


def paginate_sync(
    client: httpx.Client,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    items_key: str = "data",
    cursor_key: str = "next_cursor",
    cursor_param: str = "cursor",
) -> Iterator[Any]:
    """The ``httpx.Client`` twin of :func:`paginate`."""
    query: dict[str, str] | None = dict(params or {})
    while query is not None:
        response = client.get(url, params=query)
        items, query = _turn_page(response, query, items_key, cursor_key, cursor_param)
        yield from items


def _turn_page(
    response: httpx.Response,
    query: dict[str, str],
    items_key: str,
    cursor_key: str,
    cursor_param: str,
) -> tuple[Iterable[Any], dict[str, str] | None]:
    """One page's items and the query of the next page (``None`` after the last one)."""
    response.raise_for_status()
    page = response.json()
    return _items(page, items_key), _next_query(page, query, cursor_key, cursor_param)


def _items(page: Any, items_key: str) -> Iterable[Any]:
    if isinstance(page, dict):
        found = page.get(items_key, [])
        return found if isinstance(found, list) else []
    return page if isinstance(page, list) else []


def _next_query(
    page: Any, query: dict[str, str], cursor_key: str, cursor_param: str
) -> dict[str, str] | None:
    """The query of the next page, or ``None`` after the last one."""
    cursor = _find_cursor(page, cursor_key)
    if not cursor:
        return None
    return {**query, cursor_param: str(cursor)}


def _find_cursor(page: Any, key: str) -> Any:
    if not isinstance(page, dict):
        return None
    if key in page:
        return page[key]
    for nested in ("pagination", "meta", "links"):
        section = page.get(nested)
        if isinstance(section, dict) and key in section:
            return section[key]
    return None


async def gather_bounded(
    awaitables: Iterable[Awaitable[T]], limit: int, *, return_exceptions: bool = False
) -> list[T | BaseException]:
    """Like ``asyncio.gather`` with at most ``limit`` awaitables running at once; results are
    in input order."""
    semaphore = asyncio.Semaphore(_check_limit(limit))

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return list(
        await asyncio.gather(*(one(a) for a in awaitables), return_exceptions=return_exceptions)
    )


def run_bounded(
    calls: Iterable[Callable[[], T]], limit: int, *, return_exceptions: bool = False
) -> list[T | BaseException]:
    """The threads twin of :func:`gather_bounded`: runs the calls with at most ``limit`` at
    once (a pool of ``limit`` threads); results are in input order."""
    with concurrent.futures.ThreadPoolExecutor(_check_limit(limit)) as pool:
        futures = [pool.submit(call) for call in calls]
    results: list[T | BaseException] = []
    for future in futures:
        error = future.exception()
        if error is not None and not return_exceptions:
            raise error
        results.append(error if error is not None else future.result())
    return results


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 1:
        raise ClientConfigError(f"the concurrency limit must be a whole number >= 1, got {limit!r}")
    return limit
