"""Refusals the decision endpoint repeats without running admission again (the over-limit
cache knows the key, and nothing the request went through has changed): the same answer byte
for byte, and never once something that would change it has (a block, a reset, a repeated or
differently spelled key header, a stage that is not repeatable)."""

from __future__ import annotations

import asyncio
from typing import Any

from ratekeeper import ManualClock
from ratekeeper.gateway.decide import decide
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Context, Kit, Stage, Ticket
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
rates = "1/hour"
algorithm = "first_hit_window"
"""

HEADERS = [
    (b"host", b"ratekeeper"),
    (b"x-api-key", b"k-1"),
    (b"x-original-uri", b"/tracks/1"),
    (b"x-original-method", b"GET"),
    (b"x-ratekeeper-deny-status", b"403"),
]


def _enforcer(tmp_path: Any) -> Enforcer:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return Enforcer(load_policy(path), store="memory://", clock=ManualClock(1_700_000_000.0))


def _ask(enforcer: Enforcer, headers: list[tuple[bytes, bytes]] = HEADERS) -> tuple[int, Any]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/_ratekeeper/decide",
        "raw_path": b"/_ratekeeper/decide",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(decide(enforcer, scope, send, enforcer.header_names))
    return sent[0]["status"], (sent[0]["headers"], sent[1]["body"])


def _counted(enforcer: Enforcer) -> float:
    labels = {"rule": "default", "zone": "caller", "outcome": "rejected"}
    return enforcer.metrics.value("ratekeeper_requests_total", labels)


def test_a_repeated_refusal_is_the_same_answer_and_is_counted(tmp_path: Any) -> None:
    enforcer = _enforcer(tmp_path)
    assert _ask(enforcer)[0] == 200
    first = _ask(enforcer)
    assert first[0] == 403
    assert enforcer._repeats, "the refusal was kept for its repeats"
    seen: list[Ticket] = []
    enforcer.observe(lambda ctx, ticket: seen.append(ticket))
    for _ in range(3):
        assert _ask(enforcer) == first
    assert len(seen) == 3
    assert _counted(enforcer) == 4


def test_a_block_added_since_wins_over_the_repeated_refusal(tmp_path: Any) -> None:
    enforcer = _enforcer(tmp_path)
    registry = Registry(MemoryRegistry(), ())
    enforcer.add_stage("blocks", blocks(registry), after="identify")
    _ask(enforcer)
    assert _ask(enforcer)[0] == 403
    registry.put(Block(kind="address", value="127.0.0.1", until=None, reason="flood"))
    registry.refresh()
    status, (headers, _) = _ask(enforcer)
    assert status == 403
    assert (b"x-ratekeeper-status", b"429") not in headers


def test_a_reset_is_seen_by_the_next_request(tmp_path: Any) -> None:
    enforcer = _enforcer(tmp_path)
    _ask(enforcer)
    assert _ask(enforcer)[0] == 403
    assert _ask(enforcer)[0] == 403
    items = next(iter(enforcer._repeats.values()))[5]
    enforcer.over_limit.reset(items)
    assert _ask(enforcer)[0] == 200


def test_a_key_header_sent_twice_is_refused_though_the_request_was_seen(tmp_path: Any) -> None:
    enforcer = _enforcer(tmp_path)
    _ask(enforcer)
    _ask(enforcer)
    twice = [*HEADERS, (b"x-api-key", b"k-2")]
    assert _ask(enforcer, twice)[0] == 403
    _, (headers, _) = _ask(enforcer, twice)
    assert (b"x-ratekeeper-status", b"400") in headers
    # The second one spelled in capitals (a server that does not lower-case names): still two.
    spelled = [*HEADERS, (b"X-API-Key", b"k-2")]
    _, (headers, _) = _ask(enforcer, spelled)
    assert (b"x-ratekeeper-status", b"400") in headers


def test_a_stage_that_is_not_repeatable_runs_for_every_request(tmp_path: Any) -> None:
    enforcer = _enforcer(tmp_path)
    calls: list[str] = []

    def make(kit: Kit) -> Stage:
        def stage(ctx: Context) -> None:
            calls.append(ctx.view.path)

        return stage

    enforcer.add_stage("audit", make, after="identify")
    for _ in range(4):
        _ask(enforcer)
    assert calls == ["/tracks/1"] * 4
    assert not enforcer._repeats
