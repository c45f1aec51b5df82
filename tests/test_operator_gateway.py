"""The operator's side against real ``ratekeeper serve`` processes: the admin listener and its
token, the CLI, policy reload (SIGHUP, --watch, broken files, under load, several workers),
the registry shared by two instances over Redis, environment configuration, JSON logs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from tests.gateway_servers import Process, client, free_port, serve
from tests.redis_servers import redis_server

from ratekeeper.gateway.admin.cli import admin_main

POLICY = """
body = "musique"
apply = ["api"]
[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "reject"
[limits.api]
rates = "{minute}/minute; {day}/day"
[plans.enterprise]
api = "500/minute; 10000/day"
[lockout]
failures = 2
window = "1h"
duration = "1h"
[keys]
unknown = "{unknown}"
[[keys.known]]
key = "partner-key"
label = "Partner"
"""


def _policy(path: Path, minute: int = 100, unknown: str = "refuse", day: int = 1000) -> Path:
    path.write_text(POLICY.format(minute=minute, unknown=unknown, day=day))
    return path


def _cli(socket_path: Path, *args: str, stdin: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    """``ratekeeper admin --unix SOCKET ARGS``: in a subprocess when it reads standard input
    (the real entry point), else in process (real HTTP all the same, without an interpreter
    start per call)."""
    argv = ["--unix", str(socket_path), *args]
    if stdin is not None:
        done = subprocess.run(
            [sys.executable, "-m", "ratekeeper.cli", "admin", *argv],
            input=stdin,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        out_buffer, err_buffer = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_buffer), contextlib.redirect_stderr(err_buffer):
            code = admin_main(argv)
        out, err = out_buffer.getvalue(), err_buffer.getvalue()
    return code, json.loads(out) if out.strip().startswith("{") else {"err": err}


def _until(check: Callable[[], bool], timeout_s: float = 30.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return time.monotonic() - started


def _get(http: httpx.Client, url: str, key: str | None) -> httpx.Response:
    return http.get(url + "/api/integration/tracks", headers={"X-API-Key": key} if key else {})


def test_the_cli_operates_a_running_gateway_on_sqlite(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    config = _policy(tmp_path / "policy.toml", minute=5)
    with serve("--config", str(config), "--admin", f"unix:{sock}", cwd=tmp_path) as gw:
        url = gw.url
        with client() as http:
            # Unknown keys are refused in the API's body format; a known one passes.
            refused = _get(http, url, "made-up")
            assert (
                refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_api_key"
            )
            assert _get(http, url, "partner-key").status_code == 200
            # Added at run time (the key is hashed by the CLI, read from stdin), on a plan.
            code, added = _cli(sock, "keys", "add", "-", "--plan", "enterprise", stdin="new-key\n")
            assert code == 0 and added["key"]["plan"] == "enterprise"
            assert "new-key" not in json.dumps(added)
            _until(lambda: _get(http, url, "new-key").status_code == 200)
            for _ in range(5):
                _get(http, url, "partner-key")
            assert _get(http, url, "partner-key").status_code == 429
            code, shown = _cli(sock, "keys", "show", "partner-key")
            minute = next(x for x in shown["limits"] if x["window"] == "minute")
            assert (minute["used"], minute["remaining"]) == (5, 0)
            code, near = _cli(sock, "near", "--top", "1")
            assert near["limits"]["api/minute"][0]["label"] == "Partner"
            assert _cli(sock, "keys", "reset", "partner-key")[0] == 0
            assert _get(http, url, "partner-key").status_code == 200
            # Block a key for a while, then lift it.
            code, blocked = _cli(sock, "block", "key", "partner-key", "--for", "1h")
            assert code == 0 and blocked["block"]["until"] > time.time() + 3000
            answer = _get(http, url, "partner-key")
            assert answer.status_code == 403 and int(answer.headers["Retry-After"]) > 3000
            assert _cli(sock, "unblock", "key", "partner-key")[0] == 0
            assert _get(http, url, "partner-key").status_code == 200
            assert _cli(sock, "unblock", "key", "partner-key")[0] == 1
            # Bad input is refused with what was expected.
            code, bad = _cli(sock, "keys", "add", "x", "--plan", "platinum")
            assert code == 1 and "enterprise" in bad["err"]
            # The admin API is not on the traffic port.
            assert http.get(url + "/admin/keys").status_code in (401, 404)
            # Reload through the admin API: nothing new, then a lower limit, then a broken file.
            assert _cli(sock, "policy", "reload")[1] == {
                "reloaded": False,
                "generation": 1,
                "error": None,
            }
            _policy(config, minute=4)
            assert _cli(sock, "policy", "reload")[1]["reloaded"]
            assert _get(http, url, "partner-key").headers["X-RateLimit-Limit"] == "4"
            config.write_text("[limits.api]\nrates = 'fast'\n")
            code, broken = _cli(sock, "policy", "reload")
            assert code == 0 and not broken["reloaded"] and "limits.api.rates" in broken["error"]
            assert _get(http, url, "partner-key").headers["X-RateLimit-Limit"] == "4"
        lines = [json.loads(x) for x in gw.output().splitlines() if x.startswith("{")]
        assert not lines  # text logs by default
        assert "refused status=401" in gw.output()
        assert "made-up" not in gw.output() and "new-key" not in gw.output()


def test_lockouts_are_lifted_by_key(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    config = _policy(tmp_path / "policy.toml", unknown="own")
    with serve("--config", str(config), "--admin", f"unix:{sock}", cwd=tmp_path) as gw:
        login = gw.url + "/api/v1/auth/login"
        wrong = {"email": "demo@beatpass.example", "password": "guess"}
        with client() as http:
            for _ in range(2):
                assert http.post(login, json=wrong, headers={"X-API-Key": "k1"}).status_code == 401
            assert http.post(login, json=wrong, headers={"X-API-Key": "k1"}).status_code == 429
            shown = _cli(sock, "keys", "show", "k1")[1]
            assert shown["lockout"]["locked"] and shown["lockout"]["failures"] == 2
            assert _cli(sock, "lockout", "lift", "k1")[0] == 0
            shown = _cli(sock, "keys", "show", "k1")[1]
            assert not shown["lockout"]["locked"] and shown["lockout"]["failures"] == 0
            assert http.post(login, json=wrong, headers={"X-API-Key": "k1"}).status_code == 401


def test_an_admin_listener_off_loopback_needs_a_token(tmp_path: Path) -> None:
    config = _policy(tmp_path / "policy.toml")
    port = free_port()
    admin_any = ["--port", "0", "--admin", f"0.0.0.0:{port}"]
    env = {k: v for k, v in os.environ.items() if k != "RATEKEEPER_ADMIN_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "ratekeeper.cli", "serve", "--config", str(config), *admin_any],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2 and "RATEKEEPER_ADMIN_TOKEN" in done.stderr
    token = {"RATEKEEPER_ADMIN_TOKEN": "s3cret-token"}
    with serve("--config", str(config), "--admin", f"0.0.0.0:{port}", cwd=tmp_path, env=token):
        admin = f"http://127.0.0.1:{port}"
        assert httpx.get(admin + "/admin/keys").status_code == 401
        wrong = httpx.get(admin + "/admin/keys", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = httpx.get(admin + "/admin/keys", headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200 and good.json()["unknown"] == "refuse"
        assert httpx.get(admin + "/healthz").status_code == 200
        assert httpx.get(admin + "/metrics").status_code == 200


def _hammer(url: str, key: str, stop: threading.Event, seen: list[tuple[int, str]]) -> None:
    # A connection per request, so the kernel hands requests to every worker.
    headers = {"X-API-Key": key, "Connection": "close"}
    with client() as http:
        while not stop.is_set():
            try:
                r = http.get(url + "/api/integration/tracks", headers=headers)
            except httpx.HTTPError as exc:
                seen.append((0, type(exc).__name__))
                continue
            seen.append((r.status_code, r.headers.get("X-RateLimit-Limit", "")))


def test_reload_under_load_keeps_counts_and_reaches_every_worker(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    config = _policy(tmp_path / "policy.toml", minute=100_000, day=10_000_000)
    with serve(
        "--config", str(config), "--admin", f"unix:{sock}", "--workers", "2", cwd=tmp_path
    ) as gw:
        stop = threading.Event()
        seen: list[tuple[int, str]] = []
        threads = [
            threading.Thread(target=_hammer, args=(gw.url, "partner-key", stop, seen))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        _until(lambda: len(seen) > 50)
        # A broken file is refused, logged, and the running policy stays.
        config.write_text("this is [not toml")
        os.kill(gw.proc.pid, signal.SIGHUP)
        _until(lambda: "policy reload refused" in gw.output())
        _policy(config, minute=80_000, day=10_000_000)
        before = len(seen)
        os.kill(gw.proc.pid, signal.SIGHUP)
        waited = _until(
            lambda: all(limit == "80000" for _, limit in seen[-20:]) and len(seen) > before + 20
        )
        stop.set()
        for thread in threads:
            thread.join()
        # Includes the 20 answers that prove it under load; workers switch within a second
        # (the follower polls every 0.25 s), the rest is a loaded box answering.
        assert waited < 10
        assert {status for status, _ in seen} <= {200}
        allowed = sum(1 for status, _ in seen if status == 200)
        shown = _cli(sock, "keys", "show", "partner-key")[1]
        day = next(x for x in shown["limits"] if x["window"] == "day")
        minute = next(x for x in shown["limits"] if x["window"] == "minute")
        assert day["used"] == allowed or minute["used"] == allowed
        assert _cli(sock, "policy", "show")[1]["generation"] == 2


def test_watch_reloads_when_the_file_changes(tmp_path: Path) -> None:
    config = _policy(tmp_path / "policy.toml", minute=100)
    with serve("--config", str(config), "--watch", cwd=tmp_path) as gw, client() as http:
        assert _get(http, gw.url, "partner-key").headers["X-RateLimit-Limit"] == "100"
        _policy(config, minute=7)
        _until(lambda: _get(http, gw.url, "partner-key").headers["X-RateLimit-Limit"] == "7")
        # The count made under 100/minute carries over: 3 used of the new 7.
        assert _get(http, gw.url, "partner-key").headers["X-RateLimit-Remaining"] in "0123"


def test_two_instances_sharing_redis_see_registry_edits(tmp_path: Path) -> None:
    config = _policy(tmp_path / "policy.toml")
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
    with redis_server(tmp_path / "redis") as redis:
        store = ("--store", redis.url)
        with (
            serve("--config", str(config), *store, "--admin", f"unix:{sock_a}", cwd=tmp_path) as a,
            serve("--config", str(config), *store, "--admin", f"unix:{sock_b}", cwd=tmp_path) as b,
            client() as http,
        ):
            assert _get(http, b.url, "fresh-key").status_code == 401
            assert _cli(sock_a, "keys", "add", "fresh-key", "--label", "Fresh")[0] == 0
            assert _until(lambda: _get(http, b.url, "fresh-key").status_code == 200) < 2
            assert _cli(sock_a, "block", "address", "127.0.0.1", "--for", "60")[0] == 0
            assert _until(lambda: _get(http, b.url, "fresh-key").status_code == 403) < 2
            assert _cli(sock_b, "unblock", "address", "127.0.0.1")[0] == 0
            assert _until(lambda: _get(http, a.url, "fresh-key").status_code == 200) < 2
            code, near = _cli(sock_b, "near")
            assert code == 0 and near["workers"] == 2


def test_every_option_from_the_environment_and_json_refusal_lines(tmp_path: Path) -> None:
    config = _policy(tmp_path / "policy.toml", minute=1)
    env = {
        "RATEKEEPER_POLICY": str(config),
        "RATEKEEPER_STORE": f"sqlite:///{tmp_path / 'env.db'}",
        "RATEKEEPER_LOG_FORMAT": "json",
        "RATEKEEPER_ADMIN": f"unix:{tmp_path / 'env.sock'}",
    }
    gw: Process
    with serve(cwd=tmp_path, env=env) as gw, client() as http:
        for _ in range(30):
            _get(http, gw.url, "partner-key")
        _get(http, gw.url, "made-up-key-123")
        assert (tmp_path / "env.db").exists() and (tmp_path / "env.sock").exists()
        refusals = []

        def logged() -> bool:
            refusals[:] = [
                json.loads(line)
                for line in gw.output().splitlines()
                if line.startswith("{") and '"refused"' in line
            ]
            return {"api", "unknown_api_key"} <= {r["zone"] for r in refusals}

        _until(logged)
        by_zone = {r["zone"]: r for r in reversed(refusals)}
        assert by_zone["api"]["key"] == "Partner" and by_zone["api"]["count"] == 1
        assert by_zone["api"]["retry_after_s"] > 0 and by_zone["api"]["status"] == 429
        assert by_zone["unknown_api_key"]["status"] == 401
        assert by_zone["unknown_api_key"]["key"].startswith("k:")
        assert "made-up-key-123" not in gw.output()
        # SIGHUP reloads a single-process gateway too.
        _policy(config, minute=3)
        os.kill(gw.proc.pid, signal.SIGHUP)
        _until(lambda: _get(http, gw.url, "partner-key").headers["X-RateLimit-Limit"] == "3")
        # 29 refusals of one caller: one line per window, not 29 (two if a minute turned).
        assert sum(1 for r in refusals if r["zone"] == "api") <= 2
