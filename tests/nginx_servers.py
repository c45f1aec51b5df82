"""A real nginx running the shipped example (``examples/nginx/ratekeeper.conf``) on free loopback
ports, in front of a ``ratekeeper serve`` and an upstream. No tests here; the helper is
imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway_servers import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx" / "ratekeeper.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


@contextmanager
def nginx_example(root: Path, ratekeeper_url: str, upstream_url: str) -> Iterator[str]:
    """nginx with the example's server block, its ports replaced; yields nginx's URL. Skips the
    test when nginx is not installed."""
    if NGINX is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs Debian's nginx)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = EXAMPLE.read_text()
    for default, actual in (
        ("127.0.0.1:8000", f"127.0.0.1:{port}"),
        # A Unix socket (``unix:PATH``) as nginx names it, else a loopback port.
        (
            "127.0.0.1:8080",
            ratekeeper_url
            if ratekeeper_url.startswith("unix:")
            else f"127.0.0.1:{_port(ratekeeper_url)}",
        ),
        ("127.0.0.1:9000", f"127.0.0.1:{_port(upstream_url)}"),
    ):
        assert default in site
        site = site.replace(default, actual)
    (root / "ratekeeper.conf").write_text(site)
    temp = "".join(
        f"    {kind}_temp_path {root / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n    access_log off;\n{temp}    include {root / 'ratekeeper.conf'};\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (root / "error.log").read_text() if (root / "error.log").exists() else ""
                raise RuntimeError(
                    f"nginx did not start: {proc.stdout and proc.stdout.read()}{log}"
                ) from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
