"""Black-box conformance with the seed pages: ``ratekeeper serve --preset X`` (or the preset with
its windows shortened) as a real subprocess, driven by real clients, each test a defect found
that way and fixed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_servers import Process, serve
from ratekeeper.client import HostPolicy, RateLimitTransport
from ratekeeper.policy import preset_path


class _Counting(httpx.HTTPTransport):
    """The wire under the client: every status the server really answered."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


@pytest.fixture(scope="module")
def aisoule_short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("conformance-aisoule")
    # AISoule's rolling window (sliding_window), 120/minute shortened to 10 per 4 s.
    text = preset_path("aisoule").read_text()
    original = 'rates = "120/minute"'
    assert original in text
    (root / "aisoule.toml").write_text(text.replace(original, 'rates = "10/4s"'))
    with serve("--config", str(root / "aisoule.toml"), "--store", "memory://", cwd=root) as p:
        yield p


def test_learned_client_respects_a_rolling_windows_spent_budget(
    aisoule_short: Process, tmp_path: Path
) -> None:
    # A moving window's X-RateLimit-Reset comes closer once nothing is left (when one unit is
    # back, not when the window is empty). The client took that earlier reset for a late answer
    # from an earlier window, kept believing one request was left, and earned a 429 for about
    # every two requests admitted once the first window was spent.
    wire = _Counting()
    with httpx.Client(
        transport=RateLimitTransport(wire),
        headers={"Authorization": "Bearer rolling-learner"},
        timeout=30,
    ) as client:
        for n in range(24):
            assert client.get(f"{aisoule_short.url}/v1/status?n={n}").status_code == 200
    # The one refusal learning allows: the refill right at a whole-second reset.
    assert wire.statuses.count(429) <= 1, wire.statuses


@pytest.fixture(scope="module")
def aisoule(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("conformance-aisoule-preset")
    with serve("--preset", "aisoule", "--store", "memory://", cwd=root) as process:
        yield process


def test_told_client_refused_once_by_a_burst_is_not_refused_again(aisoule: Process) -> None:
    # Messaging is 300/minute with a 5/second burst (GCRA). Another process spends one unit of
    # the key first, so the client's first burst earns one 429. Its retry was never charged
    # ("paid" by the refused attempt), though by then the refused attempt's charge had lapsed
    # (the bucket full again): every later burst sent one request more than the server allows,
    # a 429 per burst for ever.
    headers = {"Authorization": "Bearer burst-sharer"}
    message = {"to": "+15550100", "text": "hello"}
    assert httpx.post(f"{aisoule.url}/v1/messages", json=message, headers=headers).is_success
    wire = _Counting()
    transport = RateLimitTransport(wire, default=HostPolicy.from_policy("aisoule"))
    with httpx.Client(transport=transport, headers=headers, timeout=30) as client:
        for _ in range(30):
            assert client.post(f"{aisoule.url}/v1/messages", json=message).status_code == 202
    # The one the other process caused, and one for a loaded machine's latency.
    assert wire.statuses.count(429) <= 2, wire.statuses


def test_a_burst_refusal_is_retried_after_its_retry_after_not_its_whole_second_reset(
    aisoule: Process,
) -> None:
    # The burst's 429 says Retry-After 1 (a unit back within 0.2 s, rounded up) and a reset,
    # the bucket full again, written as the next whole second: up to 2 s away. The retry
    # waited for that reset, up to a second late; the Retry-After is what the server promised.
    headers = {"Authorization": "Bearer burst-retrier"}
    message = {"to": "+15550100", "text": "hello"}
    sends: list[tuple[float, float, int, str | None]] = []

    class Wire(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent = time.monotonic()
            response = super().handle_request(request)
            reset = response.headers.get("x-ratelimit-reset")
            sends.append((sent, time.monotonic(), response.status_code, reset))
            return response

    with httpx.Client(transport=RateLimitTransport(Wire()), headers=headers, timeout=30) as c:
        for _ in range(7):
            assert c.post(f"{aisoule.url}/v1/messages", json=message).status_code == 202
    refused = [n for n, (_, _, status, _) in enumerate(sends) if status == 429]
    assert len(refused) == 1, sends
    _, answered, _, _ = sends[refused[0]]
    retried = sends[refused[0] + 1][0]
    # Retry-After 1, and a loaded machine's latency.
    assert retried - answered <= 1.0 + 0.3, sends


@pytest.mark.parametrize("address", ["nonsense", ":9090", "0.0.0.0:99999"])
def test_malformed_admin_address_is_named_as_such(address: str, tmp_path: Path) -> None:
    # Without a token, a malformed --admin was refused as "reachable from other machines:
    # set RATEKEEPER_ADMIN_TOKEN", sending the operator after a token instead of a typo.
    env = {k: v for k, v in os.environ.items() if k != "RATEKEEPER_ADMIN_TOKEN"}
    serve_args = ["serve", "--preset", "musique", "--port", "0", "--admin", address]
    result = subprocess.run(
        [sys.executable, "-m", "ratekeeper.cli", *serve_args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert f"--admin: expected HOST:PORT (e.g. 127.0.0.1:9090) or unix:PATH, got {address!r}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and "TOKEN" not in result.stderr
