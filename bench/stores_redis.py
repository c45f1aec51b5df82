"""Redis decisions beside `limits`' RedisStorage and pyrate-limiter's RedisBucket, in one run.

Run ``.venv/bin/python bench/stores_redis.py`` (about 2 minutes; ``--quick``: about 25 s). It
starts its own ``redis-server`` on a free loopback port (no persistence) and decides the
3-window policy ``100/minute; 1000/hour; 10000/day`` per key for keys drawn in turn from a pool
large enough that nearly every decision is allowed (a charge: the costly path).

Rows (each best of a few interleaved rounds; compare ratios, not absolute numbers):

- ratekeeper: ``Limiter(RedisStore(url)).hit(policy, key)``; async: ``AsyncLimiter`` with 64
  concurrent tasks on the store's pipelined connection, calls made while others are in flight
  leaving in one write (default) or each in its own write (``batch_async=False``);
- limits fixed, naive hit x3: ``FixedWindowRateLimiter(RedisStorage)``, ``hit`` on minute, hour
  and day, stopping at the first rejection (not all or nothing: the cheapest correct-looking use);
- limits fixed, test x3 + hit x3: all or nothing for one caller (not atomic across callers);
- pyrate RedisBucket: one ``RedisBucket`` (a sliding log, one Lua call) per key with the three
  rates, via ``Limiter.try_acquire(key, blocking=False)``; no leak thread is scheduled.

"cmds" counts the commands Redis executed per decision (``MONITOR``: the client's and those run
inside scripts), "trips" the client's socket writes per decision (``send``/``sendall`` on any
socket: redis-py's connections and the store's own alike).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import redis
from pyrate_limiter import BucketFactory, Duration, Limiter, Rate, RateItem, RedisBucket

from ratekeeper import AsyncLimiter, LimitSet
from ratekeeper import Limiter as RkLimiter
from ratekeeper.stores.redis import RedisStore

POLICY_TEXT = "100/minute; 1000/hour; 10000/day"
POLICY = LimitSet("bench", POLICY_TEXT)
KEYS = 20_000
CONCURRENCY = 64
PROCESSES = 4

Decide = Callable[[str], bool]
AsyncDecide = Callable[[str], Awaitable[bool]]


# ------------------------------------------------------------------------- contenders (sync)


def rk_sync(url: str) -> Decide:
    hit = RkLimiter(RedisStore(url, prefix="rk")).hit
    return lambda key: hit(POLICY, key).allowed


def limits_sync(url: str, all_or_nothing: bool) -> Decide:
    limiter = limits.strategies.FixedWindowRateLimiter(limits.storage.RedisStorage(url))
    minute, hour, day = limits.parse_many(POLICY_TEXT)
    test, hit = limiter.test, limiter.hit
    if all_or_nothing:

        def decide(key: str) -> bool:
            if test(minute, key) and test(hour, key) and test(day, key):
                hit(minute, key)
                hit(hour, key)
                hit(day, key)
                return True
            return False

        return decide
    return lambda key: hit(minute, key) and hit(hour, key) and hit(day, key)


def pyrate_sync(url: str) -> Decide:
    client = redis.Redis.from_url(url)
    rates = [Rate(100, Duration.MINUTE), Rate(1000, Duration.HOUR), Rate(10000, Duration.DAY)]
    script = RedisBucket.init(rates, client, "pyrate:warm").script_hash  # type: ignore[union-attr]

    class PerKey(BucketFactory):
        def __init__(self) -> None:
            self.buckets: dict[str, RedisBucket] = {}

        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, time.time_ns() // 1_000_000, weight=weight)

        def get(self, item: RateItem) -> RedisBucket:
            bucket = self.buckets.get(item.name)
            if bucket is None:
                bucket = RedisBucket(rates, client, f"pyrate:{item.name}", script)
                self.buckets[item.name] = bucket
            return bucket

    try_acquire = Limiter(PerKey()).try_acquire
    return lambda key: bool(try_acquire(key, blocking=False))


SYNC_ROWS: dict[str, Callable[[str], Decide]] = {
    "ratekeeper RedisStore": rk_sync,
    "limits fixed, naive hit x3": lambda url: limits_sync(url, False),
    "limits fixed, test x3 + hit x3": lambda url: limits_sync(url, True),
    "pyrate RedisBucket (log)": pyrate_sync,
}


# ------------------------------------------------------------------------ contenders (async)


def rk_async(url: str, batch: bool) -> AsyncDecide:
    hit = AsyncLimiter(RedisStore(url, prefix="rka", batch_async=batch)).hit

    async def decide(key: str) -> bool:
        return (await hit(POLICY, key)).allowed

    return decide


def limits_async(url: str) -> AsyncDecide:
    storage = limits.aio.storage.RedisStorage("async+" + url, implementation="redispy")
    limiter = limits.aio.strategies.FixedWindowRateLimiter(storage)
    minute, hour, day = limits.parse_many(POLICY_TEXT)
    hit = limiter.hit

    async def decide(key: str) -> bool:
        return await hit(minute, key) and await hit(hour, key) and await hit(day, key)

    return decide


ASYNC_ROWS: dict[str, Callable[[str], AsyncDecide]] = {
    f"ratekeeper async c={CONCURRENCY}, coalesced": lambda url: rk_async(url, True),
    f"ratekeeper async c={CONCURRENCY}, write per call": lambda url: rk_async(url, False),
    f"limits async c={CONCURRENCY}, naive hit x3": limits_async,
}


# ------------------------------------------------------------------------------- measuring


def _keys(offset: int) -> Any:
    return itertools.cycle([f"client-{(i + offset) % KEYS}" for i in range(KEYS)])


def run_sync(decide: Decide, seconds: float, offset: int = 0) -> tuple[int, int]:
    keys = _keys(offset)
    end = time.perf_counter() + seconds
    done = allowed = 0
    while time.perf_counter() < end:
        for _ in range(200):
            allowed += decide(next(keys))
        done += 200
    return done, allowed


async def run_async(decide: AsyncDecide, seconds: float) -> tuple[int, int]:
    keys = _keys(0)
    end = time.perf_counter() + seconds
    done = allowed = 0

    async def task() -> None:
        nonlocal done, allowed
        while time.perf_counter() < end:
            ok = await decide(next(keys))
            allowed += ok
            done += 1

    await asyncio.gather(*(task() for _ in range(CONCURRENCY)))
    return done, allowed


def run_processes(row: str, url: str, seconds: float) -> tuple[int, int]:
    start_at = time.time() + 1.5
    args = [sys.executable, __file__, "--worker", row, url, str(start_at), str(seconds)]
    procs = [
        subprocess.Popen([*args, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(PROCESSES)
    ]
    done = allowed = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise SystemExit(f"worker for {row!r} exited with status {proc.returncode}")
        result = json.loads(out)
        done += result["done"]
        allowed += result["allowed"]
    return done, allowed


def worker(row: str, url: str, start_at: float, seconds: float, index: int) -> None:
    decide = SYNC_ROWS[row](url)
    while time.time() < start_at:
        time.sleep(0.001)
    done, allowed = run_sync(decide, seconds, index * (KEYS // PROCESSES))
    print(json.dumps({"done": done, "allowed": allowed}))


class Monitor:
    """Counts the commands Redis executes (MONITOR), split into the client's and the scripts'."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.client = self.script = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if b"lua]" in line:
                    self.script += 1
                elif line.startswith(b"+") and line != b"+OK":
                    self.client += 1

    def stop(self) -> tuple[int, int]:
        time.sleep(0.3)
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
        self.sock.close()
        self.thread.join()
        return self.client, self.script


