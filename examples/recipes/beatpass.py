"""BeatPass: search-as-you-type debounced by 300 ms, and polling no more often than every 30 s.

The page's advice: "debounce input by 300ms+ before triggering API calls" and, against
"polling too frequently", "use reasonable intervals (30+ seconds)". The transport paces by the
published policy (300/minute per client, stricter per category) and, after a 429, waits what
``Retry-After`` says instead of retrying at once ("Don't retry immediately").

Run it against ``bash scripts/serve.sh --preset beatpass``::

    python examples/recipes/beatpass.py [BASE_URL] [API_KEY]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from ratekeeper.client import AsyncRateLimitTransport
from ratekeeper.client.helpers import Debouncer, Poller

# "debounce input by 300ms+"
DEBOUNCE_S = 0.3
# "Use reasonable intervals (30+ seconds)"
POLL_INTERVAL_S = 30.0


def beatpass_client(base_url: str, api_key: str, policy: str = "beatpass") -> httpx.AsyncClient:
    """A client for the BeatPass API at ``base_url``, paced by ``policy`` (a preset name or a
    policy file)."""
    transport = AsyncRateLimitTransport.from_policy(policy, host=base_url + "/")
    headers = {"Authorization": f"Bearer {api_key}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport, timeout=30)


async def search_as_you_type(
    client: httpx.AsyncClient, typed: Sequence[str], keystroke_s: float = 0.1
) -> list[dict[str, Any]]:
    """What a search box shows after the user typed ``typed`` (one text per keystroke,
    ``keystroke_s`` apart): only the last text, once typing pauses, reaches the API."""

    async def search(text: str) -> list[dict[str, Any]]:
        response = await client.get("/api/v1/search", params={"q": text})
        response.raise_for_status()
        hits: list[dict[str, Any]] = response.json()["data"]
        return hits

    debounced = Debouncer(search, delay_s=DEBOUNCE_S)
    pending = []
    for text in typed:
        pending.append(asyncio.ensure_future(debounced(text)))
        await asyncio.sleep(keystroke_s)
    results = await asyncio.gather(*pending)
    # Superseded keystrokes answer None; the last one answers the hits.
    return next(r for r in reversed(results) if r is not None)


async def poll_tracks(
    client: httpx.AsyncClient, rounds: int, interval_s: float = POLL_INTERVAL_S
) -> list[list[dict[str, Any]]]:
    """The track listing ``rounds`` times, each call at least ``interval_s`` after the last."""

    async def fetch() -> list[dict[str, Any]]:
        response = await client.get("/api/v1/tracks")
        response.raise_for_status()
        tracks: list[dict[str, Any]] = response.json()["data"]
        return tracks

    poller = Poller(fetch, interval_s=interval_s)
    return [await poller.poll() for _ in range(rounds)]


async def main(base_url: str = "http://127.0.0.1:8080", api_key: str = "demo-key") -> None:
    """Type "track 1" into a search box, then poll the track listing twice."""
    async with beatpass_client(base_url, api_key) as client:
        typed = ["t", "tr", "tra", "trac", "track", "track ", "track 1"]
        hits = await search_as_you_type(client, typed)
        print(f"{len(typed)} keystrokes, 1 request, {len(hits)} hits")
        listings = await poll_tracks(client, rounds=2, interval_s=POLL_INTERVAL_S)
        print(f"polled {len(listings)} times, {POLL_INTERVAL_S:g} s apart")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
