"""Real processes for the gateway tests: ``ratekeeper serve`` and the demo API as subprocesses on
free loopback ports (``--port 0``, the port read from the start-up line), and a raw-socket fake
upstream that misbehaves on request. No tests here; the helpers are imported."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PYTHON = sys.executable
_LISTENING = re.compile(r"(?:listening on|on) (http://127\.0\.0\.1:\d+)")


@dataclass
class Process:
    """A started server: its URL, the process, and what it printed so far."""

    url: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        """Everything printed (stdout and stderr merged) until now."""
        return "".join(self.lines)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def _start(
    args: list[str], cwd: Path, timeout_s: float = 30.0, env: dict[str, str] | None = None
) -> Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    process = Process("", proc)
    # One reader from the start: a select() after a buffered readline() can miss lines that
    # already sit in the buffer (the start-up line printed right after another one).
    threading.Thread(target=_drain, args=(process,), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    seen = 0
    while not process.url:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args} did not start: {process.output()}")
        lines = process.lines[seen:]
        seen += len(lines)
        for line in lines:
            match = _LISTENING.search(line)
            if match:
                process.url = match[1]
                break
        else:
            if proc.poll() is not None and seen == len(process.lines):
                time.sleep(0.1)
                if seen == len(process.lines):
                    raise RuntimeError(f"{args} exited {proc.returncode}: {process.output()}")
            time.sleep(0.02)
    _wait_ready(process.url, deadline)
    return process


def _drain(process: Process) -> None:
    stream = process.proc.stdout
    assert stream is not None
    for line in stream:
        process.lines.append(line)


def _wait_ready(url: str, deadline: float) -> None:
    # The socket is bound before the start-up line: connecting works at once, but the worker
    # answers only once its app is built.
    while True:
        try:
            httpx.get(url + "/healthz", timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def serve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Process]:
    """``ratekeeper serve --port 0 ARGS`` in ``cwd`` (``env`` added to the environment);
    stopped (SIGTERM) afterwards."""
    process = _start(
        [PYTHON, "-m", "ratekeeper.cli", "serve", "--port", "0", *args], cwd, timeout_s=60, env=env
    )
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def demo_upstream(*apis: str, cwd: Path) -> Iterator[Process]:
    """The demo APIs alone (no limits), as a separate upstream."""
    process = _start([PYTHON, "-m", "ratekeeper.gateway.demo", *apis, "--port", "0"], cwd)
    try:
        yield process
    finally:
        process.stop()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeUpstream:
    """A raw-socket HTTP/1.1 server whose answer depends on the path:

    ``/ok`` a small JSON answer; ``/echo`` the request head it received, as the body;
    ``/slow`` answers after 4 s; ``/garbage`` writes something that is not HTTP and closes;
    ``/cut`` promises 1000 bytes, sends 10 and closes; ``/cutbig`` the same with 1 MB promised
    and 128 KiB sent; ``/drip`` sends a chunk, waits 1 s,
    sends another; ``/hop`` answers with hop-by-hop headers that must not reach the client;
    ``/endless`` streams a chunk every 50 ms for up to 30 s and sets :attr:`abandoned` when its
    reader closes the connection.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self.abandoned = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting."""
        self._stop.set()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                path = head.split(b" ")[1].decode()
                if not self._answer(conn, path, head):
                    return

    def _answer(self, conn: socket.socket, path: str, head: bytes) -> bool:
        def reply(body: bytes, extra: bytes = b"") -> None:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + extra
                + b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )

        if path.startswith("/ok"):
            reply(b'{"ok":true}')
        elif path.startswith("/echo"):
            reply(head)
        elif path.startswith("/slow"):
            time.sleep(4)
            reply(b'{"slow":true}')
        elif path.startswith("/garbage"):
            conn.sendall(b"this is not HTTP at all\r\n\r\n")
            return False
        elif path.startswith("/cutbig"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 131072)
            return False
        elif path.startswith("/cut"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            return False
        elif path.startswith("/drip"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            time.sleep(1)
            conn.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        elif path.startswith("/endless"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    conn.sendall(b"4\r\ntick\r\n")
                except OSError:
                    self.abandoned.set()
                    return False
                time.sleep(0.05)
            return False
        elif path.startswith("/hop"):
            reply(
                b'{"hop":true}',
                b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                b"Proxy-Authenticate: Basic\r\nX-Kept: yes\r\n",
            )
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True


def client(local_address: str = "127.0.0.1", **kwargs: object) -> httpx.Client:
    """An HTTP client whose requests come from ``local_address`` (any 127.x.y.z)."""
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(transport=transport, timeout=10, **kwargs)  # type: ignore[arg-type]
