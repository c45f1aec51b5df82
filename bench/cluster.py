"""Redis Cluster decisions beside the standalone store, and a failover timeline, in one run.

Run ``.venv/bin/python bench/cluster.py`` (about 3 minutes; ``--seconds 1 --rounds 1``: about
one). It
starts its own servers on free loopback ports (no persistence): one standalone ``redis-server``,
a 3-master cluster, and a 3-master + 3-replica cluster (node timeout 2 s, full coverage off) for
the failover.

Throughput rows: decisions/s from ``PROCESSES`` processes x ``THREADS`` threads (sync driver) or
x ``TASKS`` asyncio tasks, each decision allowed (a charge: the costly path), keys drawn from a
pool of 20,000 identities:

- standalone: the identity's two limit sets (one script call);
- cluster, same slot: the same two limit sets (one hash tag, one call);
- cluster, 2 slots: the identity's limit set + a global one (decided and charged on both at
  once: one round while both admit, as here);
- cluster, 3 slots: the identity's + two global ones (under two keys, on two masters);
- global key only, N processes: every decision touches one key (one slot of one master): how far
  a global limit scales.

Ratios against the targets of issue 18: same slot / standalone >= 0.8, 2 slots / same slot
>= 0.5.

Latency: one thread, one decision at a time, median and 90th percentile: a decision over 2 or
3 slots takes one round (every slot at once).

Failover: 30 identities decided from ``PROCESSES`` x ``THREADS`` threads; one master is killed
(``kill -9``) 2 s in; per 250 ms, decisions for keys of the healthy masters and of the failed
one, and errors; then kill -> promoted (the replica says ``master``) -> decisions back.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from ratekeeper import LimitSet
from ratekeeper.errors import StoreError
from ratekeeper.stores.redis import RedisStore

PROCESSES = 4
THREADS = 8
TASKS = 64
IDENTITY = [LimitSet("a", "1000000/minute"), LimitSet("b", "1000000/hour")]
GLOBAL = LimitSet("g", "100000000/hour")
GLOBAL_2 = LimitSet("g2", "100000000/hour")
KEYS = 20_000
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _items(shape: str, key: str) -> Any:
    identity = tuple((limit_set, key) for limit_set in IDENTITY)
    if shape == "2 slots":
        return (*identity, (GLOBAL, "everyone"))
    if shape == "3 slots":
        # A second global key under another key: one key's limit sets share its slot. Its
        # slot (9990) and "everyone"'s (5230) sit on two of the three masters.
        return (*identity, (GLOBAL, "everyone"), (GLOBAL_2, "everyone else"))
    if shape == "global":
        return ((GLOBAL, "everyone"),)
    return identity


def worker(
    url: str, shape: str, driver: str, seconds: float, seed: int, ready: Any, results: Any
) -> None:
    """Connect, wait for every worker (``ready``, a barrier), decide for ``seconds``; put the
    number of decisions made in ``results``."""
    store = RedisStore(url, prefix=f"b{os.getpid()}")
    counts = [0]

    if driver == "async":

        async def task(n: int, stop_at: float) -> None:
            i = seed * 1_000_003 + n * 7919
            while time.time() < stop_at:
                i += 1
                await store.decide_async(_items(shape, f"k{i % KEYS}"), 1, 0.0)
                counts[0] += 1

        async def run() -> None:
            await store.decide_async(_items(shape, "warm"), 1, 0.0)
            ready.wait()
            stop_at = time.time() + seconds
            await asyncio.gather(*(task(n, stop_at) for n in range(TASKS)))
            await store.close_async()

        asyncio.run(run())
    else:
        lock = threading.Lock()
        store.decide(_items(shape, "warm"), 1, 0.0)
        ready.wait()
        stop_at = time.time() + seconds

        def work(n: int) -> None:
            i = seed * 1_000_003 + n * 7919
            done = 0
            while time.time() < stop_at:
                i += 1
                store.decide(_items(shape, f"k{i % KEYS}"), 1, 0.0)
                done += 1
            with lock:
                counts[0] += done

        pool = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    store.close()
    results.put(counts[0])


def measure(url: str, shape: str, driver: str, processes: int, seconds: float) -> float:
    """Decisions/s of ``processes`` workers started together."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(url, shape, driver, seconds, seed, ready, results))
        for seed in range(processes)
    ]
    for process in workers:
        process.start()
    total = sum(results.get(timeout=120) for _ in workers)
    for process in workers:
        process.join()
    return total / seconds


