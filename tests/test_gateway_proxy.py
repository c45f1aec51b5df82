"""The gateway as a reverse proxy, through real ``ratekeeper serve`` processes: streaming both
ways, hop-by-hop headers, upstream failures answered as 502/504 JSON without a traceback,
graceful shutdown, several workers on one SQLite file, a Redis store, metrics, CLI errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway_servers import FakeUpstream, Process, client, demo_upstream, free_port, serve
from redis_servers import redis_server

POLICY = """
apply = ["api"]

[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "ip"

[limits.api]
rates = "1000/minute"

# An hour, so that the tests counting to 5 do not straddle the start of a window.
[limits.tight]
rates = "5/hour"

[[rules]]
routes = ["/tight"]
limits = ["tight"]
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("proxy") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def gateway(fake: FakeUpstream, policy_file: Path) -> Iterator[Process]:
    root = policy_file.parent
    with serve(
        "--config",
        str(policy_file),
        "--upstream",
        fake.url,
        # Above /drip's 1 s pause (a pause between chunks counts against it), below /slow's 4 s.
        "--timeout",
        "2",
        "--store",
        f"sqlite:///{root / 'proxy.db'}",
        cwd=root,
    ) as process:
        yield process
    assert "Traceback" not in process.output(), process.output()


def test_upstream_errors_are_json_and_the_gateway_keeps_serving(gateway: Process) -> None:
    with client() as http:
        r = http.get(gateway.url + "/garbage")
        assert r.status_code == 502
        assert r.json() == {
            "error": {
                "code": "bad_upstream_answer",
                "message": "The upstream API gave an invalid answer.",
            }
        }
        assert "X-RateLimit-Limit" in r.headers
        started = time.monotonic()
        r = http.get(gateway.url + "/slow")
        assert r.status_code == 504
        assert time.monotonic() - started < 3.5
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert r.headers["content-type"] == "application/json"
        r = http.get(gateway.url + "/ok")
        assert r.status_code == 200 and r.json() == {"ok": True}
        # A small answer is read whole before it is relayed: a short one is still a 502.
        r = http.get(gateway.url + "/cut")
        assert r.status_code == 502
        # A failure after a streamed answer started can only cut the connection.
        with pytest.raises(httpx.HTTPError):
            http.get(gateway.url + "/cutbig")
    with client() as http:
        assert http.get(gateway.url + "/ok").status_code == 200
        metrics = http.get(gateway.url + "/metrics").text
    assert 'ratekeeper_upstream_errors_total{kind="bad_upstream_answer"} 2.0' in metrics
    assert 'ratekeeper_upstream_errors_total{kind="upstream_aborted"} 1.0' in metrics
    assert 'ratekeeper_upstream_errors_total{kind="upstream_timeout"} 1.0' in metrics
    assert 'ratekeeper_requests_total{outcome="allowed",rule="default",zone="api"}' in metrics


def test_upstream_down_is_a_502(tmp_path: Path, policy_file: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with serve("--config", str(policy_file), "--upstream", down, cwd=tmp_path) as process:
        for _ in range(3):
            r = httpx.get(process.url + "/anything", headers={"X-API-Key": "k"})
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "upstream_unreachable"
        assert httpx.get(process.url + "/healthz").status_code == 200
    output = process.output()
    assert "Traceback" not in output
    # One log line per interval, not one per failed request.
    assert output.count("upstream_unreachable") == 1
    assert "127.0.0.1" in output


def test_hop_by_hop_headers_and_forwarding_headers(gateway: Process) -> None:
    with client() as http:
        r = http.get(
            gateway.url + "/echo/path%2Fencoded?q=a%20b&x=1",
            headers={
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "secret",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic abc",
                "X-Forwarded-For": "203.0.113.9",
                "X-Custom": "kept",
                "X-API-Key": "k1",
            },
        )
        assert r.status_code == 200
        head = r.text.lower()
        assert head.startswith("get /echo/path%2fencoded?q=a%20b&x=1 http/1.1")
        for dropped in ("x-drop-me", "keep-alive", "te:", "proxy-authorization"):
            assert dropped not in head
        assert "x-custom: kept" in head
        assert "x-api-key: k1" in head
        assert "x-forwarded-for: 203.0.113.9, 127.0.0.1" in head
        assert "x-forwarded-proto: http" in head
        assert "x-forwarded-host: 127.0.0.1:" in head
        r = http.get(gateway.url + "/hop")
        assert r.status_code == 200
        assert "x-secret" not in r.headers
        assert "keep-alive" not in r.headers
        assert "proxy-authenticate" not in r.headers
        assert r.headers["x-kept"] == "yes"


def test_bodies_stream_both_ways(tmp_path: Path) -> None:
    with (
        demo_upstream("aisoule", "beatpass", cwd=tmp_path) as upstream,
        serve("--preset", "aisoule", "--upstream", upstream.url, cwd=tmp_path) as gateway,
    ):
        total = 0

        def chunks() -> Iterator[bytes]:
            nonlocal total
            for _ in range(80):
                block = b"a" * 65536
                total += len(block)
                yield block

        with client() as http:
            r = http.post(
                gateway.url + "/v1/media",
                headers={"Authorization": "Bearer up", "Content-Type": "video/mp4"},
                content=chunks(),
            )
            assert r.status_code == 201
            assert r.json()["data"] == {
                "id": r.json()["data"]["id"],
                "bytes": total,
                "content_type": "video/mp4",
            }
    assert "Traceback" not in gateway.output()


def test_response_streams_as_it_arrives(gateway: Process) -> None:
    with client() as http, http.stream("GET", gateway.url + "/drip") as r:
        started = time.monotonic()
        chunks = r.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    assert first == b"first"
    assert first_at < 0.7
    assert rest == b"second"


def test_client_gone_mid_stream_releases_the_upstream(gateway: Process, fake: FakeUpstream) -> None:
    fake.abandoned.clear()
    with client() as http, http.stream("GET", gateway.url + "/endless") as r:
        assert next(r.iter_raw()).startswith(b"tick")
    # The client closed its connection after one chunk: the gateway must stop reading the
    # endless answer and close its upstream connection, not relay into the void for 30 s.
    assert fake.abandoned.wait(5)
    with client() as http:
        assert http.get(gateway.url + "/ok").status_code == 200


def test_graceful_shutdown_finishes_requests_in_flight(
    tmp_path: Path, policy_file: Path, fake: FakeUpstream
) -> None:
    store = tmp_path / "graceful.db"
    with serve(
        "--config",
        str(policy_file),
        "--upstream",
        fake.url,
        "--store",
        f"sqlite:///{store}",
        cwd=tmp_path,
    ) as process:
        results: list[int] = []

        def slow_request() -> None:
            results.append(httpx.get(process.url + "/slow", timeout=10).status_code)

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert process.stop() in (0, -15)
        thread.join()
    assert results == [200]
    # The store was closed: SQLite removes the WAL file when the last connection closes.
    assert store.exists()
    assert not Path(f"{store}-wal").exists()


def test_workers_share_the_sqlite_store(tmp_path: Path, policy_file: Path) -> None:
    store = tmp_path / "shared.db"
    with serve(
        "--config",
        str(policy_file),
        "--workers",
        "2",
        "--store",
        f"sqlite:///{store}",
        cwd=tmp_path,
    ) as process:
        assert "(2 workers;" in process.output()
        api_key = {"X-API-Key": uuid.uuid4().hex}

        def one(_: int) -> tuple[int, str]:
            # A fresh connection each time, so both workers take requests.
            r = httpx.get(process.url + "/tight", headers=api_key)
            return r.status_code, r.headers.get("X-RateLimit-Remaining", "")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(16)))
    codes = [code for code, _ in results]
    # /tight is not a demo path: allowed requests get the demo's 404, refused ones 429.
    assert codes.count(404) == 5
    assert codes.count(429) == 11
    assert sorted(r for c, r in results if c == 404) == ["0", "1", "2", "3", "4"]


