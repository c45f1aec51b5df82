"""The client side: transport overhead beside plain httpx, and how fast the same job finishes
against a limited server beside aiolimiter + tenacity and urllib3's Retry, in one run.

The servers run in a subprocess (uvicorn, loopback, a free port), so client and server do not
share a GIL. Two parts:

1. Overhead: sequential GETs to an unlimited endpoint, plain ``httpx.Client`` against the same
   client with :class:`RateLimitTransport` (policy unknown, and a generous known policy with
   one-second aligned windows, so window edges are crossed), many short interleaved rounds,
   best round kept; overhead = extra time per request.
2. Throughput: each contender completes ``--jobs`` GETs (8 at a time) against an endpoint
   limited to ``--rate`` (a scaled-down window, aligned fixed window, ratekeeper's headers with
   ``Retry-After``), each under its own key; reported as completions per minute of wall time,
   429s received, and time against the theoretical minimum.

    .venv/bin/python bench/client.py            # about a minute on 2 cores
    .venv/bin/python bench/client.py --quick    # a few seconds
"""

# Peers are optional (bench extra): each is imported when its row is built.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

SERVER = r"""
import collections, math, socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from ratekeeper import Limiter, LimitSet

limits = LimitSet("bench", sys.argv[1])
limiter = Limiter()
counts = collections.Counter()

async def free(request):
    return Response(b"ok")

async def limited(request):
    key = request.headers.get("x-client", "anon")
    d = limiter.hit(limits, key)
    counts[(key, d.allowed)] += 1
    headers = {"X-RateLimit-Limit": str(d.limit), "X-RateLimit-Remaining": str(d.remaining),
               "X-RateLimit-Reset": f"{d.reset_at:.3f}"}
    if not d.allowed:
        headers["Retry-After"] = str(max(math.ceil(d.retry_after_s), 1))
        return JSONResponse({"error": "rate limited"}, status_code=429, headers=headers)
    return JSONResponse({"ok": True}, headers=headers)

async def stats(request):
    key = request.query_params["key"]
    return JSONResponse({"ok": counts[(key, True)], "rejected": counts[(key, False)]})

sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
app = Starlette(routes=[Route("/free", free), Route("/limited", limited), Route("/stats", stats)])
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


def start_server(rate: str) -> tuple[subprocess.Popen[str], str]:
    """Start the bench server; returns the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, rate], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/free")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, base


def overhead(base: str, requests: int, rounds: int) -> None:
    """Part 1: time per request, plain httpx vs through the transport."""
    from ratekeeper.client import HostPolicy, RateLimitTransport

    makers: dict[str, Callable[[], httpx.BaseTransport]] = {
        "httpx (plain)": httpx.HTTPTransport,
        "ratekeeper, policy unknown": RateLimitTransport,
        "ratekeeper, known 1e6/second": lambda: RateLimitTransport(
            default=HostPolicy(limits="1000000/second")
        ),
    }
    best = dict.fromkeys(makers, math.inf)
    for _ in range(rounds):
        for name, make in makers.items():
            with httpx.Client(transport=make()) as client:
                for _ in range(20):
                    client.get(f"{base}/free")
                start = time.perf_counter()
                for _ in range(requests):
                    client.get(f"{base}/free")
                best[name] = min(best[name], (time.perf_counter() - start) / requests)
    plain = best["httpx (plain)"]
    print(f"\n1. Overhead per request ({requests} sequential GETs, best of {rounds} rounds)")
    print(f"{'client':34} {'us/request':>11} {'overhead':>9}")
    for name, seconds in best.items():
        extra = (seconds / plain - 1) * 100
        print(f"{name:34} {seconds * 1e6:11.1f} {extra:+8.1f}%")


async def run_ratekeeper(base: str, key: str, jobs: int, rate: str | None) -> None:
    from ratekeeper.client import AsyncRateLimitTransport, HostPolicy

    transport = AsyncRateLimitTransport(default=HostPolicy(limits=rate, max_in_flight=8))
    async with httpx.AsyncClient(transport=transport, headers={"x-client": key}) as client:
        semaphore = asyncio.Semaphore(8)

        async def one() -> None:
            async with semaphore:
                response = await client.get(f"{base}/limited")
                response.raise_for_status()

        await asyncio.gather(*(one() for _ in range(jobs)))


