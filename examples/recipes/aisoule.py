"""AISoule: messages sent within the rolling windows, retried with exponential backoff and
jitter.

The page's tip: "Always implement a retry logic with an exponential backoff jitter
algorithm". A 429 from AISoule says how long to wait (``retry_after_seconds`` in the body) and
the transport waits that; without a hint (a 503 from a proxy on the way, say) it backs off
exponentially from 1 second with random jitter, so clients refused together do not come back
together. Paced by the published policy (300/minute and a 5/second burst on
``/v1/messages``), the sender meets a 429 only when another process spends the same key, or at
the edge of the burst when the server counts a request later than it left.

Run it against ``bash scripts/serve.sh --preset aisoule``::

    python examples/recipes/aisoule.py [BASE_URL] [API_KEY]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import httpx

from ratekeeper.client import AsyncRateLimitTransport, RetryPolicy
from ratekeeper.client.helpers import gather_bounded

# Backoff from 1 s, doubling, at most 32 s, with jitter; 5 tries after the first. POST is
# retried after a 429 (the server did not process it), never after another error.
RETRY = RetryPolicy(max_retries=5, backoff_base_s=1.0, backoff_max_s=32.0)
# The "5 requests/sec burst": never more than 5 messages in flight.
IN_FLIGHT = 5


def aisoule_client(base_url: str, api_key: str, policy: str = "aisoule") -> httpx.AsyncClient:
    """A client for the AISoule API at ``base_url``, paced by ``policy`` (a preset name or a
    policy file) and retrying with backoff and jitter."""
    transport = AsyncRateLimitTransport.from_policy(policy, host=base_url + "/", retry=RETRY)
    headers = {"Authorization": f"Bearer {api_key}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport, timeout=60)


async def send_message(client: httpx.AsyncClient, to: str, text: str) -> dict[str, Any]:
    """POST one message; its JSON answer."""
    response = await client.post("/v1/messages", json={"to": to, "text": text})
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


async def send_all(
    client: httpx.AsyncClient, messages: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Send every ``(to, text)``, at most :data:`IN_FLIGHT` at a time; answers in order."""
    sends = [send_message(client, to, text) for to, text in messages]
    answers = await gather_bounded(sends, IN_FLIGHT)
    return [a for a in answers if isinstance(a, dict)]


async def main(base_url: str = "http://127.0.0.1:8080", api_key: str = "demo-key") -> None:
    """Send 10 messages: the first 5 at once, then 5 a second."""
    async with aisoule_client(base_url, api_key) as client:
        answers = await send_all(client, ((f"+4470000000{n:02d}", "hello") for n in range(10)))
        print(f"sent {len(answers)} messages")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
