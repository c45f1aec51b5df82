"""Limits a host reports only in its refusals: remembered and paced by for the whole session.

Pure state on exact numbers first, then the learned client (nothing told) against real
``ratekeeper serve --preset musicbrainz`` and ``--preset aisoule`` subprocesses, whose allowed
answers describe one limit (800 per 2 s; 300 per minute) while their refusals name another
(2 per 2 s per IP and User-Agent; a 5-per-second burst). Before, the client forgot the refused
limit at the next allowed answer: a refusal in every window the run spanned.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_servers import Process, serve
from ratekeeper.client import AsyncRateLimitTransport, RateLimitTransport
from ratekeeper.client.hints import Hints, Quota
from ratekeeper.client.refusals import MAX_REMEMBERED, RefusedLimits
from test_client_servers import AsyncTimedWire, TimedWire

T0 = 1_700_000_000.0  # a multiple of 2: aligned windows of 1 s and 2 s start here
AGENT = "refusal-tests/1.0 ( ops@example.com )"


def refusal(
    limit: int,
    *,
    retry_after: float,
    reset_in: float,
    zone: str | None = None,
    epoch: bool = True,
) -> Hints:
    quota = Quota(
        name="x-ratelimit",
        limit=limit,
        remaining=0,
        reset_in_s=reset_in,
        reset_rounding_s=1.0,
        reset_epoch=epoch,
    )
    return Hints(retry_after_s=retry_after, quotas=(quota,), zone=zone)


def allowed(limit: int, zone: str | None = None) -> Hints:
    quota = Quota(name="x-ratelimit", limit=limit, remaining=limit - 1, reset_in_s=1.0)
    return Hints(quotas=(quota,), zone=zone)


def test_a_limit_only_refusals_name_paces_by_its_window() -> None:
    limits = RefusedLimits(0.025)
    limits.allowed(allowed(800, "global"))
    seen = [(T0 + 0.01, T0 + 0.012), (T0 + 0.02, T0 + 0.022), (T0 + 0.03, T0 + 0.032)]
    # The third request of an aligned 2-s window, refused with 1.97 s left.
    assert limits.refused(
        refusal(2, retry_after=2, reset_in=1.968, zone="per-ip-ua"), T0 + 0.03, T0 + 0.032, seen
    )
    (pacer,) = limits.pacers
    assert (pacer.amount, pacer.period_s) == (2, 2.0)
    # The refused request is refunded by the flow; the other two hold the window until it ends.
    pacer.refund(T0 + 0.03)
    assert pacer.model == "aligned"
    assert pacer.wait_s(T0 + 0.04) == pytest.approx(1.96)
    assert pacer.wait_s(T0 + 2.0) == 0.0


def test_a_limit_allowed_answers_report_is_not_remembered() -> None:
    limits = RefusedLimits(0.025)
    limits.allowed(allowed(10))
    assert not limits.refused(refusal(10, retry_after=1, reset_in=0.5), T0, T0 + 0.01, [])
    assert limits.pacers == ()
    # A refusal without a stated limit says nothing to pace by.
    bare = Hints(retry_after_s=1.0)
    assert not limits.refused(bare, T0, T0 + 0.01, [])


def test_a_burst_refused_paces_at_its_rate_not_its_rounded_reset() -> None:
    # AISoule's 5-per-second GCRA burst: Retry-After 1 (0.2 s rounded up), the bucket's reset
    # written as the next whole second (1.8 s away): a 1-second window, not 2.
    limits = RefusedLimits(0.025)
    seen = [(T0 + 0.2 + i * 0.004, T0 + 0.203 + i * 0.004) for i in range(6)]
    assert limits.refused(refusal(5, retry_after=1, reset_in=1.8), T0 + 0.22, T0 + 0.223, seen)
    (pacer,) = limits.pacers
    assert (pacer.amount, pacer.period_s, pacer.model) == (5, 1.0, "moving")


def test_refused_again_while_paced_lengthens_the_window_once_per_proof() -> None:
    limits = RefusedLimits(0.025)
    seen = [(T0 + 1.9, T0 + 1.901), (T0 + 1.91, T0 + 1.911)]
    # Refused with 0.08 s left of a 2-s window: nothing yet says the window is longer than 1 s.
    limits.refused(refusal(2, retry_after=1, reset_in=0.079, zone="z"), T0 + 1.92, T0 + 1.921, seen)
    (pacer,) = limits.pacers
    assert pacer.period_s == 1.0
    # A request in flight when the limit was first seen is refused too: no proof of anything.
    limits.refused(refusal(2, retry_after=1, reset_in=0.07, zone="z"), T0 + 1.915, T0 + 1.93, [])
    assert pacer.period_s == 1.0
    pacer.refund(T0 + 1.92)
    pacer.refund(T0 + 1.921)
    for sent in (T0 + 2.0, T0 + 2.003, T0 + 3.0):
        pacer.record(sent)
        pacer.answered(sent, sent + 0.002)
    # Paced by 2 per 1 s and refused at T0 + 3.0: the window is longer than 1 s.
    limits.refused(refusal(2, retry_after=1, reset_in=0.998, zone="z"), T0 + 3.0, T0 + 3.002, [])
    assert pacer.period_s == 2.0
    pacer.refund(T0 + 3.0)
    # Two in any 2-s span, from the answer of the request two back (sent at T0 + 2.0).
    assert pacer.wait_s(T0 + 3.01) == pytest.approx(0.993)
    # One sent just before that refusal was read, refused with it, proves nothing more: the
    # window is not lengthened to 3 s by an echo.
    pacer.record(T0 + 3.001)
    limits.refused(refusal(2, retry_after=1, reset_in=0.99, zone="z"), T0 + 3.001, T0 + 3.004, [])
    assert pacer.period_s == 2.0


def test_an_allowed_answer_reporting_the_limit_ends_its_memory() -> None:
    limits = RefusedLimits(0.025)
    limits.refused(refusal(5, retry_after=1, reset_in=0.5), T0, T0 + 0.01, [(T0, T0 + 0.01)])
    assert len(limits.pacers) == 1
    limits.allowed(allowed(5))
    assert limits.pacers == ()


def test_a_server_naming_a_new_limit_in_every_refusal_cannot_grow_the_memory() -> None:
    limits = RefusedLimits(0.025)
    for n in range(1, 1000):
        limits.allowed(allowed(10_000 + n, zone=f"visible-{n}"))
        limits.refused(refusal(n, retry_after=1, reset_in=0.5, zone=f"z{n}"), T0, T0 + 0.01, [])
    assert len(limits.pacers) == MAX_REMEMBERED
    assert len(limits._visible) == MAX_REMEMBERED


class _Counting(TimedWire):
    """The wire under the client: every answer's status and zone, as the server sent them."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.answers.append((response.status_code, response.headers.get("x-ratelimit-zone")))
        return response