async def run_aiolimiter_tenacity(
    base: str, key: str, jobs: int, amount: int, period: float
) -> None:
    from aiolimiter import AsyncLimiter
    from tenacity import retry, retry_if_result, stop_after_attempt, wait_random_exponential

    limiter = AsyncLimiter(amount, period)
    async with httpx.AsyncClient(headers={"x-client": key}) as client:
        semaphore = asyncio.Semaphore(8)

        @retry(
            retry=retry_if_result(lambda r: r.status_code == 429),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            stop=stop_after_attempt(20),
        )
        async def attempt() -> httpx.Response:
            async with limiter:
                return await client.get(f"{base}/limited")

        async def one() -> None:
            async with semaphore:
                await attempt()

        await asyncio.gather(*(one() for _ in range(jobs)))


def run_urllib3(base: str, key: str, jobs: int) -> None:
    import urllib3
    from urllib3.util.retry import Retry

    retry = Retry(
        total=20, status_forcelist=[429], respect_retry_after_header=True, backoff_factor=0.5
    )
    pool = urllib3.PoolManager(maxsize=8, retries=retry, headers={"x-client": key})
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda _: pool.request("GET", f"{base}/limited").status, range(jobs)))


def throughput(base: str, rate: str, jobs: int) -> None:
    """Part 2: the same job for every contender, each under its own key."""
    from ratekeeper.rates import parse_rate

    # Imported before the clocks start: import time is not part of anyone's job.
    for module in ("aiolimiter", "tenacity", "urllib3", "ratekeeper.client"):
        importlib.import_module(module)
    parsed = parse_rate(rate)
    contenders: dict[str, Callable[[str], Any]] = {
        "ratekeeper (policy known)": lambda k: asyncio.run(run_ratekeeper(base, k, jobs, rate)),
        "ratekeeper (learns from headers)": lambda k: asyncio.run(
            run_ratekeeper(base, k, jobs, None)
        ),
        "aiolimiter + tenacity": lambda k: asyncio.run(
            run_aiolimiter_tenacity(base, k, jobs, parsed.amount, parsed.period_s)
        ),
        "urllib3 Retry(respect_retry_after)": lambda k: run_urllib3(base, k, jobs),
    }
    print(f"\n2. {jobs} GETs, 8 in flight, server limit {rate} (aligned fixed window)")
    print(f"{'client':36} {'seconds':>8} {'vs min':>7} {'done/min':>9} {'429s':>6}")
    for index, (name, run) in enumerate(contenders.items()):
        key = f"c{index}-{time.time_ns()}"
        # Start at a window boundary so every contender faces the same windows.
        time.sleep(math.ceil(time.time() / parsed.period_s) * parsed.period_s - time.time())
        start = time.time()
        run(key)
        elapsed = time.time() - start
        stats = httpx.get(f"{base}/stats", params={"key": key}).json()
        minimum = (math.ceil(jobs / parsed.amount) - 1) * parsed.period_s
        print(
            f"{name:36} {elapsed:8.2f} {elapsed / minimum:6.2f}x "
            f"{stats['ok'] / elapsed * 60:9.0f} {stats['rejected']:6d}"
        )


def main() -> None:
    """Run both parts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--rate", default="20/second", help="the limited endpoint's policy")
    parser.add_argument("--jobs", type=int, default=0, help="GETs per throughput contender")
    args = parser.parse_args()
    # Many short interleaved rounds, best kept: on a shared machine a long round is rarely
    # undisturbed from start to end, a short one often is.
    requests, rounds = (100, 6) if args.quick else (250, 24)
    jobs = args.jobs or (40 if args.quick else 120)
    # The low-remaining warnings are expected here; keep the tables readable.
    logging.getLogger("ratekeeper.client").setLevel(logging.ERROR)
    proc, base = start_server(args.rate)
    try:
        print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}, server {base}")
        overhead(base, requests, rounds)
        throughput(base, args.rate, jobs)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