def latency(url: str, shape: str, n: int = 2000) -> tuple[float, float]:
    """Median and 90th percentile (ms) of one thread's decisions, one at a time."""
    store = RedisStore(url, prefix="lat")
    store.decide(_items(shape, "warm"), 1, 0.0)
    times = []
    for i in range(n):
        started = time.perf_counter()
        store.decide(_items(shape, f"k{i}"), 1, 0.0)
        times.append(time.perf_counter() - started)
    store.close()
    times.sort()
    return times[n // 2] * 1000, times[n * 9 // 10] * 1000


# ------------------------------------------------------------------------------- servers


def _free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 55000:
            return port


def _start(directory: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return process, port


def _cluster(
    root: Path, replicas: int, processes: list[subprocess.Popen[bytes]]
) -> list[tuple[subprocess.Popen[bytes], int]]:
    nodes = []
    for i in range(3 * (1 + replicas)):
        node = _start(
            root / f"n{i}",
            *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
            *("--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0"),
            *("--repl-ping-replica-period", "1"),
        )
        processes.append(node[0])
        nodes.append(node)
    subprocess.run(
        [
            REDIS_CLI,
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for _, p in nodes),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    for _ in range(400):
        client = redis.Redis(port=nodes[0][1])
        table = client.execute_command("CLUSTER SLOTS")
        client.close()
        if len(table) == 3 and all(len(entry) - 3 == replicas for entry in table):
            break
        time.sleep(0.05)
    return nodes


# ------------------------------------------------------------------------------- failover


def failover_worker(url: str, victim: tuple[int, int], ready: Any, results: Any) -> None:
    """Connect, wait for the others (``ready``), decide on 30 identities for 7 s; put per
    250 ms bucket [healthy decided, victim decided, errors] in ``results``."""
    store = RedisStore(url + "?timeout=0.5", prefix="fo")
    keys = [f"id{i}" for i in range(30)]
    on_victim = {
        k: victim[0] <= key_slot(store._codec.key(IDENTITY[0], k).encode()) <= victim[1]
        for k in keys
    }
    buckets: dict[int, list[int]] = {}
    lock = threading.Lock()
    store.decide(_items("same slot", "warm"), 1, 0.0)
    ready.wait()
    start_at = time.time()
    stop_at = start_at + 7.0

    def work(n: int) -> None:
        i = n
        while (now := time.time()) < stop_at:
            i += 1
            key = keys[i % len(keys)]
            column = 1 if on_victim[key] else 0
            try:
                store.decide(_items("same slot", key), 1, 0.0)
            except StoreError:
                column = 2
                time.sleep(0.001)
            with lock:
                buckets.setdefault(int((now - start_at) * 4), [0, 0, 0])[column] += 1

    pool = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.close()
    results.put((start_at, buckets))


def failover(root: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    nodes = _cluster(root, 1, processes)
    client = redis.Redis(port=nodes[0][1])
    table = client.execute_command("CLUSTER SLOTS")
    client.close()
    first, last, (_, victim_port, *_), (_, replica_port, *_) = table[0][:4]
    victim = next(p for p, port in nodes if port == victim_port)
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for _, port in nodes)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(PROCESSES + 1)
    results = context.Queue()
    workers = [
        context.Process(target=failover_worker, args=(url, (first, last), ready, results))
        for _ in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    ready.wait()
    start_at = time.time()
    time.sleep(2.0)
    killed = time.time()
    victim.kill()
    replica = redis.Redis(port=replica_port, socket_timeout=1)
    while replica.execute_command("ROLE")[0] != b"master":
        time.sleep(0.01)
    promoted = time.time()
    replica.close()
    runs = []
    for _ in workers:
        started, run = results.get(timeout=60)
        # Re-bucket on the parent's start: the workers' clocks start within a few ms of it.
        shift = round((started - start_at) * 4)
        runs.append({b + shift: v for b, v in run.items()})
    for process in workers:
        process.join()
    buckets: dict[int, list[int]] = {}
    for run in runs:
        for b, values in run.items():
            entry = buckets.setdefault(b, [0, 0, 0])
            for i, v in enumerate(values):
                entry[i] += v
    kill_b = (killed - start_at) * 4
    back = min(
        (b for b, v in buckets.items() if v[1] and b / 4 + start_at >= promoted - 0.25),
        default=None,
    )
    print("\nFailover (decisions per 250 ms; t from the start of the load):")
    print(f"{'t (s)':>6} {'healthy':>8} {'failed':>8} {'errors':>8}")
    for b in sorted(buckets):
        mark = ""
        if b == int(kill_b):
            mark = "  <- kill -9"
        if b == int((promoted - start_at) * 4):
            mark += "  <- replica promoted"
        healthy, failed_shard, errors = buckets[b]
        print(f"{b / 4:6.2f} {healthy:8d} {failed_shard:8d} {errors:8d}{mark}")
    back_s = "never" if back is None else f"{back / 4 + start_at - promoted:+.2f} s"
    print(
        f"kill -> promoted {promoted - killed:.2f} s; promoted -> failed shard's decisions back "
        f"{back_s} (250 ms buckets)"
    )


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput row")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per row")
    parser.add_argument("--no-failover", action="store_true")
    options = parser.parse_args()
    processes: list[subprocess.Popen[bytes]] = []
    root = Path(tempfile.mkdtemp(prefix="rk-bench-cluster-"))
    try:
        standalone, port = _start(root / "standalone")
        processes.append(standalone)
        alone = f"redis://127.0.0.1:{port}/0"
        nodes = _cluster(root / "cluster", 0, processes)
        cluster = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for _, p in nodes)
        seconds = options.seconds
        rows = [
            ("standalone", alone, "same slot", "sync"),
            ("standalone", alone, "same slot", "async"),
            ("cluster, same slot", cluster, "same slot", "sync"),
            ("cluster, same slot", cluster, "same slot", "async"),
            ("cluster, 2 slots", cluster, "2 slots", "sync"),
            ("cluster, 2 slots", cluster, "2 slots", "async"),
            ("cluster, 3 slots", cluster, "3 slots", "sync"),
            ("cluster, 3 slots", cluster, "3 slots", "async"),
        ]
        best: dict[tuple[str, str], float] = {}
        # Rounds interleave the rows, so that a burst of load elsewhere on the machine does not
        # fall on one row only; each row keeps its best round.
        for _ in range(options.rounds):
            for name, url, shape, driver in rows:
                rate = measure(url, shape, driver, PROCESSES, seconds)
                best[(name, driver)] = max(best.get((name, driver), 0.0), rate)
        print(
            f"decisions/s, {PROCESSES} processes x {THREADS} threads (sync) or {TASKS} asyncio "
            f"tasks, best of {options.rounds} interleaved rounds of {seconds:g} s"
        )
        print(f"{'row':<34} {'sync':>9} {'asyncio':>9}")
        for name in dict.fromkeys(name for name, *_ in rows):
            print(f"{name:<34} {best[(name, 'sync')]:9.0f} {best[(name, 'async')]:9.0f}")
        for driver in ("sync", "async"):
            same = best[("cluster, same slot", driver)]
            print(
                f"{driver}: same slot / standalone {same / best[('standalone', driver)]:.2f} "
                f"(target 0.80), 2 slots / same slot "
                f"{best[('cluster, 2 slots', driver)] / same:.2f} (target 0.50), "
                f"3 slots / same slot {best[('cluster, 3 slots', driver)] / same:.2f}"
            )
        print("one thread, one decision at a time (a cross-slot decision is one round):")
        for name, url, shape, _ in rows[::2]:
            median, p90 = latency(url, shape)
            print(f"{name:<34} median {median:.2f} ms, p90 {p90:.2f} ms")
        for n in (1, 2, 4):
            rate = max(
                measure(cluster, "global", "async", n, seconds) for _ in range(options.rounds)
            )
            print(f"{f'global key only, {n} process(es)':<34} {'':>9} {rate:9.0f}", flush=True)
        if not options.no_failover:
            failover(root / "failover", processes)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
