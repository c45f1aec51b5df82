"""The gateway under load, in one run against the same small upstream, with wrk on loopback.

Rows (requests per second, wrk ``-t1 -c32``; every server is one process on 2 shared cores, and
every Python one runs on uvicorn with uvloop + httptools when installed, as ``serve`` does):

- upstream direct: wrk straight to the small upstream (a bare uvicorn app, constant JSON).
- ratekeeper serve, proxy path: allowed requests through ``ratekeeper serve --upstream``.
- naive Starlette + httpx.AsyncClient proxy (and the same with aiohttp): the usual few-line
  streaming proxy, no rate limiting at all, to show what the upstream client costs.
- ratekeeper serve, rejected path: every request refused (429 with headers and JSON body).
- bare uvicorn app answering a constant: the floor for any Python answer on this machine.
- ratekeeper's decision endpoint asked directly (refusing, as nginx asks it).
- ``ratekeeper serve --workers 2`` refusing, beside the one worker above: on the same shared
  store (SQLite by default), how the refusal path scales across the two cores.
- the constant 429 app on uvicorn with 2 workers: the same run's ceiling for the workers ratio
  (wrk and the workers share the 2 cores).
- nginx limit_req (rejecting), nginx + ratekeeper's decision endpoint (rejecting), and both
  allowing and forwarding to the upstream, with nginx as the proxy (``examples/nginx``).
- nginx + a bare uvicorn app that allows every decision -> upstream: the same run's ceiling
  for any Python decision endpoint behind nginx (the nginx allowed ratio's floor).
- the lean decision listener (``serve --decide-listen``, asyncio + httptools without uvicorn or
  ASGI): asked directly while refusing (beside the constant 429 app), and behind nginx allowing
  and forwarding to the upstream (beside nginx alone and the constant-200 ceiling); and the
  same listener answering a constant 200 without deciding, behind nginx: the ceiling of any
  decision served by that stack.

Every row also shows the cores (CPU seconds per second) that wrk and each server took, read
from /proc: what share of the machine the floor rows leave to ratekeeper.

Each target of issue 17 is a ratio of two rows of the same run, printed below the table with its
floor: the decision endpoint refusing / the constant 429 app (>= 0.6), nginx + the decision
endpoint allowing / nginx proxying alone (>= 0.5), two workers / one on the refusal path (>= 1.7).

    .venv/bin/python bench/gateway.py              # about 2 minutes
    .venv/bin/python bench/gateway.py --quick      # about 30 s: 1 s per row
    .venv/bin/python bench/gateway.py --no-nginx   # without the nginx rows
    .venv/bin/python bench/gateway.py --store memory://   # serve's store (one worker rows)

Needs wrk (Debian: ``apt-get install wrk``) and, for the nginx rows, Debian's nginx.
"""

# The role functions run in child processes and import what their role needs.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nginx" / "ratekeeper.conf"
PYTHON = sys.executable
KEY = "bench-key"

POLICY = """
body = "musique"
apply = ["api"]

[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "ip"

[limits.api]
rates = "1000000000/minute"

[limits.tiny]
rates = "1/hour"

[[rules]]
routes = ["/reject", "/reject/*"]
limits = ["tiny"]
"""

UPSTREAM_BODY = b'{"id":"trk_1","title":"Track 1","artist":"The Windows","duration_s":181}'


# --- the servers, each run as `python bench/gateway.py --role NAME PORT [UPSTREAM]` -----------


def _uvicorn(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )


def role_upstream(port: int) -> None:
    """The small upstream: constant JSON from a raw ASGI app."""
    headers = [(b"content-type", b"application/json")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": UPSTREAM_BODY})

    _uvicorn(app, port)


_CONSTANT_BODY = (
    b'{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Please retry '
    b'after 3600 seconds.","type":"rate_limit_error","retryAfter":3600}}'
)
_CONSTANT_HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-ratelimit-limit", b"1"),
    (b"x-ratelimit-remaining", b"0"),
    (b"x-ratelimit-reset", b"1800000000"),
    (b"retry-after", b"3600"),
]


