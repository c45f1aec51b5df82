"""Request-shaping helpers the seed APIs recommend: debounce, a poller with a floor on its
interval, cursor pagination, and gathering with bounded concurrency (all asyncio)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import httpx

from ratekeeper.errors import ClientConfigError

__all__ = ["Debouncer", "Poller", "gather_bounded", "paginate"]

T = TypeVar("T")


class Debouncer(Generic[T]):
    """Runs ``func`` only once calls have paused for ``delay_s`` (300 ms by default, for
    search-as-you-type): each call replaces the pending one, whose caller gets ``None``."""

    def __init__(self, func: Callable[..., Awaitable[T]], delay_s: float = 0.3) -> None:
        if delay_s < 0:
            raise ClientConfigError(f"Debouncer delay_s must be >= 0, got {delay_s!r}")
        self.func = func
        self.delay_s = delay_s
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


class Poller:
    """Calls ``fetch`` repeatedly, never more often than every ``interval_s`` (the seeds ask
    15 s for now-playing), measured from the start of one call to the start of the next."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0:
            raise ClientConfigError(f"Poller interval_s must be > 0, got {interval_s!r}")
        self.fetch = fetch
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._last = -float("inf")

    async def poll(self) -> Any:
        """Wait until the interval has passed since the previous call, then call ``fetch``."""
        wait = self._last + self.interval_s - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._last = self._clock()
        return await self.fetch()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            yield await self.poll()


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
    query = dict(params or {})
    while True:
        response = await client.get(url, params=query)
        response.raise_for_status()
        page = response.json()
        for item in page.get(items_key, []) if isinstance(page, dict) else page:
            yield item
        cursor = _find_cursor(page, cursor_key)
        if not cursor:
            return
        query[cursor_param] = str(cursor)


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
    if limit < 1:
        raise ClientConfigError(f"gather_bounded limit must be >= 1, got {limit!r}")
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return list(
        await asyncio.gather(*(one(a) for a in awaitables), return_exceptions=return_exceptions)
    )
