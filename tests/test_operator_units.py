"""The operator's pieces in process: the registry's stages, unknown-key modes, the near-limit
sample and refusal lines (a memory store and a manual clock; servers in test_operator_*)."""

from __future__ import annotations

import json
import logging

import pytest

from ratekeeper import LimitSet, ManualClock
from ratekeeper.core import decide
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView
from ratekeeper.http.near_limits import NearLimits, merge_samples
from ratekeeper.http.refusals import RefusalLog
from ratekeeper.http.stages.keys import blocks, key_registry
from ratekeeper.policy import loads_policy, preset_path
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.registry import Block, KeyRecord, Registry, key_digest, registry_driver

POLICY = """
body = "{body}"
apply = ["stream"]
[identity]
source = "account"
key_headers = ["X-API-Key"]
anonymous = "reject"
[limits.stream]
rates = "3/minute"
[plans.gold]
stream = "5/minute"
[keys]
unknown = "{unknown}"
[[keys.known]]
key = "a1"
account = "stream-a"
label = "A one"
[[keys.known]]
key = "a2"
account = "stream-a"
"""


def _enforcer(unknown: str, body: str = "plain") -> tuple[Enforcer, Registry, ManualClock]:
    clock = ManualClock(1_800_000_010.0)
    policy = loads_policy(POLICY.format(unknown=unknown, body=body))
    enforcer = Enforcer(policy, store=MemoryStore(), clock=clock)
    registry = Registry(registry_driver("memory://"), policy.keys.known, clock=clock)
    enforcer.add_stage("blocks", blocks(registry, clock), after="identify")
    enforcer.replace_stage("keys", key_registry(registry))
    return enforcer, registry, clock


def _get(enforcer: Enforcer, key: str | None, peer: str = "10.0.0.1") -> int:
    headers = {"x-api-key": key} if key else {}
    ticket = enforcer.admit(RequestView("GET", "/x", headers, peer))
    return 200 if ticket.answer is None else ticket.answer.status


def test_two_keys_of_one_account_share_its_budget() -> None:
    enforcer, _, _ = _enforcer("refuse")
    assert [_get(enforcer, k) for k in ("a1", "a2", "a1", "a2")] == [200, 200, 200, 429]


@pytest.mark.parametrize("body", ["plain", "musique", "aisoule", "radio", "problem"])
def test_an_unknown_key_is_refused_in_the_apis_body_format(body: str) -> None:
    enforcer, _, _ = _enforcer("refuse", body)
    ticket = enforcer.admit(RequestView("GET", "/x", {"x-api-key": "made-up"}, "10.0.0.1"))
    assert ticket.answer is not None and ticket.answer.status == 401
    assert b"made-up" not in ticket.answer.body
    assert ("WWW-Authenticate", "Bearer") in ticket.answer.headers
    if body != "plain":
        json.loads(ticket.answer.body)


def test_unknown_keys_counted_by_address_share_the_address_budget() -> None:
    enforcer, _, _ = _enforcer("ip")
    assert [_get(enforcer, k) for k in ("x1", "x2", "x3", "x4")] == [200, 200, 200, 429]
    assert _get(enforcer, "x5", peer="10.0.0.2") == 200


def test_unknown_keys_under_own_get_a_budget_each() -> None:
    enforcer, _, _ = _enforcer("own")
    assert [_get(enforcer, k) for k in ("x1", "x2", "x3", "x4")] == [200] * 4


def test_a_key_added_at_run_time_gets_its_plan_and_account() -> None:
    enforcer, registry, _ = _enforcer("refuse")
    assert _get(enforcer, "new") == 401
    registry.put(KeyRecord(digest=key_digest("new"), plan="gold", account="stream-b"))
    assert [_get(enforcer, "new") for _ in range(6)] == [200] * 5 + [429]


def test_blocks_of_a_key_an_address_and_a_network_for_a_time() -> None:
    enforcer, registry, clock = _enforcer("own")
    registry.put(Block(kind="key", value=key_digest("bad"), until=clock() + 30))
    registry.put(Block(kind="address", value="10.0.0.9"))
    registry.put(Block(kind="network", value="192.168.0.0/16", until=clock() + 5))
    ticket = enforcer.admit(RequestView("GET", "/x", {"x-api-key": "bad"}, "10.0.0.1"))
    assert ticket.answer is not None and ticket.answer.status == 403
    assert dict(ticket.answer.headers)["Retry-After"] == "30"
    assert _get(enforcer, "a1", peer="10.0.0.9") == 403
    assert _get(enforcer, "a1", peer="192.168.3.4") == 403
    clock.advance(6)
    assert _get(enforcer, "a1", peer="192.168.3.4") == 200
    assert registry.remove("block:address:10.0.0.9")
    assert _get(enforcer, "a1", peer="10.0.0.9") == 200


