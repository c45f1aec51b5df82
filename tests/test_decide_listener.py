"""``serve --decide-listen``: the lean decision listener, against a real ``ratekeeper serve`` over
real sockets (raw HTTP/1.1, so that what goes on the wire is what is tested) and a real nginx.

Its answers are the ASGI decision endpoint's (same status, headers and body); it keeps
connections alive and answers pipelined requests in order; it never admits more than a limit
allows, on one connection or many; hostile input gets 400/431 and the listener keeps serving;
resets, blocks and reloads reach it as they reach the traffic port."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_servers import Process, demo_upstream, serve
from nginx_servers import nginx_example
from ratekeeper.gateway.admin.cli import admin_main
from redis_servers import redis_server

# Fixed windows end at the same instant for every key, so two keys asked the same things get
# the same headers (X-RateLimit-Reset); Retry-After may differ by the second that passed.
POLICY = """
body = "musique"
apply = []

[identity]
source = "api_key"
key_headers = ["{header}"]
anonymous = "reject"

[limits.caller]
rates = "{caller}/day"

[limits.many]
rates = "100000/day"

[[rules]]
routes = ["/api/*"]
limits = ["caller"]

[[rules]]
routes = ["/many/*"]
limits = ["many"]
"""


def _cli(admin: Path, *args: str) -> tuple[int, dict[str, object]]:
    """``ratekeeper admin --unix ADMIN ARGS`` in this process (real HTTP on the admin socket)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = admin_main(["--unix", str(admin), *args])
    text = out.getvalue()
    return code, json.loads(text) if text.strip().startswith("{") else {}


_LEAN = re.compile(r"lean decisions: /_ratekeeper/decide on (\S+)")


def _policy(path: Path, caller: int = 5, header: str = "X-API-Key") -> Path:
    path.write_text(POLICY.format(caller=caller, header=header))
    return path


def _lean_address(process: Process) -> tuple[str, int] | str:
    match = _LEAN.search(process.output())
    assert match, process.output()
    where = match[1]
    if where.startswith("unix:"):
        return where[len("unix:") :]
    host, port = where.rsplit(":", 1)
    return host, int(port)


