"""Musique: the page's retry loop, kept by the transport, and its low-remaining warning.

The page's ``makeRequestWithRetry`` tries a request up to 3 times, waits ``Retry-After`` after
a 429 and warns when ``X-RateLimit-Remaining`` drops under 10; its best practices add
exponential backoff from 1 second. Here the transport also paces by the published policy
(100/minute, 1000/hour, 10000/day), so a 429 only comes when another process spends the same
key, and is then retried after ``Retry-After``.

Run it against ``bash scripts/serve.sh --preset musique``::

    python examples/recipes/musique.py [BASE_URL] [API_KEY]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import httpx

from ratekeeper.client import HostPolicy, RateLimitTransport, RetryPolicy

log = logging.getLogger("recipes.musique")

# "Check remaining quota ... if (remaining < 10) console.warn(...)".
LOW_REMAINING = 10
# makeRequestWithRetry(url, options, maxRetries = 3); "Start with 1 second and double".
RETRY = RetryPolicy(max_retries=3, backoff_base_s=1.0)


def warn_low(response: httpx.Response) -> None:
    """The page's check of every answer: warn when fewer than 10 requests remain."""
    remaining = response.headers.get("X-RateLimit-Remaining", "")
    if remaining.isdigit() and int(remaining) < LOW_REMAINING:
        log.warning("Low rate limit: %s requests remaining", remaining)


def musique_client(base_url: str, api_key: str, policy: str = "musique") -> httpx.Client:
    """A client for the Musique API at ``base_url``, paced by ``policy`` (a preset name or a
    policy file: the limits Musique publishes)."""
    transport = RateLimitTransport(
        hosts={base_url + "/": HostPolicy.from_policy(policy)}, retry=RETRY
    )
    return httpx.Client(
        base_url=base_url,
        headers={"X-API-Key": api_key},
        transport=transport,
        event_hooks={"response": [warn_low]},
        timeout=30,
    )


def fetch_tracks(client: httpx.Client, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Each track by id, one request each, in order."""
    tracks = []
    for track_id in ids:
        response = client.get(f"/api/integration/tracks/{track_id}")
        response.raise_for_status()
        tracks.append(response.json()["data"])
    return tracks


def usage(client: httpx.Client) -> dict[str, Any]:
    """The ``/api/integration/limits`` answer: limits, usage and remaining per window."""
    response = client.get("/api/integration/limits")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def main(base_url: str = "http://127.0.0.1:8080", api_key: str = "demo-key") -> None:
    """Fetch 95 tracks (the last ones warn), then print the usage endpoint's view."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with musique_client(base_url, api_key) as client:
        tracks = fetch_tracks(client, (f"trk_{1 + n % 20}" for n in range(95)))
        print(f"{len(tracks)} tracks; remaining: {usage(client)['remaining']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
