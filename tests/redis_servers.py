"""Real redis-server processes for the tests: one standalone server or a 3-node cluster, each
on free loopback ports in a temporary directory, never the default port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (cluster bus: port + 10000)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 55000 and port != 6379:
            return port


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep its port and data directory."""

    def __init__(self, directory: Path, *, port: int | None = None, args: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
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
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """Stop at once, like a crash (SIGKILL): nothing is saved on the way out."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@contextmanager
def redis_server(directory: Path, *args: str) -> Iterator[RedisServer]:
    """A running standalone server, killed on exit."""
    server = RedisServer(directory, args=args)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def redis_cluster(directory: Path, nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A running cluster of ``nodes`` primaries (no replicas), killed on exit."""
    servers: list[RedisServer] = []
    try:
        for i in range(nodes):
            server = RedisServer(
                directory / f"node{i}",
                args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            server.start()
            servers.append(server)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(servers)
        yield servers
    finally:
        for server in servers:
            server.kill()


def _wait_cluster_ok(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for server in servers:
            client = server.client()
            try:
                info = client.cluster("info")
                slots = client.cluster("slots")
            finally:
                client.close()
            states.append(info.get("cluster_state") == "ok" and len(slots) == len(servers))
        if all(states):
            return
        time.sleep(0.05)
    raise RuntimeError("the test cluster did not reach cluster_state:ok")
