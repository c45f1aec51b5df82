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
- nginx limit_req (rejecting), nginx + ratekeeper's decision endpoint (rejecting), and both
  allowing and forwarding to the upstream, with nginx as the proxy (``examples/nginx``).

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


def role_constant(port: int) -> None:
    """A bare uvicorn app answering a constant 429, the same size as ratekeeper's refusal."""
    body = (
        b'{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Please retry '
        b'after 3600 seconds.","type":"rate_limit_error","retryAfter":3600}}'
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"x-ratelimit-limit", b"1"),
        (b"x-ratelimit-remaining", b"0"),
        (b"x-ratelimit-reset", b"1800000000"),
        (b"retry-after", b"3600"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    _uvicorn(app, port)


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


@contextmanager
def process(args: list[str], port: int, what: str, cwd: Path) -> Iterator[str]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, what)
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


def ratekeeper(cwd: Path, upstream: str, workers: int = 1, store: str = "") -> Any:
    port = free_port()
    args = [PYTHON, "-m", "ratekeeper.cli", "serve", "--config", str(cwd / "policy.toml")]
    args += ["--upstream", upstream, "--port", str(port), "--trust-proxy", "127.0.0.1"]
    args += ["--store", store or f"sqlite:///{cwd / 'bench.db'}", "--workers", str(workers)]
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


def wrk(url: str, seconds: int, connections: int, headers: tuple[str, ...] = ()) -> float:
    """Requests per second over ``seconds``, after a 1-second warm-up."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"X-API-Key: {KEY}"]
    for header in headers:
        args += ["-H", header]
    args.append(url)
    subprocess.run([*args[:3], "-d1s", *args[4:]], capture_output=True, check=True)  # warm up
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output: {out}")
    return float(match[1])


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
    rows: list[tuple[str, str, float]] = []

    def measure(group: str, label: str, url: str, headers: tuple[str, ...] = ()) -> float:
        rate = wrk(url, seconds, args.connections, headers)
        rows.append((group, label, rate))
        print(f"  {label:<52} {rate:>9.0f} req/s", file=sys.stderr, flush=True)
        return rate

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        cwd = Path(tmp)
        (cwd / "policy.toml").write_text(POLICY)
        upstream = stack.enter_context(role("upstream", cwd))
        gateway = stack.enter_context(ratekeeper(cwd, upstream, store=args.store))
        two_workers = stack.enter_context(ratekeeper(cwd, upstream, workers=2))
        one_worker = (
            stack.enter_context(ratekeeper(cwd, upstream, workers=1)) if args.store else gateway
        )
        naive_httpx = stack.enter_context(role("naive-httpx", cwd, upstream))
        naive_aiohttp = stack.enter_context(role("naive-aiohttp", cwd, upstream))
        constant = stack.enter_context(role("constant", cwd))
        print(f"measuring (wrk -t1 -c{args.connections}, {seconds}s per row)", file=sys.stderr)
        direct = measure("proxy", "upstream direct (bare uvicorn, constant JSON)", upstream + "/t")
        proxied = measure("proxy", "ratekeeper serve --upstream (allowed, SQLite)", gateway + "/t")
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
        one = rejected
        if one_worker is not gateway:
            one = measure(
                "workers", "ratekeeper serve, 1 worker, SQLite, rejected", one_worker + "/reject"
            )
        two = measure(
            "workers", "ratekeeper serve --workers 2, SQLite, rejected", two_workers + "/reject"
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
            ("serve --workers 2 / 1 worker, rejected (shared SQLite)", two / one, "target >= 1.7"),
        ]
        if use_nginx:
            with_decide, with_limit_req = stack.enter_context(nginx(cwd, gateway, upstream))
            limit_req = measure("nginx", "nginx limit_req, rejected", with_limit_req + "/reject")
            decided = measure(
                "nginx", "nginx + ratekeeper decide, rejected", with_decide + "/reject"
            )
            plain = measure("nginx", "nginx -> upstream, no limiter", with_limit_req + "/t")
            allowed = measure("nginx", "nginx + ratekeeper decide -> upstream", with_decide + "/t")
            ratios += [
                ("nginx+decide rejected / nginx limit_req", decided / limit_req, ""),
                ("nginx+decide allowed / nginx alone", allowed / plain, "target >= 0.5"),
            ]
    print("\n| row | req/s |\n|---|---:|")
    for _, label, rate in rows:
        print(f"| {label} | {rate:,.0f} |")
    print("\n| ratio | value | |\n|---|---:|---|")
    for label, value, note in ratios:
        print(f"| {label} | {value:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
