"""The client side: transport overhead beside plain httpx, and the same job against servers
ratekeeper did not write, beside the peers, in one run.

Each server runs in its own subprocess (client and server do not share a GIL) on loopback:
slowapi and Flask-Limiter (windows start at a key's first hit; Flask-Limiter writes its reset a
second late, rounded up), Flask-Limiter's moving window (``limits``), and a MusicBrainz-like
server (2 per 2 s, windows aligned to the clock, whole-second epoch resets, 503 when over).
Every contender runs under its own key (``X-Client``).

1. Overhead: sequential GETs to an unlimited endpoint, plain ``httpx.Client`` against the same
   client with :class:`RateLimitTransport`, many short interleaved rounds, best round kept.
2. The job: ``--jobs`` GETs at concurrency 1 and 8, every contender against every server:
   ratekeeper told the windows but not how they are counted (``HostPolicy(limits=...)``),
   ratekeeper told nothing, aiolimiter + tenacity and requests-ratelimiter (+ urllib3 Retry)
   told the windows, urllib3 ``Retry`` told nothing. Reported: seconds from the first GET to
   the last answer (clients are built before), ``vs min``: against the theoretical minimum
   (the waits the server's model imposes plus what the last window's GETs take with no limit
   at all, measured on the same server at the same concurrency), ``vs wait``: against the
   model's waits alone (the previous column of this table), refusals (429/503 answered), the
   windows the run spanned, and requests lost (no success in the end). The aligned server is
   run from two points of its window: a quarter in and three quarters in. A quarter in, a
   client told only "2 per 2 s" cannot reach the aligned minimum without a refusal: a
   first-hit server writing its reset rounded down to whole seconds answers exactly the same
   as the aligned one while its windows start that early, and a moving window refuses the
   third request before the first one's span has passed: 3 periods instead of 2.75 (1.09x).

    .venv/bin/python bench/client.py            # about five minutes on 2 cores
    .venv/bin/python bench/client.py --quick    # about three minutes
    # one cell while iterating: one server, one concurrency, some contenders, no overhead part
    .venv/bin/python bench/client.py --server slowapi --concurrency 8 --contender told
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
from dataclasses import dataclass
from typing import Any

import httpx

SERVER = r"""
import collections, email.utils, math, socket, sys, time
kind, rate = sys.argv[1], sys.argv[2]
counts = collections.Counter()
sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)

if kind in ("flask", "moving"):
    from flask import Flask, jsonify, request
    from flask_limiter import Limiter
    import waitress
    app = Flask("bench")
    limiter = Limiter(lambda: request.headers.get("x-client", "anon"), app=app,
                      headers_enabled=True, storage_uri="memory://",
                      strategy="moving-window" if kind == "moving" else "fixed-window")

    @app.after_request
    def count(response):
        counts[(request.headers.get("x-client", "anon"), response.status_code)] += 1
        return response

    @app.get("/limited")
    @limiter.limit(rate)
    def limited():
        return jsonify(ok=True)

    @app.get("/free")
    @limiter.exempt
    def free():
        return jsonify(ok=True)

    @app.get("/stats")
    @limiter.exempt
    def stats():
        key = request.args["key"]
        return jsonify({str(s): n for (k, s), n in counts.items() if k == key})

    waitress.serve(app, sockets=[sock], threads=16, _quiet=True)
    sys.exit()

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

async def free(request):
    return Response(b"ok")

async def stats(request):
    key = request.query_params["key"]
    return JSONResponse({str(s): n for (k, s), n in counts.items() if k == key})

routes = [Route("/free", free), Route("/stats", stats)]
if kind == "slowapi":
    from fastapi import FastAPI
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    limiter = Limiter(key_func=lambda request: request.headers.get("x-client", "anon"),
                      headers_enabled=True)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

    @app.middleware("http")
    async def count(request, call_next):
        response = await call_next(request)
        counts[(request.headers.get("x-client", "anon"), response.status_code)] += 1
        return response

    @app.get("/limited")
    @limiter.limit(rate)
    async def limited(request: Request, response: Response):
        return {"ok": True}

    app.add_route("/free", free)
    app.add_route("/stats", stats)
