"""The client against ratekeeper's own gateway (``ratekeeper serve``) in a subprocess: paced by
the policy file the gateway enforces, and learning the same policy from its headers."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ratekeeper.client import AsyncRateLimitTransport, HostPolicy

POLICY = """
apply = ["api"]
[identity]
source = "ip"
[limits.api]
rates = "10/second"
"""
AMOUNT = 10
N = 25
SERVE_ARGS = ("--port", "0", "--store", "memory://")
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``ratekeeper serve`` with a 10/second policy and the demo API, on a free port."""
    folder = tmp_path_factory.mktemp("gateway")
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratekeeper.cli", "serve", "--config", str(policy), *SERVE_ARGS],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if match := _LISTENING.search(line):
                base = match[1]
                break
        else:
            raise RuntimeError(f"ratekeeper serve did not start: {''.join(seen)}")
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base, policy
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Counting(httpx.AsyncBaseTransport):
    """Counts what the server answered, retried 429s included."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: collections.Counter[int] = collections.Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses[response.status_code] += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def run(base: str, transport: AsyncRateLimitTransport) -> float:
    """``N`` GETs, 8 in flight, from just after a window boundary; returns the seconds taken."""

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            gate = asyncio.Semaphore(8)

            async def one() -> int:
                async with gate:
                    return (await client.get(f"{base}/v1/episodes?limit=1")).status_code

            assert set(await asyncio.gather(*(one() for _ in range(N)))) == {200}

    # Aligned windows: start as one opens, so every run faces the same windows.
    time.sleep(math.ceil(time.time()) - time.time() + 0.005)
    start = time.time()
    asyncio.run(main())
    return time.time() - start


# N requests at AMOUNT per aligned second, starting as a window opens: the last window opens
# this long after the start.
MINIMUM_S = math.ceil(N / AMOUNT) - 1.0
LAST_BURST_S = 0.3


def test_policy_known_from_the_gateways_file_zero_429(gateway: tuple[str, Path]) -> None:
    base, policy = gateway
    counting = Counting()
    transport = AsyncRateLimitTransport.from_policy(
        policy, host=httpx.URL(base).netloc.decode(), transport=counting
    )
    elapsed = run(base, transport)
    assert counting.statuses == {200: N}
    # The last window's own GETs take time on a loaded box; a whole extra window (1 s) may not.
    assert elapsed <= MINIMUM_S * 1.05 + LAST_BURST_S


def test_policy_unknown_learns_from_the_gateways_headers(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    counting = Counting()
    elapsed = run(base, AsyncRateLimitTransport(counting, default=HostPolicy(max_in_flight=8)))
    assert counting.statuses[200] == N
    assert counting.statuses[429] <= math.ceil(N / AMOUNT)
    assert elapsed <= MINIMUM_S * 1.15
