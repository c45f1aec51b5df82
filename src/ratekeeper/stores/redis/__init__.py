"""The Redis / Valkey store: one Lua script decides, charges and expires, in one round trip.

The algorithms exist here a second time, in ``lua/decide.lua``, because a decision must read
and write every limit's state atomically on the server; Python only marshals arguments and
replies. The script mirrors :mod:`ratekeeper.algorithms` operation for operation and is checked
against it by differential property tests. Decisions use the server clock (``TIME``), so
application servers with skewed clocks cannot stretch a limit.

Keys are ``<prefix>:{<blake2b(key)>}:<limit_set.id>``: the caller's key (an API key, an IP)
is never stored, only its hash, and the hash is the cluster hash tag, so every limit set of one
identity lives in one slot and a decision about it is one script call.

The package, from the inside out:

- :mod:`.url`: the store URL (scheme, hosts, the store's options, redis-py's options);
- :mod:`.codec`: key names, the script's packed arguments and replies, the NOSCRIPT recovery,
  all free of I/O;
- :mod:`.wire`: RESP on connections of our own (hiredis), blocking and asyncio-pipelined;
- :mod:`.topology`: a cluster's slot map and which masters are down;
- :mod:`.cluster`: the cross-slot decide / undo protocol and the cluster's calls (routed by
  the slot map, ``MOVED`` / ``ASK`` followed, on the same connections as standalone);
- :mod:`.store`: :class:`RedisStore`, which puts them together;
- :mod:`.fail_modes`: :class:`~.fail_modes.ShardFallbackStore`, fail modes per cluster master.

Running it in production (replication, failover, persistence, fail modes): ``docs/redis.md``.
"""

from ratekeeper.errors import RedisStoreError, StoreError

try:
    import hiredis  # noqa: F401
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise StoreError("the Redis store needs redis-py: pip install 'ratekeeper[redis]'") from exc

from ratekeeper.stores.redis.store import RedisStore

__all__ = ["RedisStore", "RedisStoreError"]
