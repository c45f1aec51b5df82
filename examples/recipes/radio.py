"""Radio: the page's cache table on the client, now-playing polled every 30 s, parallel
requests for a page's data and cursor pagination.

Cached answers cost no budget: with these durations an app showing the station, its shows and
episodes and the live programme spends a few requests a minute of the stream's shared 60.

Run it against ``bash scripts/serve.sh --preset radio``::

    python examples/recipes/radio.py [BASE_URL] [API_KEY]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx

from ratekeeper.client import AsyncRateLimitTransport
from ratekeeper.client.cache import AsyncCachingTransport, async_memory_storage
from ratekeeper.client.helpers import Poller, paginate

# "Recommended cache durations", the short end of each range: the freshest data the page
# allows, and never shorter than the server's own cache (60 s, 30 s, 15 s), which would
# only fetch the same copy again.
CACHE_TTLS = {
    "/v1/station": 300.0,  # Station info: 5-10 minutes
    "/v1/shows": 120.0,  # Shows list: 2-5 minutes
    "/v1/episodes": 60.0,  # Episodes list: 1-2 minutes
    "/v1/schedule": 300.0,  # Schedule: 5-10 minutes
    "/v1/now-playing": 15.0,  # Now playing: 15-30 seconds
    "/v1/search": 60.0,  # Search results: 1-2 minutes
}
# "Good: poll every 30 seconds" (and never more often than every 15).
NOW_PLAYING_EVERY_S = 30.0


async def radio_client(base_url: str, api_key: str, policy: str = "radio") -> httpx.AsyncClient:
    """A client for the radio API at ``base_url``: cache in front, pacing behind it."""
    paced = AsyncRateLimitTransport.from_policy(policy, host=base_url + "/")
    cached = AsyncCachingTransport(paced, storage=await async_memory_storage(), ttls=CACHE_TTLS)
    headers = {"Authorization": f"Bearer {api_key}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, transport=cached, timeout=30)


async def get_json(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    """One GET, its JSON body."""
    response = await client.get(path, params=params)
    response.raise_for_status()
    return response.json()


async def home_page(client: httpx.AsyncClient) -> dict[str, Any]:
    """Station, latest episodes and shows, fetched in parallel ("3 requests counted")."""
    station, episodes, shows = await asyncio.gather(
        get_json(client, "/v1/station"),
        get_json(client, "/v1/episodes", limit="10"),
        get_json(client, "/v1/shows"),
    )
    return {"station": station, "episodes": episodes["data"], "shows": shows["data"]}


async def all_episodes(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every episode, 20 a page, following ``next_cursor`` instead of high offsets."""
    return [e async for e in paginate(client, "/v1/episodes", params={"limit": "20"})]


async def now_playing(
    client: httpx.AsyncClient, rounds: int, every_s: float = NOW_PLAYING_EVERY_S
) -> list[dict[str, Any]]:
    """The live programme ``rounds`` times, ``every_s`` apart."""
    poller = Poller(lambda: get_json(client, "/v1/now-playing"), interval_s=every_s)
    return [await poller.poll() for _ in range(rounds)]


async def main(base_url: str = "http://127.0.0.1:8080", api_key: str = "radio-demo-a1") -> None:
    """Show the home page twice (the second from the cache), list every episode, and follow
    now-playing for a minute."""
    async with await radio_client(base_url, api_key) as client:
        for _ in range(2):
            page = await home_page(client)
        print(f"{page['station']['name']}: {len(page['shows'])} shows")
        print(f"{len(await all_episodes(client))} episodes")
        for answer in await now_playing(client, rounds=3, every_s=NOW_PLAYING_EVERY_S):
            print("now playing:", answer["show"]["title"])


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