@pytest.fixture(scope="module")
def musicbrainz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("refusals-musicbrainz")
    with serve("--preset", "musicbrainz", "--store", "memory://", cwd=root) as process:
        yield process


@pytest.fixture(scope="module")
def aisoule(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("refusals-aisoule")
    with serve("--preset", "aisoule", "--store", "memory://", cwd=root) as process:
        yield process


# How long a request may take to reach the server on a loaded machine.
FLIGHT_S = 0.1


def musicbrainz_minimum(epoch: float, first_s: float, count: int) -> float:
    """Seconds from ``epoch`` (the first send) until the window of the last of ``count``
    requests opens, two per aligned 2-s window. The first window goes one request at a time:
    the second leaves at the first answer (``first_s`` later) and is counted in the next
    window when that answer comes in the first window's last ``FLIGHT_S`` (a slow first
    answer, or a run started just before a boundary)."""
    window = math.floor(epoch / 2)
    held = 2 if epoch + first_s + FLIGHT_S < 2 * (window + 1) else 1
    return 2 * (window + math.ceil((count - held) / 2)) - epoch


def test_learned_client_remembers_musicbrainz_per_agent_zone(
    musicbrainz: Process, tmp_path: Path
) -> None:
    # 2 per clock-aligned 2 s per IP and User-Agent, shown only in 503s; answers show 800/2s.
    wire = _Counting()
    transport = RateLimitTransport(wire)
    count = 10
    with httpx.Client(transport=transport, headers={"User-Agent": AGENT}, timeout=30) as client:
        started, epoch = time.monotonic(), time.time()
        for n in range(count):
            assert client.get(f"{musicbrainz.url}/ws/2/artist/{n}").status_code == 200
        elapsed = time.monotonic() - started
    refused = [zone for status, zone in wire.answers if status == 503]
    assert set(refused) <= {"per-ip-ua"}, wire.answers
    # One refusal to learn it; a second only when the first came in a window's last second
    # (Retry-After 1 cannot tell a 1-s window from a longer one). Before: one per window.
    assert len(refused) <= 2, wire.answers
    minimum = musicbrainz_minimum(epoch, wire.first_s, count)
    assert elapsed <= 1.10 * minimum + 0.2, (elapsed, minimum)
    (state,) = transport.pacer.states().values()
    # Aligned once a refusal's reset proves it; sent at the boundaries, moving is as fast.
    assert [(p.amount, p.period_s) for p in state.refused.pacers] == [(2, 2.0)]
    # Another host (the same server by another name, another application) never refused:
    # nothing this one taught slows it.
    other = musicbrainz.url.replace("127.0.0.1", "localhost")
    agent = {"User-Agent": "other-app/2.0 ( other@example.com )"}
    with httpx.Client(transport=transport, headers=agent, timeout=30) as client:
        started = time.monotonic()
        for n in range(2):
            assert client.get(f"{other}/ws/2/artist/{n}").status_code == 200
        assert time.monotonic() - started < 1.0
    assert all(
        not s.refused.pacers
        for name, s in transport.pacer.states().items()
        if name.startswith("localhost")
    )


def test_learned_client_remembers_aisoule_messaging_burst(aisoule: Process) -> None:
    # 300 per minute in every answer; the 5-per-second burst (GCRA) only in 429s.
    wire = _Counting()
    headers = {"Authorization": "Bearer burst-learner"}
    message = {"to": "+15550100", "text": "hello"}
    # The retry waits for the bucket's reset, written as a whole second (up to 1 s late):
    # enough requests that this one wait stays within the bound.
    count = 60
    with httpx.Client(transport=RateLimitTransport(wire), headers=headers, timeout=30) as client:
        started = time.monotonic()
        for _ in range(count):
            assert client.post(f"{aisoule.url}/v1/messages", json=message).status_code == 202
        elapsed = time.monotonic() - started
    statuses = [status for status, _ in wire.answers]
    # Before: a 429 for every burst of five.
    assert statuses.count(429) <= 1, statuses
    # Five at once, then one per 200 ms, from the first answer (0.8 s once in CI: a server
    # warming up).
    minimum = (count - 5) * 0.2
    assert elapsed <= 1.10 * minimum + wire.first_s, (elapsed, minimum, wire.first_s)


class _AsyncCounting(AsyncTimedWire):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.statuses.append(response.status_code)
        return response


def test_eight_in_flight_are_refused_in_the_first_burst_only(aisoule: Process) -> None:
    # Requests already in flight when the first 429 comes are refused with it; once an
    # answer has come after it, the burst paces every request: no later refusal.
    wire = _AsyncCounting()
    headers = {"Authorization": "Bearer burst-gatherer"}
    message = {"to": "+15550100", "text": "hello"}

    async def run() -> float:
        gate = asyncio.Semaphore(8)
        transport = AsyncRateLimitTransport(wire)
        async with httpx.AsyncClient(transport=transport, headers=headers, timeout=30) as client:

            async def send() -> int:
                async with gate:
                    response = await client.post(f"{aisoule.url}/v1/messages", json=message)
                    return response.status_code

            started = time.monotonic()
            assert set(await asyncio.gather(*(send() for _ in range(60)))) == {202}
            return time.monotonic() - started

    elapsed = asyncio.run(run())
    statuses = wire.statuses
    first = statuses.index(429)
    settled = statuses.index(202, first)
    assert 429 not in statuses[settled:], statuses
    assert elapsed <= 1.10 * (60 - 5) * 0.2 + wire.first_s, (elapsed, wire.first_s, statuses)


def test_eight_in_flight_draw_one_musicbrainz_refusal_per_window(musicbrainz: Process) -> None:
    # The per-IP+User-Agent zone (2 per 2 s) shows only in 503s. With up to 8 in flight, a
    # learned client used to have 3 to 5 requests out when the first 503 came, all refused;
    # and a window guessed at 1 s (Retry-After 1 late in a window) refused 2 at once next.
    # Now its first window goes one request at a time, and the first request of each window
    # of a limit learned from a refusal goes alone.
    statuses: list[tuple[int, str]] = []

    class Wire(AsyncTimedWire):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            statuses.append((response.status_code, response.headers["x-ratelimit-reset"]))
            return response

    count = 10
    headers = {"User-Agent": "eight-in-flight/1.0 ( ops@example.com )"}

    wire = Wire()

    async def run() -> tuple[float, float]:
        gate = asyncio.Semaphore(8)
        transport = AsyncRateLimitTransport(wire)
        async with httpx.AsyncClient(transport=transport, headers=headers, timeout=30) as client:

            async def get(n: int) -> int:
                async with gate:
                    response = await client.get(f"{musicbrainz.url}/ws/2/artist/{n}")
                    return response.status_code

            started, epoch = time.monotonic(), time.time()
            assert set(await asyncio.gather(*(get(n) for n in range(count)))) == {200}
            return time.monotonic() - started, epoch

    elapsed, epoch = asyncio.run(run())
    # Each answer names its window by its end (the reset, an epoch): one 503 a window at most.
    refused = [reset for status, reset in statuses if status == 503]
    assert len(refused) == len(set(refused)) and len(refused) <= 2, statuses
    minimum = musicbrainz_minimum(epoch, wire.first_s, count)
    assert elapsed <= 1.10 * minimum + 0.3, (elapsed, minimum)
