"""Real redis-server processes for the tests: one standalone server or a 3-node cluster, each
on free loopback ports in a temporary directory, never the default port."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from ratekeeper import Limit, LimitSet
from ratekeeper.errors import StoreError
from ratekeeper.stores.redis import RedisStore

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, nor on its cluster bus port
    (port + 10000)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 55000 and port != 6379:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def make_tls_files(directory: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (``ca.crt``, ``server.crt``,
    ``server.key`` in ``directory``); returns the CA file."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rk-ca"),
        *("-keyout", "ca.key", "-out", "ca.crt"),
    )
    openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"),
        *("-keyout", "server.key", "-out", "server.csr"),
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt"),
    )
    return directory / "ca.crt"


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep its port and data directory. With
    ``tls_dir`` (see :func:`make_tls_files`) it speaks TLS only."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        tls_dir: Path | None = None,
    ):
        self.directory = directory
        # A port chosen here may be taken before the server binds it (tests run in parallel
        # processes): the first start then retries on another.
        self._may_move = port is None
        self.port = port or free_port()
        self.args = args
        self.tls_dir = tls_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls_dir is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_dir / 'ca.crt'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls_dir is None:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(self.tls_dir / "server.crt")),
            *("--tls-key-file", str(self.tls_dir / "server.key")),
            *("--tls-ca-cert-file", str(self.tls_dir / "ca.crt")),
            *("--tls-cluster", "yes"),
        ]

    def start(self) -> None:
        for _ in range(4 if self._may_move else 1):
            if self._start():
                self._may_move = False  # a restart keeps the port
                return
            self.port = free_port()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _start(self) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client(socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.info("server")["process_id"] != self.process.pid:
                    self.kill()  # another test's server holds the port
                    return False
                break
            except (redis.ResponseError, redis.AuthenticationError):
                break  # it answers (e.g. NOAUTH with --requirepass): it is up
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    return False
                time.sleep(0.02)
            finally:
                client.close()
        return True

    def kill(self) -> None:
        """Stop at once, like a crash (SIGKILL): nothing is saved on the way out."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def role(self) -> str:
        """``master`` or ``slave``, as the server says now."""
        client = self.client(socket_timeout=1)
        try:
            return str(client.execute_command("ROLE")[0].decode())
        finally:
            client.close()

    def client(self, **options: Any) -> redis.Redis:
        if self.tls_dir is not None:
            options |= {"ssl": True, "ssl_ca_certs": str(self.tls_dir / "ca.crt")}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)


