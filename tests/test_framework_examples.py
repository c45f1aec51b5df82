"""The ten-line examples of docs/frameworks/*.md (examples/frameworks/*.py), each served as its
page says: FastAPI under uvicorn, Flask and Django under waitress. Five searches a minute pass."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "frameworks"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "server",
    [
        ["uvicorn", "fastapi_app:app", "--port", "{port}"],
        ["waitress", "--port={port}", "flask_app:app"],
        ["waitress", "--port={port}", "django_app:application"],
    ],
    ids=["fastapi", "flask", "django"],
)
def test_the_example_limits_searches(server: list[str]) -> None:
    port = _free_port()
    command = [sys.executable, "-m", *(part.format(port=port) for part in server)]
    process = subprocess.Popen(
        command, cwd=EXAMPLES, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}/search"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                first = httpx.get(url, params={"q": "jazz"}, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        assert first.json() == {"q": "jazz"}
        assert first.headers["X-RateLimit-Limit"] == "5"
        statuses = [httpx.get(url, timeout=2).status_code for _ in range(5)]
    finally:
        process.terminate()
        errors = process.communicate(timeout=20)[1]
    assert statuses == [200, 200, 200, 200, 429], errors
