"""The seed documents' own client code, run unchanged against ``ratekeeper serve``: the Musique
page's ``makeRequestWithRetry`` (JavaScript, under Node) and the AISoule page's Python
``requests`` snippet. Only the host and the API key in them are replaced."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_servers import Process, serve
from ratekeeper.policy import preset_path

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seed(pattern: str) -> str:
    found = sorted(SEEDS.glob(pattern))
    if not found:
        pytest.skip(f"the seed documents are not beside the checkout ({SEEDS})")
    return found[-1].read_text(encoding="utf-8")


def between(text: str, start: str, end: str) -> str:
    """The text from the line starting with ``start`` to the first line equal to ``end``."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next(i for i in range(first, len(lines)) if lines[i].rstrip() == end)
    return "\n".join(lines[first : last + 1])


@pytest.fixture(scope="module")
def musique_short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("seed-musique")
    # The Musique preset with its minute window shortened to 2 s, so a retry waits seconds.
    text = preset_path("musique").read_text()
    original = 'rates = "100/minute; 1000/hour; 10000/day"'
    assert original in text
    (root / "musique.toml").write_text(text.replace(original, 'rates = "3/2s; 1000/hour"'))
    with serve("--config", str(root / "musique.toml"), cwd=root) as process:
        yield process


def test_musique_make_request_with_retry_under_node(musique_short: Process, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    function = between(seed("000_*.txt"), "async function makeRequestWithRetry", "}")
    script = tmp_path / "client.mjs"
    script.write_text(
        function
        + f"""
const url = {json.dumps(musique_short.url + "/api/integration/tracks")};
const statuses = [];
for (let i = 0; i < 5; i++) {{
  const response = await makeRequestWithRetry(url, {{ headers: {{ 'X-API-Key': 'node-key' }} }});
  statuses.push(response.status);
}}
console.log('statuses ' + JSON.stringify(statuses));
"""
    )
    # Start early in a 2-second window, so the 4th request is the one refused.
    left = 2 - time.time() % 2
    if left < 1.2:
        time.sleep(left + 0.02)
    result = subprocess.run(
        [node, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "statuses [200,200,200,200,200]" in out
    waits = re.findall(r"Rate limited\. Waiting (\d+)s\.\.\.", out)
    assert len(waits) == 1 and 1 <= int(waits[0]) <= 2
    # X-RateLimit-Remaining is read too: below 10, the client warns.
    assert "Low rate limit: 2 requests remaining" in out


@pytest.fixture(scope="module")
def aisoule(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    root = tmp_path_factory.mktemp("seed-aisoule")
    with serve("--preset", "aisoule", cwd=root) as process:
        yield process


def test_aisoule_python_requests_snippet(aisoule: Process) -> None:
    snippet = between(
        seed("004_*.extracted.txt"),
        "import requests",
        'print("Remaining:", res.headers.get("X-RateLimit-Remaining"))',
    )
    snippet = snippet.replace("https://api.aisoule.com", aisoule.url)
    assert "YOUR_API_KEY" in snippet
    snippet = snippet.replace("YOUR_API_KEY", "python-key")
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Limit: 120", "Remaining: 119"]