else:
    amount, period = (int(x) for x in rate.replace("s", "").split("/"))
    used = collections.Counter()

    async def limited(request):
        key = request.headers.get("x-client", "anon")
        now = time.time()
        window = math.floor(now / period)
        end = (window + 1) * period
        headers = {"X-RateLimit-Limit": str(amount), "X-RateLimit-Reset": str(end),
                   "Date": email.utils.formatdate(math.floor(now), usegmt=True)}
        if used[(key, window)] >= amount:
            counts[(key, 503)] += 1
            headers.update({"X-RateLimit-Remaining": "0", "Retry-After": str(math.ceil(end - now))})
            return PlainTextResponse("Your requests are exceeding the allowable rate limit.",
                                     status_code=503, headers=headers)
        used[(key, window)] += 1
        counts[(key, 200)] += 1
        headers["X-RateLimit-Remaining"] = str(amount - used[(key, window)])
        return JSONResponse({"ok": True}, headers=headers)

    app = Starlette(routes=[*routes, Route("/limited", limited)])
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                              date_header=kind != "aligned")).run(sockets=[sock])
"""


@dataclass(frozen=True)
class Server:
    """One server under test: its model decides the theoretical minimum."""

    name: str
    kind: str
    rate: str
    amount: int
    period: float
    aligned: bool


SERVERS = [
    Server("slowapi (first hit)", "slowapi", "10/second", 10, 1.0, False),
    Server("Flask-Limiter (first hit)", "flask", "10/second", 10, 1.0, False),
    Server("limits moving window", "moving", "10/second", 10, 1.0, False),
    Server("aligned 2/2s (MusicBrainz-like)", "aligned", "2/2s", 2, 2.0, True),
]


def start_server(kind: str, rate: str) -> tuple[subprocess.Popen[str], str]:
    """Start a bench server; returns the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, kind, rate],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/stats", params={"key": "-"})
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, base


def overhead(requests: int, rounds: int) -> None:
    """Part 1: time per request, plain httpx vs through the transport."""
    from ratekeeper.client import HostPolicy, RateLimitTransport

    proc, base = start_server("aligned", "2/2s")
    makers: dict[str, Callable[[], httpx.BaseTransport]] = {
        "httpx (plain)": httpx.HTTPTransport,
        "ratekeeper, nothing told": RateLimitTransport,
        "ratekeeper, told 1e6/second": lambda: RateLimitTransport(
            default=HostPolicy(limits="1000000/second")
        ),
    }
    best = dict.fromkeys(makers, math.inf)
    try:
        for _ in range(rounds):
            for name, make in makers.items():
                with httpx.Client(transport=make()) as client:
                    for _ in range(20):
                        client.get(f"{base}/free")
                    start = time.perf_counter()
                    for _ in range(requests):
                        client.get(f"{base}/free")
                    best[name] = min(best[name], (time.perf_counter() - start) / requests)
    finally:
        proc.terminate()
        proc.wait(10)
    plain = best["httpx (plain)"]
    print(f"\n1. Overhead per request ({requests} sequential GETs, best of {rounds} rounds)")
    print(f"{'client':34} {'us/request':>11} {'overhead':>9}")
    for name, seconds in best.items():
        print(f"{name:34} {seconds * 1e6:11.1f} {(seconds / plain - 1) * 100:+8.1f}%")


