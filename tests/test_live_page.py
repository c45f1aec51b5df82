"""The live page and ``ratekeeper top`` against a real ``ratekeeper serve --preset musique``
(SQLite store, two workers, an admin token) under a small load, the page in Debian's chromium
driven headless by playwright: its numbers are /metrics', the key driven to 90% is listed, its
"reset" button frees a refused key, no request leaves the admin listener."""

from __future__ import annotations

import io
import json
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from tests.gateway_servers import Process, client, free_port, serve
from tests.redis_servers import redis_server

from ratekeeper.gateway.admin.live import LatencyWindow, quantile
from ratekeeper.gateway.admin.top import top_main
from ratekeeper.stores.registry import key_digest

CHROMIUM = "/usr/bin/chromium"
TOKEN = "live-page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRACKS = "/api/integration/tracks"
KINDS = {
    "allowed": "allowed",
    "rejected": "refused",
    "refused": "refused",
    "store_unavailable": "refused",
    "shadow_rejected": "unenforced",
    "unchecked": "unenforced",
}


@dataclass
class Gateway:
    process: Process
    admin: str

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    cwd = tmp_path_factory.mktemp("live")
    admin = f"127.0.0.1:{free_port()}"
    args = ("--preset", "musique", "--store", f"sqlite:///{cwd / 'rk.db'}", "--workers", "2")
    env = {"RATEKEEPER_ADMIN_TOKEN": TOKEN}
    with serve(*args, "--admin", admin, cwd=cwd, env=env) as process:
        yield Gateway(process, f"http://{admin}")