async def constant_app(scope: Any, receive: Any, send: Any) -> None:
    """A constant 429, the same size as ratekeeper's refusal (module-level: workers import it)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 429, "headers": _CONSTANT_HEADERS})
    await send({"type": "http.response.body", "body": _CONSTANT_BODY})


def role_constant(port: int) -> None:
    """A bare uvicorn app answering a constant 429, the same size as ratekeeper's refusal."""
    _uvicorn(constant_app, port)


_ALLOW_HEADERS = [
    (b"x-ratelimit-limit", b"1000000000"),
    (b"x-ratelimit-remaining", b"999999999"),
    (b"x-ratelimit-reset", b"1800000000"),
    (b"content-length", b"0"),
]


def role_allow(port: int) -> None:
    """A bare uvicorn app that allows every decision (200, the headers /decide sends): behind
    nginx, the ceiling of any Python decision endpoint on this machine."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": _ALLOW_HEADERS})
        await send({"type": "http.response.body", "body": b""})

    _uvicorn(app, port)


def role_lean_allow(port: int) -> None:
    """The lean listener's stack (``serve --decide-listen``: asyncio + httptools) answering
    every decision 200 without deciding: behind nginx, the ceiling of a decision served by it."""
    import asyncio
    import socket as sockets
    from types import SimpleNamespace

    import uvloop

    from ratekeeper.gateway.decide_listener import DecideListener

    verdict = (200, _ALLOW_HEADERS, b"")

    async def allowed() -> Any:
        return verdict

    class Constant(DecideListener):
        def decide(self, scope: Any) -> Any:
            return allowed()

    async def main() -> None:
        sock = sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM, sockets.IPPROTO_TCP)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        # The listener's own stack alone: its decide() answers without asking an enforcer.
        no_enforcer = SimpleNamespace(decides_on_loop=True, header_names=frozenset())
        await Constant(no_enforcer).start(sock)  # type: ignore[arg-type]
        await asyncio.Future()

    uvloop.run(main())


def role_constant2(port: int) -> None:
    """The constant 429 app on uvicorn with 2 worker processes (the workers ratio's floor)."""
    import uvicorn

    uvicorn.run(
        "gateway:constant_app",
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        workers=2,
        log_level="warning",
        access_log=False,
    )


def role_naive_httpx(port: int, upstream: str) -> None:
    """The usual Starlette + httpx.AsyncClient streaming proxy (no limits)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    http = httpx.AsyncClient(base_url=upstream, limits=limits)

    async def proxy(request: Request) -> StreamingResponse:
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
        outgoing = http.build_request(
            request.method, request.url.path, headers=headers, content=request.stream()
        )
        response = await http.send(outgoing, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=response.headers,
            background=BackgroundTask(response.aclose),
        )

    _uvicorn(Starlette(routes=[Route("/{path:path}", proxy)]), port)


def role_naive_aiohttp(port: int, upstream: str) -> None:
    """The same proxy with aiohttp as the upstream client."""
    import aiohttp
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    sessions: list[aiohttp.ClientSession] = []

    async def proxy(request: Request) -> StreamingResponse:
        if not sessions:
            sessions.append(aiohttp.ClientSession(auto_decompress=False))
        headers = [(k, v) for k, v in request.headers.items() if k != "host"]
        response = await sessions[0].request(
            request.method, upstream + request.url.path, headers=headers
        )
        skip = {"transfer-encoding", "connection"}
        return StreamingResponse(
            response.content.iter_any(),
            status_code=response.status,
            headers={k: v for k, v in response.headers.items() if k.lower() not in skip},
            background=BackgroundTask(response.release),
        )

    _uvicorn(Starlette(routes=[Route("/{path:path}", proxy)]), port)


ROLES = {
    "upstream": role_upstream,
    "constant": role_constant,
    "constant2": role_constant2,
    "allow": role_allow,
    "lean-allow": role_lean_allow,
    "naive-httpx": role_naive_httpx,
    "naive-aiohttp": role_naive_aiohttp,
}


# --- running them ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


# Server URL -> its process id, so that each row can say how much CPU each side took.
PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children, now (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


@contextmanager
def process(args: list[str], port: int, what: str, cwd: Path) -> Iterator[str]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, what)
        PIDS[f"http://127.0.0.1:{port}"] = proc.pid
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def role(name: str, cwd: Path, *extra: str) -> Any:
    port = free_port()
    return process([PYTHON, __file__, "--role", name, str(port), *extra], port, name, cwd)


def ratekeeper(
    cwd: Path, upstream: str, workers: int = 1, store: str = "", lean: int | None = None
) -> Any:
    """``ratekeeper serve``; ``lean``: also its lean decision listener on that port."""
    port = free_port()
    args = [PYTHON, "-m", "ratekeeper.cli", "serve", "--config", str(cwd / "policy.toml")]
    args += ["--upstream", upstream, "--port", str(port), "--trust-proxy", "127.0.0.1"]
    args += ["--store", store or f"sqlite:///{cwd / 'bench.db'}", "--workers", str(workers)]
    if lean is not None:
        args += ["--decide-listen", f"127.0.0.1:{lean}"]
    return process(args, port, "ratekeeper serve", cwd)


@contextmanager
def nginx(cwd: Path, decide: str, upstream: str) -> Iterator[tuple[str, str]]:
    """nginx with two servers: the shipped example (ratekeeper decides) and limit_req."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with_decide, with_limit_req = free_port(), free_port()
    site = EXAMPLE.read_text()
    for default, actual in (
        ("127.0.0.1:8000", f"127.0.0.1:{with_decide}"),
        ("127.0.0.1:8080", decide.removeprefix("http://")),
        ("127.0.0.1:9000", upstream.removeprefix("http://")),
    ):
        site = site.replace(default, actual)
    site += f"""
limit_req_zone $binary_remote_addr zone=bench:1m rate=1r/m;
server {{
    listen 127.0.0.1:{with_limit_req};
    location /reject {{
        limit_req zone=bench;
        limit_req_status 429;
        proxy_pass http://ratekeeper_api;
    }}
    location / {{
        proxy_pass http://ratekeeper_api;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""
    (cwd / "site.conf").write_text(site)
    temp = "".join(
        f"  {kind}_temp_path {cwd / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (cwd / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {cwd / 'nginx.pid'};\n"
        f"error_log {cwd / 'error.log'} error;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n{temp}  include {cwd / 'site.conf'};\n}}\n"
    )
    args = [binary, "-p", str(cwd), "-e", str(cwd / "error.log"), "-c", str(cwd / "nginx.conf")]
    with process(args, with_limit_req, "nginx", cwd):
        _wait_port(with_decide, None, "nginx")
        yield f"http://127.0.0.1:{with_decide}", f"http://127.0.0.1:{with_limit_req}"


def wrk(
    url: str,
    seconds: int,
    connections: int,
    headers: tuple[str, ...] = (),
    watch: tuple[int, ...] = (),
) -> tuple[float, float, list[float]]:
    """Requests per second over ``seconds`` (after a 1-second warm-up), the cores wrk took, and
    the cores each process of ``watch`` (with its children) took meanwhile."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"X-API-Key: {KEY}"]
    for header in headers:
        args += ["-H", header]
    args.append(url)
    subprocess.run([*args[:3], "-d1s", *args[4:]], capture_output=True, check=True)  # warm up
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    served = [cpu_seconds(pid) for pid in watch]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    served = [(cpu_seconds(pid) - was) / seconds for pid, was in zip(watch, served, strict=True)]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output: {out}")
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(match[1]), used / seconds, served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s per row")
    parser.add_argument("--seconds", type=int, default=5, help="per row (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument(
        "--store", default="", help="serve's store for the one-worker rows (default: SQLite)"
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        name, port, *extra = args.role
        ROLES[name](int(port), *extra)
        return 0
    if shutil.which("wrk") is None:
        print("bench/gateway.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    seconds = 1 if args.quick else args.seconds
    use_nginx = not args.no_nginx and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())
    rows: list[tuple[str, str, float, str]] = []
    names: dict[str, str] = {}

    def measure(
        group: str,
        label: str,
        url: str,
        headers: tuple[str, ...] = (),
        also: tuple[str, ...] = (),
    ) -> float:
        """One row; ``also``: the servers behind the one asked, whose CPU is shown too."""
        bases = [re.sub(r"^(http://[^/]+).*", r"\1", u) for u in (url, *also)]
        servers = list(dict.fromkeys(PIDS[b] for b in bases if b in PIDS))
        rate, by_wrk, cores = wrk(url, seconds, args.connections, headers, tuple(servers))
        who = {pid: names.get(base, "server") for base, pid in PIDS.items()}
        pairs = zip(servers, cores, strict=True)
        shares = ", ".join(f"{who[pid]} {used:.2f}" for pid, used in pairs)
        cpu = f"wrk {by_wrk:.2f}" + (f", {shares}" if shares else "")
        rows.append((group, label, rate, cpu))
        print(f"  {label:<52} {rate:>9.0f} req/s  cores: {cpu}", file=sys.stderr, flush=True)
        return rate

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        cwd = Path(tmp)
        (cwd / "policy.toml").write_text(POLICY)
        upstream = stack.enter_context(role("upstream", cwd))
        lean_port = free_port()
        gateway = stack.enter_context(ratekeeper(cwd, upstream, store=args.store, lean=lean_port))
        # The lean listener (serve --decide-listen) of the same process: its CPU is gateway's.
        lean = f"http://127.0.0.1:{lean_port}"
        PIDS[lean] = PIDS[gateway]
        two_workers = stack.enter_context(ratekeeper(cwd, upstream, workers=2))
        one_worker = (
            stack.enter_context(ratekeeper(cwd, upstream, workers=1)) if args.store else gateway
        )
        naive_httpx = stack.enter_context(role("naive-httpx", cwd, upstream))
        naive_aiohttp = stack.enter_context(role("naive-aiohttp", cwd, upstream))
        constant = stack.enter_context(role("constant", cwd))
        constant2 = stack.enter_context(role("constant2", cwd))
        names.update({upstream: "upstream", gateway: "ratekeeper", two_workers: "ratekeeper"})
        names[lean] = "ratekeeper"
        names.update({one_worker: "ratekeeper", constant: "app", constant2: "app"})
        print(f"measuring (wrk -t1 -c{args.connections}, {seconds}s per row)", file=sys.stderr)
        direct = measure("proxy", "upstream direct (bare uvicorn, constant JSON)", upstream + "/t")
        store = "memory" if args.store.startswith("memory") else "SQLite"
        proxied = measure(
            "proxy", f"ratekeeper serve --upstream (allowed, {store})", gateway + "/t"
        )
        naive = measure("proxy", "naive Starlette + httpx.AsyncClient proxy", naive_httpx + "/t")
        measure("proxy", "naive Starlette + aiohttp proxy", naive_aiohttp + "/t")
        bare = measure("reject", "bare uvicorn app answering a constant 429", constant + "/t")
        rejected = measure(
            "reject", "ratekeeper serve, rejected (429 + headers + body)", gateway + "/reject"
        )
        endpoint = measure(
            "reject",
            "ratekeeper decision endpoint alone, rejected (as nginx asks)",
            gateway + "/_ratekeeper/decide",
            ("X-Original-URI: /reject", "X-Original-Method: GET", "X-Ratekeeper-Deny-Status: 403"),
        )
        lean_refused = measure(
            "reject",
            "ratekeeper lean listener (--decide-listen) alone, rejected",
            lean + "/_ratekeeper/decide",
            ("X-Original-URI: /reject", "X-Original-Method: GET", "X-Ratekeeper-Deny-Status: 403"),
        )
        one = rejected
        if one_worker is not gateway:
            one = measure(
                "workers", "ratekeeper serve, 1 worker, SQLite, rejected", one_worker + "/reject"
            )
        two = measure(
            "workers", "ratekeeper serve --workers 2, SQLite, rejected", two_workers + "/reject"
        )
        bare2 = measure("workers", "bare constant 429 app, uvicorn --workers 2", constant2 + "/t")
        measure(
            "reject",
            "ratekeeper decision endpoint alone, allowed",
            gateway + "/_ratekeeper/decide",
            ("X-Original-URI: /t", "X-Original-Method: GET", "X-Ratekeeper-Deny-Status: 403"),
        )
        ratios = [
            ("ratekeeper proxy / naive httpx proxy", proxied / naive, "target >= 4x"),
            ("ratekeeper proxy / upstream direct", proxied / direct, ""),
            ("ratekeeper rejected / bare constant app", rejected / bare, "target >= 0.5"),
            (
                "decision endpoint rejected / bare constant 429 app",
                endpoint / bare,
                "target >= 0.6",
            ),
            ("lean listener rejected / bare constant 429 app", lean_refused / bare, ""),
            ("serve --workers 2 / 1 worker, rejected (shared SQLite)", two / one, "target >= 1.7"),
            ("floor: constant app 2 workers / 1 worker (same run)", bare2 / bare, "ceiling"),
        ]
        if use_nginx:
            with_decide, with_limit_req = stack.enter_context(nginx(cwd, gateway, upstream))
            PIDS[with_decide] = PIDS[with_limit_req]
            names.update({with_decide: "nginx", with_limit_req: "nginx"})
            behind = (gateway, upstream)
            limit_req = measure("nginx", "nginx limit_req, rejected", with_limit_req + "/reject")
            decided = measure(
                "nginx", "nginx + ratekeeper decide, rejected", with_decide + "/reject", (), behind
            )
            plain = measure(
                "nginx", "nginx -> upstream, no limiter", with_limit_req + "/t", (), behind
            )
            allowed = measure(
                "nginx", "nginx + ratekeeper decide -> upstream", with_decide + "/t", (), behind
            )
            (cwd / "lean").mkdir()
            with_lean, other = stack.enter_context(nginx(cwd / "lean", lean, upstream))
            PIDS[with_lean] = PIDS[other]
            names.update({with_lean: "nginx"})
            lean_allowed = measure(
                "nginx",
                "nginx + ratekeeper lean listener -> upstream",
                with_lean + "/t",
                (),
                behind,
            )
            allow = stack.enter_context(role("allow", cwd))
            (cwd / "floor").mkdir()
            with_allow, other = stack.enter_context(nginx(cwd / "floor", allow, upstream))
            PIDS[with_allow] = PIDS[other]
            names.update({with_allow: "nginx", allow: "app"})
            floor = measure(
                "nginx",
                "nginx + constant-200 decision app -> upstream",
                with_allow + "/t",
                (),
                (allow, upstream),
            )
            lean_allow = stack.enter_context(role("lean-allow", cwd))
            (cwd / "lean-floor").mkdir()
            with_lean_allow, other = stack.enter_context(
                nginx(cwd / "lean-floor", lean_allow, upstream)
            )
            PIDS[with_lean_allow] = PIDS[other]
            names.update({with_lean_allow: "nginx", lean_allow: "app"})
            lean_floor = measure(
                "nginx",
                "nginx + lean listener answering a constant 200 -> upstream",
                with_lean_allow + "/t",
                (),
                (lean_allow, upstream),
            )
            ratios += [
                ("nginx+decide rejected / nginx limit_req", decided / limit_req, ""),
                ("nginx+decide allowed / nginx alone", allowed / plain, "target >= 0.5"),
                ("floor: nginx+constant-200 app / nginx alone", floor / plain, "ceiling"),
                ("nginx+decide allowed / nginx+constant-200 app", allowed / floor, ""),
                (
                    "nginx+lean listener allowed / nginx alone",
                    lean_allowed / plain,
                    "target >= 0.5",
                ),
                ("nginx+lean listener allowed / nginx+constant-200 app", lean_allowed / floor, ""),
                (
                    "floor: nginx+lean listener constant 200 / nginx alone",
                    lean_floor / plain,
                    "ceiling",
                ),
                (
                    "nginx+lean listener allowed / its constant-200 ceiling",
                    lean_allowed / lean_floor,
                    "",
                ),
            ]
    print("\n| row | req/s | cores used (wrk, servers) |\n|---|---:|---|")
    for _, label, rate, cpu in rows:
        print(f"| {label} | {rate:,.0f} | {cpu} |")
    print("\n| ratio | value | |\n|---|---:|---|")
    for label, value, note in ratios:
        print(f"| {label} | {value:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