def in_threads(job: Callable[[], bool], jobs: int, concurrency: int) -> int:
    """Run ``job`` ``jobs`` times, ``concurrency`` at once; returns how many failed."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return sum(not ok for ok in pool.map(lambda _: job(), range(jobs)))


# Each contender is built before the clock starts (building an httpx transport loads the CA
# bundle, about 70 ms, which is no part of the job) and returns the job to time: it runs the
# GETs, closes its client and returns how many were lost.
Job = Callable[[], int]


def run_ratekeeper(url: str, key: str, jobs: int, c: int, server: Server, told: bool) -> Job:
    from ratekeeper.client import HostPolicy, RateLimitTransport

    policy = HostPolicy(limits=server.rate if told else None, max_in_flight=8)
    client = httpx.Client(transport=RateLimitTransport(default=policy), headers={"x-client": key})

    def job() -> bool:
        try:
            return client.get(url, timeout=30).status_code == 200
        except httpx.HTTPError:
            return False

    def go() -> int:
        with client:
            return in_threads(job, jobs, c)

    return go


def run_aiolimiter_tenacity(url: str, key: str, jobs: int, c: int, server: Server) -> Job:
    from aiolimiter import AsyncLimiter
    from tenacity import retry, retry_if_result, stop_after_attempt, wait_random_exponential

    client = httpx.AsyncClient(headers={"x-client": key}, timeout=30)

    async def main() -> int:
        limiter = AsyncLimiter(server.amount, server.period)
        async with client:
            gate = asyncio.Semaphore(c)

            @retry(
                retry=retry_if_result(lambda r: r.status_code in (429, 503)),
                wait=wait_random_exponential(multiplier=0.5, max=10),
                stop=stop_after_attempt(20),
            )
            async def attempt() -> httpx.Response:
                async with limiter:
                    return await client.get(url)

            async def one() -> bool:
                async with gate:
                    try:
                        return (await attempt()).status_code == 200
                    except Exception:
                        return False

            return sum(not ok for ok in await asyncio.gather(*(one() for _ in range(jobs))))

    return lambda: asyncio.run(main())


def urllib3_retry() -> Any:
    from urllib3.util.retry import Retry

    return Retry(
        total=20,
        status_forcelist=[429, 503],
        respect_retry_after_header=True,
        backoff_factor=0.5,
        allowed_methods=None,
    )


def run_urllib3(url: str, key: str, jobs: int, c: int) -> Job:
    import urllib3

    pool = urllib3.PoolManager(maxsize=8, retries=urllib3_retry(), headers={"x-client": key})

    def job() -> bool:
        try:
            return pool.request("GET", url).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    return lambda: in_threads(job, jobs, c)


def run_requests_ratelimiter(url: str, key: str, jobs: int, c: int, server: Server) -> Job:
    import requests
    from requests.adapters import HTTPAdapter
    from requests_ratelimiter import LimiterSession

    # N per W as one rate of N over W seconds (pyrate-limiter's sliding log).
    session = LimiterSession(
        per_second=server.amount / server.period,
        burst=server.period,
        limit_statuses=(429, 503),
    )
    session.mount("http://", HTTPAdapter(max_retries=urllib3_retry(), pool_maxsize=8))
    session.headers["x-client"] = key

    def job() -> bool:
        try:
            return session.get(url, timeout=30).status_code == 200
        except requests.RequestException:
            return False

    def go() -> int:
        with session:
            return in_threads(job, jobs, c)

    return go


def burst_floor_s(base: str, amount: int, c: int, tries: int = 3) -> float:
    """What the last window's ``amount`` GETs take with no limit at all, ``c`` at once, from a
    plain httpx client built beforehand (its connections opened in the run, as every
    contender's are): the best of ``tries``. No client ends sooner than the model's waits plus
    this, so it is part of the theoretical minimum."""
    url = f"{base}/free"

    def once() -> float:
        with httpx.Client() as client:
            start = time.perf_counter()
            in_threads(lambda: client.get(url).status_code == 200, amount, c)
            return time.perf_counter() - start

    return min(once() for _ in range(tries))


def minimum_s(server: Server, jobs: int, start: float) -> float:
    """The shortest wait the server's model imposes on ``jobs`` requests from ``start``."""
    bursts = math.ceil(jobs / server.amount)
    if not server.aligned:
        return (bursts - 1) * server.period
    first_end = (math.floor(start / server.period) + 1) * server.period
    return first_end - start + (bursts - 2) * server.period if bursts > 1 else 0.0


CONTENDERS = {
    "told": "ratekeeper, windows told",
    "learned": "ratekeeper, nothing told",
    "aiolimiter": "aiolimiter + tenacity, told",
    "requests-ratelimiter": "requests-ratelimiter, told",
    "urllib3": "urllib3 Retry, nothing told",
}


def the_job(
    server: Server, jobs: int, concurrency: tuple[int, ...], chosen: tuple[str, ...]
) -> list[str]:
    """Part 2 for one server: the ``chosen`` contenders at every concurrency; returns rows."""
    proc, base = start_server(server.kind, server.rate)
    url = f"{base}/limited"
    every: dict[str, Callable[[str, int, int], Job]] = {
        "ratekeeper, windows told": lambda k, n, c: run_ratekeeper(url, k, n, c, server, True),
        "ratekeeper, nothing told": lambda k, n, c: run_ratekeeper(url, k, n, c, server, False),
        "aiolimiter + tenacity, told": lambda k, n, c: run_aiolimiter_tenacity(
            url, k, n, c, server
        ),
        "requests-ratelimiter, told": lambda k, n, c: run_requests_ratelimiter(
            url, k, n, c, server
        ),
        "urllib3 Retry, nothing told": lambda k, n, c: run_urllib3(url, k, n, c),
    }
    names = {CONTENDERS[c] for c in chosen}
    contenders = {name: run for name, run in every.items() if name in names}
    phases = (0.25, 0.75) if server.aligned else (0.5,)
    rows = []
    try:
        for c in concurrency:
            floor = burst_floor_s(base, min(server.amount, jobs), c)
            for phase in phases:
                for name, run in contenders.items():
                    index = list(every).index(name)
                    key = f"c{index}-{c}-{phase}-{time.time_ns()}"
                    go = run(key, jobs, c)
                    # Every contender starts at the same point of a window.
                    period = server.period
                    time.sleep((phase * period - time.time() % period) % period)
                    start = time.time()
                    lost = go()
                    elapsed = time.time() - start
                    stats = httpx.get(f"{base}/stats", params={"key": key}).json()
                    refused = stats.get("429", 0) + stats.get("503", 0)
                    windows = math.ceil(elapsed / period) + 1
                    model = minimum_s(server, jobs, start)
                    where = f" @{phase:.2f}W" if server.aligned else ""
                    rows.append(
                        f"{server.name + where:38} {name:30} {c:2d} {elapsed:7.3f} "
                        f"{elapsed / (model + floor):6.3f}x {elapsed / model:6.3f}x "
                        f"{refused:7d} {windows:7d} {lost:5d}"
                    )
                    print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def main() -> None:
    """Run both parts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--jobs", type=int, default=0, help="GETs per 10/second contender")
    parser.add_argument(
        "--server", action="append", choices=[s.kind for s in SERVERS], help="only these"
    )
    parser.add_argument(
        "--concurrency", action="append", type=int, help="only these (default: 1 and 8)"
    )
    parser.add_argument("--contender", action="append", choices=list(CONTENDERS), help="only these")
    args = parser.parse_args()
    single = bool(args.server or args.concurrency or args.contender)
    requests, rounds = (100, 4) if args.quick else (200, 10)
    jobs = args.jobs or (20 if args.quick else 40)
    # The low-remaining warnings and retries are expected here; keep the tables readable.
    logging.getLogger("ratekeeper.client").setLevel(logging.ERROR)
    for module in (
        "aiolimiter",
        "tenacity",
        "urllib3",
        "requests_ratelimiter",
        "ratekeeper.client",
    ):
        importlib.import_module(module)
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")
    if not single:
        overhead(requests, rounds)
    print(f"\n2. The same job against each server ({jobs} GETs at 10/second, {jobs // 5} at 2/2s)")
    print(
        f"{'server':38} {'client':30} {'c':>2} {'seconds':>7} {'vs min':>7} {'vs wait':>7} "
        f"{'refused':>7} {'windows':>7} {'lost':>5}"
    )
    concurrency = tuple(args.concurrency or (1, 8))
    chosen = tuple(args.contender or CONTENDERS)
    for server in SERVERS:
        if args.server and server.kind not in args.server:
            continue
        n = jobs if server.period == 1.0 else max(jobs // 5, 4)
        the_job(server, n, concurrency, chosen)


if __name__ == "__main__":
    main()