def _metrics_totals(admin: str) -> dict[tuple[str, str], dict[str, int]]:
    """``ratekeeper_requests_total`` from /metrics, per (rule, zone) and kind."""
    text = httpx.get(admin + "/metrics", headers=AUTH, timeout=5).text
    out: dict[tuple[str, str], dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ratekeeper_requests_total":
                zone = (sample.labels["rule"], sample.labels["zone"])
                kinds = out.setdefault(zone, {"allowed": 0, "refused": 0, "unenforced": 0})
                kinds[KINDS[sample.labels["outcome"]]] += int(sample.value)
    return out


def _away_from_the_minute_boundary() -> None:
    """musique counts per aligned minute: keep the keys' counts in one window."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60.5 - into)


def _drive(url: str, key: str, count: int) -> list[int]:
    with client() as http:
        return [
            http.get(url + TRACKS, headers={"X-API-Key": key}).status_code for _ in range(count)
        ]


def _background(url: str, stop: threading.Event) -> None:
    with client() as http:
        n = 0
        while not stop.is_set():
            http.get(url + TRACKS, headers={"X-API-Key": f"bg-{n % 4}"})
            if n % 7 == 0:
                http.get(url + TRACKS)  # no key: refused (401)
            n += 1
            time.sleep(0.03)


def _playwright():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's chromium)")
    return pytest.importorskip("playwright.sync_api").sync_playwright()


def _launch(p, profile: Path):  # type: ignore[no-untyped-def]
    return p.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
        viewport={"width": 1280, "height": 1000},
    )


def _page_totals(page) -> dict[tuple[str, str], dict[str, int]]:  # type: ignore[no-untyped-def]
    rows = page.eval_on_selector_all(
        "#zones tbody tr[data-rule]",
        """rows => rows.map(r => [r.dataset.rule, r.dataset.zone,
            Object.fromEntries([...r.querySelectorAll('td[data-kind]')]
              .map(td => [td.dataset.kind, Number(td.textContent)]))])""",
    )
    return {(rule, zone): kinds for rule, zone, kinds in rows}


def _not_blank(png: Path) -> None:
    from PIL import Image  # noqa: PLC0415 (a test-only dependency)

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) one colour"
    assert max(count for count, _ in colours) < 0.9 * sum(count for count, _ in colours)


def test_the_page_shows_the_gateway_live_and_resets_a_key(gateway: Gateway, tmp_path: Path) -> None:
    url, admin = gateway.url, gateway.admin
    hot, flood = f"hot-{time.time_ns()}", f"flood-{time.time_ns()}"
    _away_from_the_minute_boundary()
    assert set(_drive(url, hot, 90)) == {200}
    flooded = _drive(url, flood, 103)
    assert flooded.count(429) == 3
    stop = threading.Event()
    load = threading.Thread(target=_background, args=(url, stop), daemon=True)
    load.start()
    outside: list[str] = []
    problems: list[str] = []
    with _playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = _launch(p, Path(profile))
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(admin) else outside.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(admin + "/")
            # The listener has a token: the page asks for it, then keeps it for the tab.
            page.locator("#token").fill(TOKEN)
            page.locator("#login button").click()
            hot_row = page.locator(f'#near-lists tr[data-key="k:{key_digest(hot)}"]')
            hot_row.wait_for(timeout=10_000)
            assert "90 / 100" in hot_row.inner_text()
            time.sleep(2.5)  # a few points of moving load on the chart
            stop.set()
            load.join(5)

            # Once the load stops, the page's totals are /metrics' (summed over both workers).
            expected: dict[tuple[str, str], dict[str, int]] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                expected = _metrics_totals(admin)
                if _page_totals(page) == expected:
                    break
                time.sleep(0.3)
            assert _page_totals(page) == expected
            assert expected[("default", "api")]["refused"] >= 3
            assert expected[("default", "")]["refused"] >= 1
            # The chart plots the differences between snapshots: they add up to the totals.
            chart = page.evaluate("window.ratekeeperLive.chart")
            assert len(chart["x"]) >= 2 and chart["filter"] == ""
            for kind in ("allowed", "refused", "unenforced"):
                plotted = chart["base"][kind] + sum(chart["counts"][kind])
                assert plotted == sum(z[kind] for z in expected.values()), kind
            assert max(chart["rates"]["allowed"]) > 0

            # "reset" frees the flooded key: its next request is allowed.
            with client() as http:
                assert http.get(url + TRACKS, headers={"X-API-Key": flood}).status_code == 429
            flood_row = page.locator(f'#near-lists tr[data-key="k:{key_digest(flood)}"]')
            flood_row.get_by_role("button", name="reset").click()
            page.locator("#toast", has_text="done").wait_for(timeout=5_000)
            # The other worker's over-limit cache sees a reset it did not make within its
            # max_age_s (1 s, stores/over_limit.py).
            time.sleep(1.1)
            with client() as http:
                answer = http.get(url + TRACKS, headers={"X-API-Key": flood})
            assert answer.status_code == 200, (answer.headers, answer.text)
            assert answer.headers["X-RateLimit-Remaining"] == "99"

            shot = tmp_path / "live.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            stop.set()
            browser.close()
    _not_blank(shot)
    assert outside == []
    # The one error the console shows: the first poll, before the token was given.
    assert [p for p in problems if "401 (Unauthorized)" not in p] == []


def test_the_snapshot_needs_the_token_and_the_page_stays_on_the_listener(
    gateway: Gateway,
) -> None:
    admin = gateway.admin
    with httpx.Client(timeout=5) as http:
        refused = http.get(admin + "/admin/live")
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        wrong = http.get(admin + "/admin/live", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert TOKEN not in wrong.text
        assert http.get(admin + "/admin/live?top=99", headers=AUTH).status_code == 400
        assert http.get(admin + "/admin/live?top=x", headers=AUTH).status_code == 400
        snapshot = http.get(admin + "/admin/live", headers=AUTH).json()
        assert snapshot["workers"] == 2 and snapshot["store"]["kind"] == "sqlite"
        assert snapshot["policy"]["rules"][-1]["limits"] == ["api"]
        page = http.get(admin + "/")
        assert page.status_code == 200 and "ratekeeper live" in page.text
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert http.post(admin + "/", headers=AUTH).status_code == 405
        assert http.get(admin + "/live/../admin/keys").status_code in (401, 404)
        assert http.get(admin + "/live/app.py").status_code == 404
        licence = http.get(admin + "/live/uPlot.LICENSE")
        assert "MIT" in licence.text
        # Other web sites cannot drive the operator's browser against the listener.
        evil = {**AUTH, "Origin": "http://evil.example"}
        block = {"kind": "address", "value": "192.0.2.1"}
        assert http.post(admin + "/admin/blocks", json=block, headers=evil).status_code == 403
        cross = {**AUTH, "Sec-Fetch-Site": "same-site"}
        assert http.get(admin + "/admin/live", headers=cross).status_code == 403
        assert http.get(admin + "/live/app.js", headers=cross).status_code == 403
        own = {**AUTH, "Origin": admin, "Sec-Fetch-Site": "same-origin"}
        assert http.get(admin + "/admin/live", headers=own).status_code == 200
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        assert http.get(admin + "/", headers=link).status_code == 200
        assert http.get(admin + "/admin/blocks", headers=AUTH).json()["blocks"] == []
        # The traffic listener does not serve the page: its paths are the API's there.
        assert http.get(gateway.url + "/admin/live", headers=AUTH).status_code != 200


def test_top_shows_the_same_picture_in_a_terminal(gateway: Gateway) -> None:
    url, admin = gateway.url, gateway.admin
    key = f"top-{time.time_ns()}"
    _away_from_the_minute_boundary()
    _drive(url, key, 42)
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=True)
    # Each worker publishes its sample once a second: a few seconds of screens see both.
    args = ["--url", admin, "--token", TOKEN, "--iterations", "10", "--interval", "0.3"]
    assert top_main([*args, "--top", "32"], console=console) == 0
    screen = console.export_text()
    assert f"k:{key_digest(key)[:8]}" in screen
    assert "42 / 100" in screen
    assert "api/minute" in screen and "sqlite" in screen and "healthy" in screen
    # No load runs now: the last screen's totals are /metrics'.
    totals = _metrics_totals(admin)[("default", "api")]
    rows = re.findall(r"│ default\s+│ api\s+│\s+(\d+) │\s+(\d+) │\s+(\d+) │", screen)
    assert rows[-1] == tuple(str(totals[k]) for k in ("allowed", "refused", "unenforced"))
    quiet = Console(record=True, width=100, file=io.StringIO())
    assert top_main(["--url", admin, "--token", "nope", "--iterations", "1"], console=quiet) == 1
    assert "token was refused" in quiet.export_text()


LOCKOUT_POLICY = """
body = "musique"
apply = ["api"]
[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "reject"
[limits.api]
rates = "100/minute"
[lockout]
failures = 2
window = "1h"
duration = "1h"
"""


def test_lockouts_in_force_are_listed_until_lifted(tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(LOCKOUT_POLICY)
    admin = f"http://127.0.0.1:{free_port()}"
    with serve("--config", str(config), "--admin", admin[7:], cwd=tmp_path) as gw:
        login = gw.url + "/api/v1/auth/login"
        wrong = {"email": "demo@beatpass.example", "password": "guess"}
        with client() as http:
            statuses = [
                http.post(login, json=wrong, headers={"X-API-Key": "k1"}).status_code
                for _ in range(3)
            ]
            assert statuses == [401, 401, 429]
            live = http.get(admin + "/admin/live").json()
            assert [e["key"] for e in live["lockouts"]] == [f"k:{key_digest('k1')}"]
            assert live["lockouts"][0]["reset_at"] > time.time() + 3000
            assert "lockout/lock" not in live["near"]
            # No token on this loopback listener: a rebound host name or another site's
            # simple request (no preflight) is refused.
            lift = {"hash": key_digest("k1")}
            rebound = {"Host": "rebound.example:80"}
            assert http.get(admin + "/admin/live", headers=rebound).status_code == 403
            assert http.get(admin + "/", headers=rebound).status_code == 403
            forged = {"Origin": "http://127.0.0.1:1", "Content-Type": "text/plain"}
            path = admin + "/admin/lockouts/lift"
            sent = http.post(path, content=json.dumps(lift), headers=forged)
            assert sent.status_code == 403 and "other web sites" in sent.json()["message"]
            assert http.get(admin + "/admin/live").json()["lockouts"] != []
            lifted = http.post(admin + "/admin/lockouts/lift", json=lift)
            assert lifted.status_code == 200
            assert http.get(admin + "/admin/live").json()["lockouts"] == []


def test_latency_quantiles_follow_prometheus_histogram_quantile() -> None:
    inf = float("inf")
    bounds = [0.001, 0.01, 0.1, inf]
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [50, 100, 100, 100], 0.5) == pytest.approx(0.001)
    assert quantile(bounds, [0, 100, 100, 100], 0.5) == pytest.approx(0.0055)
    assert quantile(bounds, [0, 0, 0, 10], 0.99) == 0.1
    window = LatencyWindow(window_s=60)
    first = window.update(1000.0, bounds, [10, 10, 10, 10])
    assert first["over_s"] is None and first["decisions"] == 10
    # Only what the last minute added counts: 90 slow calls after 10 fast ones.
    later = window.update(1030.0, bounds, [10, 10, 100, 100])
    assert later["over_s"] == 30 and later["decisions"] == 90
    assert later["p50_ms"] == pytest.approx(55.0)
    # A restarted single worker (counts from zero) starts the window afresh.
    restarted = window.update(1031.0, bounds, [1, 1, 1, 1])
    assert restarted["decisions"] == 1


def test_the_picture_stays_up_while_the_store_is_down(tmp_path: Path) -> None:
    admin = f"http://127.0.0.1:{free_port()}"
    with redis_server(tmp_path / "redis") as redis:
        args = ("--preset", "musique", "--store", redis.url, "--admin", admin[7:])
        with serve(*args, cwd=tmp_path) as gw, client() as http:
            for _ in range(3):
                http.get(gw.url + TRACKS, headers={"X-API-Key": "k1"})
            assert http.get(admin + "/admin/live").json()["near"]["api/minute"]
            redis.kill()
            # musique fails open: requests go through, unenforced, and the page says so.
            assert http.get(gw.url + TRACKS, headers={"X-API-Key": "k1"}).status_code == 200
            live = http.get(admin + "/admin/live")
            assert live.status_code == 200
            snapshot = live.json()
            assert snapshot["store"]["healthy"] is False
            assert snapshot["store"]["outages"] >= 1
            assert snapshot["near"] == {} and snapshot["workers"] is None
            assert (
                snapshot["unavailable"]
                and "callers near their limits" in snapshot["unavailable"][0]
            )
            unenforced = [r for r in snapshot["requests"] if r["kind"] == "unenforced"]
            assert sum(r["count"] for r in unenforced) >= 1
