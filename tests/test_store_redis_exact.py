"""Exactness under real concurrency on one Redis server: 4 processes x 50 threads, 10 keys."""

from __future__ import annotations

from pathlib import Path

from redis_servers import check_exactness, redis_server


def test_admitted_totals_equal_the_allowed_totals(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        totals = check_exactness(server.url, "exact")
    # The run was long enough to exhaust the windows many times over.
    assert totals["windowed_attempts"] > 4 * totals["windowed_admitted"] > 0
