"""The key registry: entries and versions on every driver, views, blocks, propagation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.redis_servers import redis_cluster, redis_server

from ratekeeper.errors import RegistryError, StoreError
from ratekeeper.http.identity import hash_secret
from ratekeeper.stores.registry import Block, KeyRecord, Registry, key_digest, registry_driver
from ratekeeper.stores.registry.model import RegistryView


@pytest.fixture(params=["memory", "sqlite", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    elif request.param == "redis":
        with redis_server(tmp_path / "redis") as server:
            yield server.url
    else:
        with redis_cluster(tmp_path / "cluster") as nodes:
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)


def test_the_digest_is_the_one_identity_computes() -> None:
    assert key_digest("demo-key") == hash_secret("demo-key")
    assert len(key_digest("x")) == 24


def test_changes_since_a_version_on_every_driver(store_url: str) -> None:
    driver = registry_driver(store_url)
    try:
        assert driver.changes(0) == (0, False, [])
        v1 = driver.write("key:" + "a" * 24, '{"hash": "' + "a" * 24 + '"}')
        v2 = driver.write("block:address:10.0.0.1", '{"kind": "address", "value": "10.0.0.1"}')
        assert v2 == v1 + 1
        version, full, found = driver.changes(v1)
        assert (version, full) == (v2, False)
        assert [entry_id for entry_id, _ in found] == ["block:address:10.0.0.1"]
        driver.write("block:address:10.0.0.1", None)
        version, full, found = driver.changes(v2)
        assert found == [("block:address:10.0.0.1", None)]
        # A reader from a version the store never had (it was emptied) reads everything.
        version, full, found = driver.changes(version + 100)
        assert full and {entry_id for entry_id, _ in found} >= {"key:" + "a" * 24}
        driver.publish("worker-1", '{"x": 1}', 5.0)
        driver.publish("worker-2", '{"x": 2}', -1.0)
        assert driver.samples() == ['{"x": 1}']
    finally:
        driver.close()


def test_two_registries_on_one_store_see_each_others_edits(store_url: str) -> None:
    if store_url == "memory://":
        pytest.skip("memory is one process's registry")
    a = Registry(registry_driver(store_url), interval_s=0.05)
    b = Registry(registry_driver(store_url), interval_s=0.05)
    b.start()
    try:
        digest = key_digest("radio-key-1")
        a.put(KeyRecord(digest=digest, label="Stream A app", account="stream-a"))
        a.put(Block(kind="network", value="10.1.0.0/16", until=None, reason="abuse"))
        deadline = time.monotonic() + 5
        while digest not in b.view.keys and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.view.keys[digest].account == "stream-a"
        deadline = time.monotonic() + 5
        while not b.view.network_blocks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.view.blocked(None, "10.1.2.3", time.time()) is not None
        assert a.remove("block:network:10.1.0.0/16")
        assert not a.remove("block:network:10.1.0.0/16")
        deadline = time.monotonic() + 5
        while b.view.network_blocks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.view.blocked(None, "10.1.2.3", time.time()) is None
    finally:
        a.stop()
        b.stop()


def test_policy_keys_are_the_base_and_runtime_entries_win() -> None:
    digest = key_digest("k")
    registry = Registry(
        registry_driver("memory://"), [KeyRecord(digest=digest, label="file", source="policy")]
    )
    assert registry.view.keys[digest].label == "file"
    registry.put(KeyRecord(digest=digest, label="runtime", plan="enterprise"))
    assert registry.view.keys[digest].label == "runtime"
    registry.set_base([])
    assert registry.view.keys[digest].plan == "enterprise"


def test_blocks_expire_and_match_by_kind() -> None:
    digest = key_digest("abuser")
    view = RegistryView.build(
        1,
        (),
        {
            "a": '{"kind": "key", "value": "' + digest + '", "until": 100.0, "reason": ""}',
            "b": '{"kind": "address", "value": "::1", "until": null, "reason": ""}',
            "c": "not json",
        },
    )
    assert view.blocked(digest, "1.2.3.4", 99.0) is not None
    assert view.blocked(digest, "1.2.3.4", 100.0) is None
    assert view.blocked(None, "::1", 1e12) is not None
    assert view.blocked(None, "not-an-ip", 0.0) is None


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("key", "raw-api-key", "key digest"),
        ("address", "10.0.0.0/8", "an IP address"),
        ("network", "nope", "CIDR network"),
        ("user", "x", "block kind"),
    ],
)
def test_bad_blocks_are_refused_with_what_was_expected(kind: str, value: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        Block(kind=kind, value=value)  # type: ignore[arg-type]


def test_a_raw_key_is_never_accepted_as_a_digest() -> None:
    with pytest.raises(RegistryError, match="24 hex digits"):
        KeyRecord(digest="sk_live_0123456789abcdef01234567")


def test_an_unreachable_redis_registry_raises_a_store_error() -> None:
    driver = registry_driver("redis://127.0.0.1:1/0?timeout=0.2")
    with pytest.raises(StoreError, match="Redis registry"):
        driver.changes(0)
