"""``ratekeeper fetch`` against a limited server on loopback."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ratekeeper.client.fetch import fetch_main
from test_client_servers import Counts, ratekeeper_app, serve_asgi


def test_fetch_urls_from_file_paced_by_policy(tmp_path: Path) -> None:
    counts = Counts()
    with serve_asgi(ratekeeper_app("10/second", "fixed_window", counts)) as base:
        listing = tmp_path / "urls.txt"
        listing.write_text("\n".join(f"{base}/items?n={n}" for n in range(15)) + "\n# done\n")
        out = tmp_path / "out"
        code = fetch_main(
            ["-i", str(listing), "--rate", "10/second", "-o", str(out), "--no-progress"]
        )
    assert code == 0
    assert counts.statuses[429] == 0
    files = sorted(out.iterdir())
    assert len(files) == 15
    assert json.loads(files[0].read_bytes()) == {"ok": True}


def test_fetch_learns_without_policy_and_writes_json_lines() -> None:
    counts = Counts()
    stdout = io.StringIO()
    with serve_asgi(ratekeeper_app("5/second", "first_hit_window", counts)) as base:
        code = fetch_main([f"{base}/items"] * 8 + ["--no-progress"], stdout=stdout)
    assert code == 0
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [line["status"] for line in lines] == [200] * 8
    assert counts.statuses[429] <= 1


def test_fetch_reports_failures_and_bad_arguments() -> None:
    stdout = io.StringIO()
    code = fetch_main(
        ["http://127.0.0.1:9/nothing", "--no-progress", "--retries", "0"], stdout=stdout
    )
    assert code == 1
    assert "error" in json.loads(stdout.getvalue())
    assert fetch_main(["--no-progress"]) == 2
    assert fetch_main(["http://x.test/", "--rate", "lots"]) == 2
    assert fetch_main(["http://x.test/", "-H", "no colon"]) == 2
    assert fetch_main(["http://x.test/", "--policy", "no-such-preset"]) == 2
    assert fetch_main(["http://x.test/", "--rate", "1/second", "--tier", "gold"]) == 2


def test_fetch_paced_by_a_policy_file(tmp_path: Path) -> None:
    counts = Counts()
    policy = tmp_path / "policy.toml"
    policy.write_text('apply = ["api"]\n[limits.api]\nrates = "10/second"\n')
    with serve_asgi(ratekeeper_app("10/second", "fixed_window", counts)) as base:
        code = fetch_main(
            [f"{base}/items"] * 15
            + ["--policy", str(policy), "-o", str(tmp_path / "out")]
            + ["--no-progress"]
        )
    assert code == 0
    assert counts.statuses == {200: 15}
