"""A real redis-server killed and restarted while requests flow through a real server: the
policy's ``on_store_error`` holds, nothing answers 500, the log has one line for the outage and
one for the recovery, and decisions are back on Redis within about a second."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from redis_servers import redis_server
from test_http_support import KINDS, serve

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed"
)

POLICY = """
store = "{url}"
on_store_error = "{mode}"
body = "aisoule"
apply = ["api"]
[identity]
source = "api_key"
[limits.api]
rates = "100000/minute"
"""

# What an answer looks like while Redis is down: status, and whether X-RateLimit-* are sent.
DURING_OUTAGE = {
    "fail_open": (200, False),
    "fail_closed": (503, False),
    "fallback": (200, True),
}


class Traffic:
    """Requests sent back to back from a thread, each answer kept as (status, has headers)."""

    def __init__(self, url: str) -> None:
        self.answers: list[tuple[int, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not self._stop.is_set():
                r = client.get("/v1/items", headers={"X-API-Key": "sk_live_outage"})
                self.answers.append((r.status_code, "X-RateLimit-Limit" in r.headers))

    def mark(self) -> int:
        return len(self.answers)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.answers) < count:
            assert time.monotonic() < deadline, "the server stopped answering"
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("mode", list(DURING_OUTAGE))
@pytest.mark.parametrize("kind", KINDS)
def test_redis_killed_and_restarted_under_traffic(
    kind: str, mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ratekeeper.store")
    with (
        redis_server(tmp_path) as redis,
        serve(kind, POLICY.format(url=redis.url, mode=mode)) as srv,
    ):
        fallback = srv.enforcer.fallback
        traffic = Traffic(srv.url)
        try:
            traffic.wait_for(20)
            before = traffic.mark()
            redis.kill()
            deadline = time.monotonic() + 5
            while not fallback.degraded:
                assert time.monotonic() < deadline, "the outage was not noticed"
                time.sleep(0.005)
            # Requests keep flowing for several probe intervals while Redis is down.
            down_from = traffic.mark()
            time.sleep(1.2)
            traffic.wait_for(down_from + 20)
            down_to = traffic.mark()
            redis.start()
            restarted = time.monotonic()
            while fallback.degraded:
                assert time.monotonic() - restarted < 3, "still degraded 3 s after the restart"
                time.sleep(0.005)
            back_after_s = time.monotonic() - restarted
            after = traffic.mark()
            traffic.wait_for(after + 20)
        finally:
            traffic.stop()
        answers = traffic.answers
        assert all(status != 500 for status, _ in answers)
        assert set(answers[:before]) == {(200, True)}
        assert set(answers[down_from + 1 : down_to]) == {DURING_OUTAGE[mode]}
        assert set(answers[after + 1 :]) == {(200, True)}
        assert back_after_s < 1.0
        # Decisions write to the restarted server again.
        client = redis.client()
        try:
            assert client.dbsize() > 0
        finally:
            client.close()
        assert fallback.outages == 1
        assert srv.enforcer.metrics.value("ratekeeper_store_outages_total") == 1
        assert srv.enforcer.metrics.value("ratekeeper_fallback_active") == 0
        assert srv.enforcer.metrics.value("ratekeeper_store_errors_total") >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "ratekeeper.store"]
    assert len(lines) == 2, lines
    assert " is down " in lines[0] and "recovered after" in lines[1]
    assert "sk_live_outage" not in caplog.text