def _decision(limit_set: LimitSet, key: str, used: int, now: float = 1000.0):  # type: ignore[no-untyped-def]
    entry = None
    for _ in range(used):
        states, _d = decide([(limit_set, key)], [entry], now, 1)
        entry = states[0] if states else entry
    return decide([(limit_set, key)], [entry], now, 0)[1]


def test_the_near_limit_sample_keeps_the_most_used_within_its_size() -> None:
    api = LimitSet("api", "10/minute")
    sample = NearLimits(size=3)
    for n in range(8):
        sample.note(_decision(api, f"k{n}", n), f"label{n}")
    snap = sample.snapshot(1000.0)
    assert sorted(e["key"] for e in snap["api/minute"]) == ["k5", "k6", "k7"]
    other = {"api/minute": [dict(snap["api/minute"][0], key="k9", used=10, remaining=0)]}
    merged = merge_samples([snap, other], 1000.0, top=2)
    assert [e["key"] for e in merged["api/minute"]] == ["k9", "k7"]
    assert sample.snapshot(1e10) == {}


def test_refusal_lines_one_per_caller_per_window_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog()
    caplog.set_level(logging.INFO, logger="ratekeeper.refusals")
    args = {"status": 429, "rule": "r", "zone": "api", "key": "k:1234abcd", "address": "::1"}
    for n in range(100):
        refusals.refused(1000.0 + n / 100, retry_after_s=10.0, **args)  # type: ignore[arg-type]
    refusals.refused(1000.5, retry_after_s=10.0, **{**args, "address": "::2"})  # type: ignore[arg-type]
    assert len(caplog.records) == 2
    refusals.flush(1011.0)
    counts = [r.fields["count"] for r in caplog.records]  # type: ignore[attr-defined]
    assert counts == [1, 1, 99]
    assert "key=k:1234abcd" in caplog.records[0].getMessage()


COST_POLICY = """
body = "problem"
apply = ["api"]
[limits.api]
rates = "100/minute"
[[rules]]
routes = ["/batch"]
cost_header = "X-Batch-Size"
max_cost = 50
[[rules]]
routes = ["/search"]
cost_query = "n"
max_cost = 10
cost = 2
"""


def test_a_batch_is_charged_what_its_header_or_query_says() -> None:
    clock = ManualClock(1_800_000_010.0)
    enforcer = Enforcer(loads_policy(COST_POLICY), store=MemoryStore(), clock=clock)

    def remaining(path: str, headers: dict[str, str], query: str = "") -> str | int:
        ticket = enforcer.admit(RequestView("GET", path, headers, "10.0.0.1", query))
        if ticket.answer is not None:
            return ticket.answer.status
        return dict(ticket.headers)["X-RateLimit-Remaining"]

    assert enforcer.header_names is not None and "x-batch-size" in enforcer.header_names
    assert remaining("/batch", {"x-batch-size": "40"}) == "60"
    assert remaining("/batch", {}) == "59"
    assert remaining("/search", {}, "q=x") == "57"
    assert remaining("/search", {}, "q=x&n=7") == "50"
    for bad in ("0", "51", "-3", "1e3", "²", "99999999999999999999"):
        assert remaining("/batch", {"x-batch-size": bad}) == 400
    ticket = enforcer.admit(RequestView("GET", "/search", {}, "10.0.0.1", "n=11"))
    assert ticket.answer is not None and b"from 1 to 10" in ticket.answer.body


@pytest.mark.parametrize("preset", ["musique", "beatpass", "radio", "musicbrainz", "aisoule"])
def test_unknown_keys_refused_in_each_presets_body_format(preset: str) -> None:
    text = preset_path(preset).read_text().replace('unknown = "own"', 'unknown = "refuse"')
    if "[keys]" not in text:
        text += '\n[keys]\nunknown = "refuse"\n'
    policy = loads_policy(text, preset)
    # The built-in keys stage: the policy's own [keys], as the middlewares run it.
    enforcer = Enforcer(policy, store=MemoryStore(), clock=ManualClock(1_800_000_010.0))
    header = policy.identity.key_headers[0]
    headers = {header: "Bearer made-up" if header == "authorization" else "made-up"}
    headers["user-agent"] = "app/1 (ops@example.com)"
    path = "/v1/shows" if preset == "radio" else "/"
    ticket = enforcer.admit(RequestView("GET", path, headers, "10.0.0.1"))
    assert ticket.answer is not None and ticket.answer.status == 401, preset
    content_type = dict(ticket.answer.headers)["Content-Type"]
    assert "made-up" not in ticket.answer.body.decode()
    if "json" in content_type:
        json.loads(ticket.answer.body)
    if preset == "radio":
        known = {header: headers[header].replace("made-up", "radio-demo-a1")}
        assert enforcer.admit(RequestView("GET", path, known, "10.0.0.1")).answer is None