@contextmanager
def redis_server(directory: Path, *args: str, tls_dir: Path | None = None) -> Iterator[RedisServer]:
    """A running standalone server, killed on exit."""
    server = RedisServer(directory, args=args, tls_dir=tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def redis_cluster(
    directory: Path,
    nodes: int = 3,
    tls_dir: Path | None = None,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 2000,
    full_coverage: bool = True,
) -> Iterator[list[RedisServer]]:
    """A running cluster of ``nodes`` masters with ``replicas`` replicas each, killed on exit.

    The masters come first in the list, then the replicas. ``full_coverage=False`` sets
    ``cluster-require-full-coverage no``: the other masters keep serving while one is down.
    """
    servers: list[RedisServer] = []
    try:
        for i in range(nodes * (1 + replicas)):
            server = RedisServer(
                directory / f"node{i}",
                args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # Replicas sync at once rather than after the default 5 s pause, and are
                    # listed in CLUSTER SLOTS within a second (once their offset is not 0).
                    "--repl-diskless-sync-delay",
                    "0",
                    "--repl-ping-replica-period",
                    "1",
                    "--cluster-require-full-coverage",
                    "yes" if full_coverage else "no",
                ),
                tls_dir=tls_dir,
            )
            server.start()
            servers.append(server)
        tls = [] if tls_dir is None else ["--tls", "--cacert", str(tls_dir / "ca.crt")]
        subprocess.run(
            [
                REDIS_CLI,
                *tls,
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in servers),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(servers, nodes, replicas)
        # redis-cli makes the first `nodes` servers the masters; say so in the order.
        masters = [s for s in servers if s.role() == "master"]
        yield masters + [s for s in servers if s not in masters]
    finally:
        for server in servers:
            server.kill()


def _wait_cluster_ok(servers: list[RedisServer], masters: int, replicas: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for server in servers:
            client = server.client()
            try:
                info = client.cluster("info")
                slots = client.execute_command("CLUSTER SLOTS")
                linked = client.info("replication")
            finally:
                client.close()
            states.append(
                info.get("cluster_state") == "ok"
                and len(slots) == masters
                # Each entry: first slot, last slot, the master, then its replicas.
                and all(len(entry) - 3 == replicas for entry in slots)
                and (linked["role"] == "master" or linked.get("master_link_status") == "up")
            )
        if all(states):
            return
        time.sleep(0.05)
    raise RuntimeError("the test cluster did not reach cluster_state:ok")


# -- a workload for the exactness tests, run in child processes --------------------------------

WINDOWED = "4/second; 60/minute"  # per key, aligned windows: the second binds
PER_KEY = 100  # per key per hour, from the first hit
GLOBAL = 950  # all keys together per hour: binds before the keys (10 x 100)
N_KEYS = 10


def hammer(url: str, prefix: str, seconds: float, threads: int, seed: int) -> dict[str, Any]:
    """Decide from ``threads`` threads until ``seconds`` pass, alternating a windowed
    single-identity decision and a per-key + global one; returns what was attempted and
    admitted: ``windowed[(key, second)] = [attempts, admitted]``, ``global_[key] = admitted``."""
    windowed = LimitSet("w", WINDOWED)
    per_key = LimitSet("k", [Limit.parse(f"{PER_KEY}/hour", "first_hit_window")])
    global_ = LimitSet("g", [Limit.parse(f"{GLOBAL}/hour", "first_hit_window")])
    store = RedisStore(url, prefix=prefix)
    lock = threading.Lock()
    counts: dict[tuple[str, int], list[int]] = {}
    admitted: dict[str, int] = {}
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def work(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        turn = n
        try:
            while time.monotonic() < deadline:
                key = f"key{rng.randrange(N_KEYS)}"
                turn += 1
                if turn % 2:
                    d = store.decide(((windowed, key),), 1, 0.0)
                    slot = (key, int(d.now))
                    with lock:
                        entry = counts.setdefault(slot, [0, 0])
                        entry[0] += 1
                        entry[1] += d.allowed
                else:
                    d = store.decide(((per_key, key), (global_, "everyone")), 1, 0.0)
                    if d.allowed:
                        with lock:
                            admitted[key] = admitted.get(key, 0) + 1
        except Exception as exc:
            errors.append(repr(exc))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.close()
    return {"windowed": counts, "global_": admitted, "errors": errors}


def check_exactness(url: str, prefix: str, seconds: float = 3.0) -> dict[str, int]:
    """Run :func:`hammer` in 4 processes x 50 threads and assert that exactly the allowed
    amounts were admitted; returns the totals."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        runs = pool.starmap(hammer, [(url, prefix, seconds, 50, seed) for seed in range(4)])
    assert [e for run in runs for e in run["errors"]] == []
    windows: dict[tuple[str, int], list[int]] = {}
    admitted: dict[str, int] = {}
    for run in runs:
        for slot, (attempts, ok) in run["windowed"].items():
            entry = windows.setdefault(slot, [0, 0])
            entry[0] += attempts
            entry[1] += ok
        for key, ok in run["global_"].items():
            admitted[key] = admitted.get(key, 0) + ok
    amount = int(WINDOWED.split("/", maxsplit=1)[0])
    # In each aligned second of each key, the first `amount` attempts pass, no more, no less.
    wrong = {slot: v for slot, v in windows.items() if v[1] != min(amount, v[0])}
    assert wrong == {}
    assert all(v <= PER_KEY for v in admitted.values())
    assert sum(admitted.values()) == GLOBAL
    return {
        "windowed_attempts": sum(v[0] for v in windows.values()),
        "windowed_admitted": sum(v[1] for v in windows.values()),
        "global_admitted": sum(admitted.values()),
    }


# -- a workload for the failover tests, run in child processes ---------------------------------

FAILOVER_WINDOWED = "4/second"  # per key, aligned: the first 4 decided in a second pass
FAILOVER_GLOBAL = 100_000  # per hour, every cross-slot decision: never binds, always touched


def failover_load(
    url: str,
    prefix: str,
    victim: tuple[int, int],
    seconds: float,
    threads: int,
    seed: int,
    driver: str,
    ready: Any,
    results: Any,
) -> None:
    """Connect, wait for the others (``ready``, a barrier), then decide from ``threads``
    threads (or asyncio tasks, with ``driver="async"``) for ``seconds``: a windowed decision
    for one of 30 keys, or that key's limits plus a global key on another shard. Keys whose slot
    is in ``victim`` (first, last) are the failed shard's. Puts in ``results``: ``events[(victim?,
    50 ms bucket)] = [decided, store errors]``, ``windows[(key, second)] = [decided, admitted]``
    and any other exception as text in ``unexpected``."""
    windowed = LimitSet("w", FAILOVER_WINDOWED)
    global_ = LimitSet("g", [Limit.parse(f"{FAILOVER_GLOBAL}/hour", "first_hit_window")])
    store = RedisStore(url, prefix=prefix)
    keys = [f"key{i}" for i in range(30)]
    on_victim = {
        k: victim[0] <= key_slot(store._codec.key(windowed, k).encode()) <= victim[1] for k in keys
    }
    everyone = next(
        f"all{i}"
        for i in range(1000)
        if not victim[0] <= key_slot(store._codec.key(global_, f"all{i}").encode()) <= victim[1]
    )
    events: dict[tuple[bool, int], list[int]] = {}
    windows: dict[tuple[str, int], list[int]] = {}
    unexpected: list[str] = []
    ready.wait()
    until = time.time() + seconds

    def pick(rng: random.Random) -> tuple[str, Any]:
        key = rng.choice(keys)
        if rng.random() < 0.3:
            return key, ((windowed, key), (global_, everyone))
        return key, ((windowed, key),)

    def record(key: str, at: float, decision: Any) -> None:
        # The sync driver calls this under a lock; asyncio tasks never interleave inside it.
        bucket = (on_victim[key], int(at * 20))
        if isinstance(decision, StoreError):
            events.setdefault(bucket, [0, 0])[1] += 1
            return
        if isinstance(decision, BaseException):
            unexpected.append(repr(decision))
            return
        events.setdefault(bucket, [0, 0])[0] += 1
        entry = windows.setdefault((key, int(decision.now)), [0, 0])
        entry[0] += 1
        entry[1] += decision.allowed

    if driver == "async":

        async def task(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while (at := time.time()) < until:
                key, items = pick(rng)
                try:
                    outcome: Any = await store.decide_async(items, 1, 0.0)
                except Exception as exc:
                    outcome = exc
                record(key, at, outcome)
                if isinstance(outcome, Exception):
                    await asyncio.sleep(0.001)

        async def run() -> None:
            await asyncio.gather(*(task(n) for n in range(threads)))
            await store.close_async()

        asyncio.run(run())
    else:
        lock = threading.Lock()

        def work(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while (at := time.time()) < until:
                key, items = pick(rng)
                try:
                    outcome: Any = store.decide(items, 1, 0.0)
                except Exception as exc:
                    outcome = exc
                with lock:
                    record(key, at, outcome)
                if isinstance(outcome, Exception):
                    time.sleep(0.001)

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    store.close()
    results.put(
        {"events": events, "windows": windows, "unexpected": unexpected, "victim": on_victim}
    )
