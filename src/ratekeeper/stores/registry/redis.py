"""Registry entries in Redis or Valkey (standalone or Cluster), shared by every instance.

Three keys under one hash tag, so a Cluster keeps them in one slot and each operation is one
script: ``<prefix>:{registry}:version`` (a counter every write raises),
``<prefix>:{registry}:entries`` (a hash: id -> body) and ``<prefix>:{registry}:log`` (a sorted
set: id scored by the version that last wrote it), from which a reader takes only the ids
written after the version it has. A fourth hash, ``:samples``, holds the workers' samples.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import redis.cluster
from redis.exceptions import RedisClusterException, RedisError

from ratekeeper.errors import StoreError
from ratekeeper.stores.redis.url import parse_url
from ratekeeper.stores.registry.drivers import Changes

__all__ = ["RedisRegistry"]

_WRITE = """
local v = redis.call('INCR', KEYS[1])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('ZADD', KEYS[3], v, ARGV[1])
return v
"""

_CHANGES = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[1])
if v == since then return {v, 0} end
local full = 0
if since > v or since == 0 then full = 1; since = 0 end
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')
local out = {v, full}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
end
return out
"""

_ERRORS = (RedisError, RedisClusterException, OSError)


class RedisRegistry:
    """Registry entries on the Redis server of a ``redis://`` (or cluster) store URL."""

    def __init__(self, url: str) -> None:
        parsed = parse_url(url, prefix=None, timeout_s=None, key_salt=None)
        self.url = parsed.masked
        tag = f"{parsed.prefix}:{{registry}}"
        self._keys = [f"{tag}:version", f"{tag}:entries", f"{tag}:log"]
        self._samples = f"{tag}:samples"
        self._lock = threading.Lock()
        options: dict[str, Any] = {
            "socket_timeout": parsed.timeout_s,
            "socket_connect_timeout": parsed.timeout_s,
        }
        try:
            if parsed.cluster:
                nodes = [
                    redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                    for h, p in parsed.extra_nodes
                ]
                self._client: Any = redis.cluster.RedisCluster.from_url(
                    parsed.target, startup_nodes=nodes or None, **options
                )
            else:
                self._client = redis.Redis.from_url(parsed.target, **options)
            self._write = self._client.register_script(_WRITE)
            self._changes = self._client.register_script(_CHANGES)
        except _ERRORS as exc:
            raise StoreError(f"Redis registry {self.url}: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"<RedisRegistry {self.url}>"

    def _call(self, what: str, work: Any) -> Any:
        try:
            return work()
        except _ERRORS as exc:
            raise StoreError(
                f"Redis registry {self.url}: {what} failed: {type(exc).__name__}: {exc}"
            ) from None

    def changes(self, since: int) -> Changes:
        """See :meth:`~ratekeeper.stores.registry.drivers.RegistryDriver.changes`."""
        reply = self._call("reading changes", lambda: self._changes(self._keys, [since]))
        version, full = int(reply[0]), bool(reply[1])
        rest = reply[2:]
        found = [
            (rest[i].decode(), rest[i + 1].decode() if rest[i + 1] is not None else None)
            for i in range(0, len(rest), 2)
        ]
        return version, full, found

    def write(self, entry_id: str, body: str | None) -> int:
        """See :meth:`~ratekeeper.stores.registry.drivers.RegistryDriver.write`."""
        args = [entry_id, "1" if body is not None else "0", body or ""]
        return int(self._call("a write", lambda: self._write(self._keys, args)))

    def publish(self, name: str, body: str, ttl_s: float) -> None:
        """See :meth:`~ratekeeper.stores.registry.drivers.RegistryDriver.publish`."""
        value = f"{time.time() + ttl_s:.3f}|{body}"
        self._call("publishing a sample", lambda: self._client.hset(self._samples, name, value))

    def samples(self) -> list[str]:
        """See :meth:`~ratekeeper.stores.registry.drivers.RegistryDriver.samples`."""
        stored = self._call("reading samples", lambda: self._client.hgetall(self._samples))
        now = time.time()
        out, expired = [], []
        for name, value in stored.items():
            until, _, body = value.decode().partition("|")
            if float(until) >= now:
                out.append(body)
            else:
                expired.append(name)
        if expired:
            self._call("pruning samples", lambda: self._client.hdel(self._samples, *expired))
        return out

    def close(self) -> None:
        """Close the connections."""
        self._client.close()
