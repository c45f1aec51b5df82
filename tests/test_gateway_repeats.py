"""Refusals ``serve`` answers itself (its middleware, 429 with headers and body) repeated from
the over-limit cache without running admission again: the same answer byte for byte, counted
and observed, and never once something that would change it has (a reset, a block, a reload,
a key header sent twice, another path, query or address)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ratekeeper import ManualClock
from ratekeeper.gateway.app import Gateway
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Ticket
from ratekeeper.http.stages.keys import blocks
from ratekeeper.policy import load_policy
from ratekeeper.stores.registry import Registry
from ratekeeper.stores.registry.drivers import MemoryRegistry
from ratekeeper.stores.registry.model import Block

POLICY = """
body = "musique"
apply = ["caller"]

[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "ip"

[limits.caller]
rates = "RATE"
algorithm = "first_hit_window"
"""

HEADERS = [(b"host", b"api"), (b"x-api-key", b"k-1"), (b"user-agent", b"curl/8")]


class Setup:
    def __init__(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.enforcer = Enforcer(
            self._policy("1/hour"), store="memory://", clock=ManualClock(1_700_000_000.0)
        )
        self.upstream_calls = 0
        self.admissions = 0
        admit = self.enforcer.admit_async

        async def counted(*args: Any, **kwargs: Any) -> Ticket:
            self.admissions += 1
            return await admit(*args, **kwargs)

        monkeypatch.setattr(self.enforcer, "admit_async", counted)

        async def upstream(scope: Any, receive: Any, send: Any) -> None:
            self.upstream_calls += 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        self.gateway = Gateway(self.enforcer, upstream)

    def _policy(self, rate: str) -> Any:
        path = self.tmp_path / f"policy-{rate.replace('/', '-')}.toml"
        path.write_text(POLICY.replace("RATE", rate))
        return load_policy(path)

    def ask(
        self,
        headers: list[tuple[bytes, bytes]] = HEADERS,
        path: str = "/tracks/1",
        query: bytes = b"",
        client: str = "127.0.0.1",
    ) -> tuple[int, Any]:
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": list(headers),
            "client": (client, 50000),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(self.gateway(scope, receive, send))
        return sent[0]["status"], (sent[0]["headers"], sent[1]["body"])

    def counted(self) -> float:
        labels = {"rule": "default", "zone": "caller", "outcome": "rejected"}
        return self.enforcer.metrics.value("ratekeeper_requests_total", labels)


@pytest.fixture
def setup(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return Setup(tmp_path, monkeypatch)


def test_a_repeated_refusal_is_the_same_answer_counted_and_observed(setup: Setup) -> None:
    assert setup.ask()[0] == 200
    first = setup.ask()
    assert first[0] == 429
    assert setup.admissions == 2
    seen: list[Ticket] = []
    setup.enforcer.observe(lambda ctx, ticket: seen.append(ticket))
    for _ in range(3):
        assert setup.ask() == first
    assert setup.admissions == 2, "the repeats ran no admission"
    assert setup.upstream_calls == 1
    assert len(seen) == 3
    assert setup.counted() == 4


def test_a_reset_is_seen_by_the_next_request(setup: Setup) -> None:
    setup.ask()
    assert setup.ask()[0] == 429
    assert setup.ask()[0] == 429
    items = next(iter(setup.enforcer._repeats.values()))[5]
    setup.enforcer.over_limit.reset(items)
    assert setup.ask()[0] == 200
    assert setup.upstream_calls == 2


def test_a_block_added_since_wins_over_the_repeated_refusal(setup: Setup) -> None:
    registry = Registry(MemoryRegistry(), ())
    setup.enforcer.add_stage("blocks", blocks(registry), after="identify")
    setup.ask()
    refused = setup.ask()
    assert refused[0] == 429
    registry.put(Block(kind="address", value="127.0.0.1", until=None, reason="flood"))
    registry.refresh()
    assert setup.ask() != refused


def test_a_reload_is_seen_by_the_next_request(setup: Setup) -> None:
    setup.ask()
    assert setup.ask()[0] == 429
    setup.enforcer.use_policy(setup._policy("100/hour"))
    assert setup.ask()[0] == 200


def test_a_key_header_sent_twice_is_not_repeated(setup: Setup) -> None:
    setup.ask()
    assert setup.ask()[0] == 429
    before = setup.admissions
    for twice in ([*HEADERS, (b"x-api-key", b"k-2")], [*HEADERS, (b"X-API-Key", b"k-2")]):
        setup.ask(twice)
        setup.ask(twice)
    assert setup.admissions == before + 4


def test_another_path_query_or_address_runs_admission(setup: Setup) -> None:
    setup.ask()
    setup.ask()
    before = setup.admissions
    setup.ask(path="/tracks/2")
    setup.ask(query=b"page=2")
    setup.ask(client="10.0.0.9")
    setup.ask([(b"host", b"api"), (b"x-api-key", b"k-2")])
    assert setup.admissions == before + 4
    # A path spelled another way is matched on its one spelling, and refused as that one.
    assert setup.ask(path="/tracks/./1")[0] == 429