class Raw:
    """One HTTP/1.1 connection, written and read as bytes."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(address)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """One answer: status, headers (names lower-case, without ``date``), body."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {self.buffer!r}")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        headers.pop("date", None)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        self.buffer = rest[length:]
        return status, headers, rest[:length]

    def ask(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        self.send(data)
        return self.read()

    def closed(self, within_s: float) -> bool:
        """Whether the server closes the connection within ``within_s``."""
        self.sock.settimeout(within_s)
        try:
            return self.sock.recv(65536) == b""
        except (TimeoutError, OSError):
            return False


def _decide(
    uri: str, key: str | None = None, *extra: str, path: str = "/_ratekeeper/decide"
) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: ratekeeper", f"X-Original-URI: {uri}"]
    lines += ["X-Original-Method: GET", *extra]
    if key is not None:
        lines.append(f"X-API-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lean")


@pytest.fixture(scope="module")
def gateway(root: Path) -> Iterator[Process]:
    policy = _policy(root / "policy.toml")
    with serve(
        "--config",
        str(policy),
        "--trust-proxy",
        "127.0.0.1",
        "--store",
        f"sqlite:///{root / 'lean.db'}",
        "--admin",
        f"unix:{root / 'admin.sock'}",
        "--decision-endpoint",
        "--decide-listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1",
        cwd=root,
    ) as process:
        yield process
    assert "Traceback" not in process.output()


@pytest.fixture()
def lean(gateway: Process) -> Iterator[Raw]:
    connection = Raw(_lean_address(gateway))
    yield connection
    connection.close()


@pytest.fixture()
def asgi(gateway: Process) -> Iterator[Raw]:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    connection = Raw((host, int(port)))
    yield connection
    connection.close()


def _same(one: tuple[int, dict[str, str], bytes], other: tuple[int, dict[str, str], bytes]) -> None:
    """Equal answers, but for the second that may pass between them (Retry-After and the body's
    seconds)."""
    assert one[0] == other[0]
    assert one[1].keys() == other[1].keys()
    for name, value in one[1].items():
        if name == "retry-after":
            assert abs(int(value) - int(other[1][name])) <= 1
        elif name == "x-ratekeeper-body":
            assert re.sub(r"\d+", "N", value) == re.sub(r"\d+", "N", other[1][name])
        else:
            assert value == other[1][name], name
    digits = re.compile(rb"\d+")
    assert digits.sub(b"N", one[2]) == digits.sub(b"N", other[2])


def test_answers_are_the_asgi_endpoints(lean: Raw, asgi: Raw) -> None:
    # Two keys asked the same sequence, one through each front end, on kept-alive connections.
    deny = "X-Ratekeeper-Deny-Status: 403"
    for uri, extra in [
        ("/api/integration/tracks", ()),
        ("/api/integration/tracks?x=1", (deny,)),
        ("/api/integration/tracks", ()),
        ("/api/integration/tracks", ()),
        ("/api/integration/tracks", (deny,)),
        ("/api/integration/tracks", ()),  # the sixth of 5/day: refused
        ("/api/integration/tracks", (deny,)),  # refused as nginx asks: 403 + the real answer
        ("/api/integration/tracks", ()),  # refused again (the over-limit cache)
        ("/api/%2e%2e/x%2fy", ()),  # dot segments removed, as the upstream reads it
        ("/a%5cb", ()),  # a path servers read in two ways: 400
        ("/a%5cb", (deny,)),
    ]:
        got = lean.ask(_decide(uri, "same-lean", *extra))
        want = asgi.ask(_decide(uri, "same-asgi", *extra))
        _same(got, want)
    assert got[0] == 403 and got[1]["x-ratekeeper-status"] == "400"
    # No API key (401), Traefik's and Envoy's forms, and the report endpoint.
    for request in [
        _decide("/api/integration/tracks"),
        b"GET /_ratekeeper/decide HTTP/1.1\r\nX-Forwarded-Uri: /a\r\nX-API-Key: {key}\r\n\r\n",
        b"GET /_ratekeeper/decide HTTP/1.1\r\nX-Original-URI: /a\r\nX-Forwarded-Uri: /b\r\n\r\n",
        _decide("/", "{key}", path="/_ratekeeper/decide/api/integration/tracks?q=1"),
        _decide("/x", "{key}", path="/_ratekeeper/report"),
        _decide("/x", "{key}", "X-Original-Status: 401", path="/_ratekeeper/report"),
    ]:
        got = lean.ask(request.replace(b"{key}", b"other-lean"))
        _same(got, asgi.ask(request.replace(b"{key}", b"other-asgi")))


def test_a_blocked_key_and_a_reset_reach_the_listener(root: Path, lean: Raw, asgi: Raw) -> None:
    sock = root / "admin.sock"
    for _ in range(5):
        assert lean.ask(_decide("/api/integration/tracks", "to-reset"))[0] == 200
    assert lean.ask(_decide("/api/integration/tracks", "to-reset"))[0] == 429
    assert _cli(sock, "keys", "reset", "to-reset")[0] == 0
    assert lean.ask(_decide("/api/integration/tracks", "to-reset"))[0] == 200
    assert _cli(sock, "block", "key", "to-block", "--for", "1h")[0] == 0
    try:
        got = lean.ask(_decide("/api/integration/tracks", "to-block"))
        assert got[0] == 403 and int(got[1]["retry-after"]) > 3000
        _same(got, asgi.ask(_decide("/api/integration/tracks", "to-block")))
    finally:
        assert _cli(sock, "unblock", "key", "to-block")[0] == 0
    assert lean.ask(_decide("/api/integration/tracks", "to-block"))[0] == 200


def test_many_requests_on_one_connection_and_pipelined(lean: Raw) -> None:
    for i in range(300):
        status, headers, _ = lean.ask(_decide(f"/many/{i}", "keeper"))
        assert status == 200 and headers["x-ratelimit-remaining"] == str(100000 - 1 - i)
    # Pipelined: 40 requests in one write, 40 answers in order.
    lean.send(b"".join(_decide(f"/many/{i}", "piper") for i in range(40)))
    remaining = [int(lean.read()[1]["x-ratelimit-remaining"]) for _ in range(40)]
    assert remaining == list(range(99999, 99999 - 40, -1))


def test_a_limit_is_never_over_admitted(gateway: Process) -> None:
    address = _lean_address(gateway)
    one = Raw(address)
    codes = [one.ask(_decide("/api/integration/tracks", "exact"))[0] for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    one.close()
    # Eight connections at once, three requests each, on a key allowed five.
    results: list[int] = []

    def ask() -> None:
        raw = Raw(address)
        results.extend(raw.ask(_decide("/api/integration/tracks", "crowd"))[0] for _ in range(3))
        raw.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [200] * 5 + [429] * 19


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /_ratekeeper/decide HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /_ratekeeper/decide HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
        (b"GET /_ratekeeper/decide HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
        (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET /_ratekeeper/decide HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    ],
)
def test_hostile_requests_get_400_or_431_and_the_listener_keeps_serving(
    gateway: Process, request_bytes: bytes, status: int
) -> None:
    address = _lean_address(gateway)
    raw = Raw(address)
    got = raw.ask(request_bytes)
    assert got[0] == status and got[1]["connection"] == "close"
    assert raw.closed(5)
    raw.close()
    again = Raw(address)
    assert again.ask(_decide("/many/x", "after-hostile"))[0] == 200
    again.close()


def test_a_request_to_switch_protocols_is_decided_then_closed(gateway: Process) -> None:
    raw = Raw(_lean_address(gateway))
    upgrade = _decide("/many/u", "upgrader", "Connection: upgrade", "Upgrade: websocket")
    assert raw.ask(upgrade)[0] == 200
    assert raw.closed(5)
    raw.close()


def test_an_endless_head_is_cut_and_memory_stays_bounded(gateway: Process) -> None:
    # A head that never ends, sent in pieces: answered 431 past the bound (32 kB) and closed.
    # The close may reach the client as a reset (its later pieces were never read) before it
    # reads the 431; a listener that kept reading would time out here instead.
    raw = Raw(_lean_address(gateway))
    raw.send(b"GET /_ratekeeper/decide HTTP/1.1\r\nX-Drip: ")
    status = None
    with contextlib.suppress(ConnectionError):
        for _ in range(200):
            raw.send(b"a" * 1000)
            time.sleep(0.002)
        status = raw.read()[0]
    assert status in (431, None)
    raw.close()


def test_slow_and_vanishing_clients(gateway: Process) -> None:
    address = _lean_address(gateway)
    # Slowloris: a head begun and never finished is closed after --header-timeout (1 s).
    slow = Raw(address)
    slow.send(b"GET /_ratekeeper/decide HTTP/1.1\r\nX-API-Key: slow")
    started = time.monotonic()
    assert slow.closed(10)
    assert time.monotonic() - started < 8
    slow.close()
    # A client gone mid-request, and one gone right after asking: nothing is left behind.
    for data in (b"GET /_ratekeeper/de", _decide("/many/gone", "gone")):
        gone = Raw(address)
        gone.send(data)
        gone.close()
    fine = Raw(address)
    assert fine.ask(_decide("/many/x", "still-fine"))[0] == 200
    fine.close()


def test_a_reload_reaches_the_listener(root: Path, lean: Raw) -> None:
    sock = root / "admin.sock"
    policy = root / "policy.toml"
    assert lean.ask(_decide("/api/integration/tracks", "reloaded"))[1]["x-ratelimit-limit"] == "5"
    _policy(policy, caller=4)
    try:
        assert _cli(sock, "policy", "reload")[1]["reloaded"]
        assert (
            lean.ask(_decide("/api/integration/tracks", "reloaded"))[1]["x-ratelimit-limit"] == "4"
        )
    finally:
        _policy(policy)
        assert _cli(sock, "policy", "reload")[1]["reloaded"]


def test_a_reload_that_renames_the_key_header_is_refused_on_both_front_ends(
    root: Path, lean: Raw, asgi: Raw
) -> None:
    """Moving the key to another header needs a restart (the servers and the response cache
    chose the headers they read when they started): the reload says so and both front ends
    keep deciding on the running policy."""
    sock = root / "admin.sock"
    _policy(root / "policy.toml", header="X-Caller-Key")
    try:
        code, answer = _cli(sock, "policy", "reload")
        assert code == 0 and not answer["reloaded"]
        assert "x-caller-key" in str(answer["error"]) and "restart" in str(answer["error"])
        for front in (lean, asgi):
            assert front.ask(_decide("/api/integration/tracks", "renamed-header"))[0] == 200
            moved = _decide("/api/integration/tracks", None, "X-Caller-Key: renamed-header")
            assert front.ask(moved)[0] == 401
    finally:
        _policy(root / "policy.toml")
    assert not _cli(sock, "policy", "reload")[1]["reloaded"]


def test_nginx_auth_request_through_a_unix_socket_listener(root: Path) -> None:
    where = root / "unix"
    where.mkdir()
    sock = where / "decide.sock"
    with (
        demo_upstream("musique", cwd=where) as upstream,
        serve(
            "--config",
            str(_policy(where / "policy.toml")),
            "--trust-proxy",
            "127.0.0.1",
            "--store",
            "memory://",
            "--decide-listen",
            f"unix:{sock}",
            cwd=where,
        ) as process,
        nginx_example(where / "nginx", f"unix:{sock}", upstream.url) as nginx,
        httpx.Client(timeout=10) as http,
    ):
        assert _lean_address(process) == str(sock)
        headers = {"X-API-Key": "through-nginx"}
        for remaining in range(4, -1, -1):
            r = http.get(nginx + "/api/integration/tracks", headers=headers)
            assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == str(remaining)
            assert r.json()  # the upstream's answer
        refused = http.get(nginx + "/api/integration/tracks", headers=headers)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert http.get(nginx + "/api/integration/tracks").status_code == 401
    assert not sock.exists()
    assert "Traceback" not in process.output()


def test_several_workers_share_a_tcp_listener(root: Path) -> None:
    where = root / "workers"
    where.mkdir()
    with serve(
        "--config",
        str(_policy(where / "policy.toml")),
        "--store",
        f"sqlite:///{where / 'w.db'}",
        "--workers",
        "2",
        cwd=where,
        # As every option, from the environment too.
        env={"RATEKEEPER_DECIDE_LISTEN": "127.0.0.1:0"},
    ) as process:
        address = _lean_address(process)
        codes = []
        for _ in range(10):
            raw = Raw(address)
            codes.append(raw.ask(_decide("/api/integration/tracks", "shared"))[0])
            raw.close()
        assert codes == [200] * 5 + [429] * 5
    assert "Traceback" not in process.output()


def test_a_unix_listener_with_several_workers_is_refused(root: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="--workers 1"),
        serve(
            "--config",
            str(_policy(root / "policy-w.toml")),
            "--workers",
            "2",
            "--decide-listen",
            f"unix:{root / 'w.sock'}",
            cwd=root,
        ),
    ):
        pass


def test_on_redis_decisions_wait_in_tasks_and_answers_keep_their_order(root: Path) -> None:
    # Redis answers over the network: each decision is a task, pipelined requests queue.
    where = root / "redis"
    where.mkdir()
    with (
        redis_server(where / "redis") as redis,
        serve(
            "--config",
            str(_policy(where / "policy.toml")),
            "--store",
            redis.url,
            "--decide-listen",
            "127.0.0.1:0",
            cwd=where,
        ) as process,
    ):
        address = _lean_address(process)
        raw = Raw(address)
        raw.send(b"".join(_decide(f"/many/{i}", "queued") for i in range(50)))
        remaining = [int(raw.read()[1]["x-ratelimit-remaining"]) for _ in range(50)]
        assert remaining == list(range(99999, 99999 - 50, -1))
        # The fifth request of eight connections at once is the last one admitted.
        results: list[int] = []

        def ask() -> None:
            one = Raw(address)
            results.extend(
                one.ask(_decide("/api/integration/tracks", "redis-crowd"))[0] for _ in range(2)
            )
            one.close()

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [200] * 5 + [429] * 11
        # A client gone while its decision waits on Redis leaves the listener serving.
        gone = Raw(address)
        gone.send(b"".join(_decide(f"/many/g{i}", "gone") for i in range(20)))
        gone.close()
        assert raw.ask(_decide("/many/after", "queued"))[0] == 200
        raw.close()
    assert "Traceback" not in process.output()
