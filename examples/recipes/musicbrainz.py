"""MusicBrainz: Picard's pacing (one request per second per host) and a User-Agent that lets
the application's owner be contacted.

The thread's advice: keep to 1 request/second; the next request waits the interval minus the
time since the last one, per host (Picard's ``webservice.py``); "a proper user agent string
allowing the application owner to be contacted is required"; "in case of 503, pause and
retry", and not before ``X-RateLimit-Reset``.

Run it against ``bash scripts/serve.sh --preset musicbrainz``::

    python examples/recipes/musicbrainz.py [BASE_URL] [CONTACT]
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import httpx

from ratekeeper.client import HostPolicy, RateLimitTransport, RetryPolicy

# "the 1 request per second limit": Picard's delay between two requests to one host.
MIN_INTERVAL_S = 1.0
# A 503 is retried after a backoff starting at 2 s (one 2-second window); the transport never
# retries before X-RateLimit-Reset when the answer says the window is spent.
RETRY = RetryPolicy(statuses=frozenset({503}), max_retries=4, backoff_base_s=2.0)


def user_agent(contact: str) -> str:
    """MusicBrainz's form: ``Application/version ( contact )``, an e-mail or a URL."""
    return f"RatekeeperRecipe/1.0 ( {contact} )"


def musicbrainz_client(base_url: str, contact: str) -> httpx.Client:
    """A client for the MusicBrainz web service at ``base_url``."""
    transport = RateLimitTransport(
        hosts={base_url + "/": HostPolicy(min_interval_s=MIN_INTERVAL_S)}, retry=RETRY
    )
    return httpx.Client(
        base_url=base_url,
        headers={"User-Agent": user_agent(contact)},
        params={"fmt": "json"},
        transport=transport,
        timeout=30,
    )


def lookup(client: httpx.Client, kind: str, mbids: Iterable[str]) -> list[dict[str, Any]]:
    """Each entity of ``kind`` (artist, release, recording) by MBID, one a second."""
    found = []
    for mbid in mbids:
        response = client.get(f"/ws/2/{kind}/{mbid}")
        response.raise_for_status()
        found.append(response.json())
    return found


def main(base_url: str = "http://127.0.0.1:8080", contact: str = "you@example.org") -> None:
    """Look up three artists: about two seconds, and never a 503."""
    with musicbrainz_client(base_url, contact) as client:
        mbids = [
            "5b11f4ce-a62d-471e-81fc-a69a8278c7da",
            "a74b1b7f-71a5-4011-9441-d0b5e4122711",
            "b10bbbfc-cf9e-42e0-be17-e2c3e1d2600d",
        ]
        for artist in lookup(client, "artist", mbids):
            print(artist["id"], artist["name"])


if __name__ == "__main__":
    main(*sys.argv[1:])
