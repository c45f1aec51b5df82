"""The lean decision listener in this process, on real loopback sockets: what needs a
listener's insides (its connection cap, a decision that suspends where none should, requests
after one that closes the connection). The behaviour through ``serve`` and nginx is in
``tests/test_decide_listener.py``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ratekeeper.errors import GatewayConfigError
from ratekeeper.gateway.connections import ConnectionLimits
from ratekeeper.gateway.decide_listener import DecideListener
from ratekeeper.gateway.decide_socket import ListenAddress
from ratekeeper.gateway.server import serve_main
from ratekeeper.http.engine import Enforcer

POLICY = """
apply = ["api"]
[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "reject"

[limits.api]
rates = "3/day"
"""


def _request(key: str, *extra: str) -> bytes:
    lines = ["GET /_ratekeeper/decide HTTP/1.1", "X-Original-URI: /a", f"X-API-Key: {key}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


def _run(
    test: Callable[[DecideListener, int], Awaitable[None]], tmp_path: Any, **limits: Any
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    enforcer = Enforcer(str(policy), store="memory://")

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listener = DecideListener(enforcer, ConnectionLimits(**limits))
        await listener.start(sock)
        try:
            await test(listener, sock.getsockname()[1])
        finally:
            await listener.stop()

    asyncio.run(main())


def test_above_the_cap_the_longest_idle_connection_makes_room(tmp_path: Any) -> None:
    async def test(listener: DecideListener, port: int) -> None:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        second[1].write(_request("b"))
        assert (await _read(second[0]))[0] == 200
        third = await asyncio.open_connection("127.0.0.1", port)
        # The first never asked anything: it is closed for the third.
        assert await asyncio.wait_for(first[0].read(), 5) == b""
        third[1].write(_request("c"))
        assert (await _read(third[0]))[0] == 200
        assert len(listener.open) == 2
        for _, writer in (first, second, third):
            writer.close()

    _run(test, tmp_path, max_connections=2)


def test_a_decision_that_suspends_is_finished_in_a_task_in_order(tmp_path: Any) -> None:
    async def test(listener: DecideListener, port: int) -> None:
        decide = listener.decide

        async def slow(scope: dict[str, Any]) -> Any:
            await asyncio.sleep(0.01)
            return await decide(scope)

        listener.decide = slow  # type: ignore[method-assign]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(_request("slow") for _ in range(5)))
        answers = [await _read(reader) for _ in range(5)]
        assert [a[0] for a in answers] == [200, 200, 200, 429, 429]
        assert [a[1].get("x-ratelimit-remaining") for a in answers[:3]] == ["2", "1", "0"]
        writer.close()

    _run(test, tmp_path)


def test_requests_after_one_that_closes_the_connection_are_not_decided(tmp_path: Any) -> None:
    async def test(listener: DecideListener, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closing = _request("closer", "Connection: close")
        writer.write(closing + _request("closer") + _request("closer"))
        assert (await _read(reader))[1]["x-ratelimit-remaining"] == "2"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # Only the first was counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("closer"))
        assert (await _read(reader))[1]["x-ratelimit-remaining"] == "1"
        writer.close()

    _run(test, tmp_path)


def test_the_option_is_explained_and_a_bad_address_named(capsys: Any) -> None:
    with pytest.raises(SystemExit) as done:
        serve_main(["--help"])
    assert done.value.code == 0
    assert "--decide-listen HOST:PORT|unix:PATH" in capsys.readouterr().out
    # Named before anything starts (serve prints the message and exits with 2).
    for bad in ("nonsense", "127.0.0.1:99999", "unix:", ":80"):
        with pytest.raises(GatewayConfigError, match="--decide-listen"):
            ListenAddress.parse(bad)