class TripCounter:
    """Counts socket writes (a command or a pipeline each; asyncio transports write with
    ``send``, blocking clients with ``sendall``)."""

    def __init__(self) -> None:
        self.count = 0
        self._patched: list[tuple[str, Any]] = []

    def __enter__(self) -> TripCounter:
        for name in ("send", "sendall"):
            original = getattr(socket.socket, name)
            self._patched.append((name, original))
            setattr(socket.socket, name, self._wrap(original))
        return self

    def _wrap(self, original: Any) -> Any:
        counter = self

        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return original(self, *args, **kwargs)

        return send

    def __exit__(self, *exc: object) -> None:
        for name, original in self._patched:
            setattr(socket.socket, name, original)


def count_traffic(port: int, url: str, n: int) -> dict[str, tuple[float, float]]:
    """Commands and round trips per decision of each sync row and the async ratekeeper rows."""
    out: dict[str, tuple[float, float]] = {}
    for name, build in SYNC_ROWS.items():
        decide = build(url)
        decide("warm-up")
        monitor = Monitor(port)
        time.sleep(0.1)
        with TripCounter() as trips:
            for i in range(n):
                decide(f"traffic-{i}")
        client_cmds, script_cmds = monitor.stop()
        out[name] = ((client_cmds + script_cmds) / n, trips.count / n)
    for name, abuild in ASYNC_ROWS.items():

        async def drive(abuild: Callable[[str], AsyncDecide] = abuild) -> tuple[int, int, int]:
            decide = abuild(url)
            # As many warm-up decisions at once as there will be tasks: every pooled connection
            # is open (its handshake commands are not a decision's) before counting starts.
            await asyncio.gather(*(decide(f"warm-up-{i}") for i in range(CONCURRENCY)))
            monitor = Monitor(port)
            await asyncio.sleep(0.1)
            keys = iter(range(n))

            async def task() -> None:
                for i in keys:
                    await decide(f"atraffic-{i}")

            with TripCounter() as trips:
                await asyncio.gather(*(task() for _ in range(CONCURRENCY)))
            client_cmds, script_cmds = monitor.stop()
            return client_cmds, script_cmds, trips.count

        client_cmds, script_cmds, count = asyncio.run(drive())
        out[name] = ((client_cmds + script_cmds) / n, count / n)
    return out