def requests_total(metrics: str) -> dict[str, float]:
    """``ratekeeper_requests_total`` by outcome, summed over the other labels."""
    totals: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("ratekeeper_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            totals[outcome] = totals.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


@pytest.mark.parametrize("own_dir", [False, True])
def test_metrics_of_several_workers_add_up(
    tmp_path: Path, policy_file: Path, own_dir: bool
) -> None:
    # With a directory of its own the test can see which workers counted; without, serve
    # makes a temporary one.
    shared = tmp_path / "prometheus"
    env = {}
    if own_dir:
        shared.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    with serve(
        "--config",
        str(policy_file),
        "--workers",
        "2",
        "--store",
        f"sqlite:///{tmp_path / 'metrics.db'}",
        cwd=tmp_path,
        env=env,
    ) as process:
        api_key = {"X-API-Key": uuid.uuid4().hex}
        sent = 0

        def counted_by() -> int:
            return len({path.stem.rsplit("_", 1)[1] for path in shared.glob("counter_*.db")})

        # Which worker accepts a connection is the kernel's choice: send until both have
        # counted (one batch is enough without a directory to look at).
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                list(
                    pool.map(
                        lambda _: httpx.get(process.url + "/tight", headers=api_key), range(16)
                    )
                )
                sent += 16
                if not own_dir or counted_by() == 2:
                    break
        assert not own_dir or counted_by() == 2
        # Each scrape reaches one worker; every one of them must show the sums of both.
        for _ in range(6):
            metrics = httpx.get(process.url + "/metrics").text
            totals = requests_total(metrics)
            assert totals == {"allowed": 5.0, "rejected": sent - 5.0}
            # The store is asked for every admission and each worker's first refusals; the
            # rest are refused by the over-limit cache, without a store call.
            calls = float(metrics.split("ratekeeper_store_seconds_count ")[1].split()[0])
            assert 5 < calls <= sent
            assert "ratekeeper_store_errors_total 0.0" in metrics
            assert "ratekeeper_fallback_active 0.0" in metrics
    assert "Traceback" not in process.output()


def test_redis_store(tmp_path: Path, policy_file: Path) -> None:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    with (
        redis_server(tmp_path) as server,
        serve("--config", str(policy_file), "--store", server.url, cwd=tmp_path) as process,
    ):
        assert f"store {server.url}" in process.output()
        codes = [
            httpx.get(process.url + "/tight", headers={"X-API-Key": "r"}).status_code
            for _ in range(7)
        ]
    assert codes == [404] * 5 + [429] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "no preset named 'nope'"),
        (["--preset", "musique", "--store", "ftp://x"], "unknown store scheme"),
        (["--preset", "musique", "--upstream", "localhost:9"], "upstream must be an http://"),
        (["--preset", "musique", "--workers", "2", "--store", "memory://"], "shared store"),
        (["--preset", "musique", "--trust-proxy", "nginx"], "IP address or CIDR network"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratekeeper.cli", "serve", "--port", "0", *args],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_lists_serve_and_fetch() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratekeeper.cli", "--help"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "serve" in result.stdout and "fetch" in result.stdout