def start_redis() -> tuple[subprocess.Popen[bytes], int, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="rk-bench-")
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    client.close()
    return proc, port, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    """Print commands, round trips and decisions/s per row, and the ratio to limits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per row")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        row, url, start_at, seconds, index = args.worker
        worker(row, url, float(start_at), float(seconds), int(index))
        return
    seconds, rounds = (1.0, 1) if args.quick else (2.0, 3)
    proc, port, url = start_redis()
    try:
        traffic = count_traffic(port, url, 300)
        rows: dict[str, Callable[[], tuple[int, int]]] = {}
        for name, build in SYNC_ROWS.items():
            decide = build(url)
            rows[f"{name}, 1 thread"] = lambda d=decide: run_sync(d, seconds)
        for name, abuild in ASYNC_ROWS.items():
            rows[name] = lambda b=abuild: asyncio.run(run_async(b(url), seconds))
        for name in SYNC_ROWS:
            rows[f"{name}, {PROCESSES} processes"] = lambda n=name: run_processes(n, url, seconds)
        best: dict[str, tuple[float, float]] = {}
        # Rows take turns round after round and keep their best: other load only slows a row.
        for _ in range(rounds):
            for name, measure in rows.items():
                done, allowed = measure()
                rate = done / seconds
                if rate > best.get(name, (0.0, 0.0))[0]:
                    best[name] = (rate, allowed / max(done, 1))
    finally:
        proc.kill()
        proc.wait()

    def reference(name: str) -> float:
        if "async" in name:
            return best[f"limits async c={CONCURRENCY}, naive hit x3"][0]
        suffix = name.rsplit(", ", 1)[1]
        return best[f"limits fixed, naive hit x3, {suffix}"][0]

    print(f"policy {POLICY_TEXT} per key, {KEYS} keys, best of {rounds} x {seconds:g} s")
    header = (
        f"{'row':<48} {'cmds':>5} {'trips':>6} {'decisions/s':>12} {'vs limits':>9} {'allowed':>8}"
    )
    print(header)
    for name, (rate, allowed) in best.items():
        base = next((v for k, v in traffic.items() if name.startswith(k)), None)
        cmds, trips = base if base is not None else (float("nan"), float("nan"))
        shown = f"{cmds:>5.1f} {trips:>6.2f}" if base is not None else f"{'':>5} {'':>6}"
        print(f"{name:<48} {shown} {rate:>12,.0f} {rate / reference(name):>8.2f}x {allowed:>8.1%}")


if __name__ == "__main__":
    main()
