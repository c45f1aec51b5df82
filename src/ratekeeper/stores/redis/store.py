"""The Redis / Valkey store: the codec, the wire and the cluster protocol put together."""

from __future__ import annotations

import asyncio
import time

from ratekeeper.decision import Decision
from ratekeeper.errors import RedisStoreError, StoreError, StoreURLError
from ratekeeper.flows import drive, drive_async
from ratekeeper.stores.redis.cluster import ClusterClient, cross_slot_flow, retry_delay
from ratekeeper.stores.redis.codec import Codec, Items, decision, pack
from ratekeeper.stores.redis.url import parse_url
from ratekeeper.stores.redis.wire import Endpoint, Node

__all__ = ["RedisStore"]


class RedisStore:
    """State in Redis or Valkey (standalone or Cluster), shared by every process that uses it.

    ``url`` is a ``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` or
    ``rediss+cluster://`` URL (or the ``valkey`` spellings), options ``?prefix=`` (key prefix,
    default ``rk``), ``?timeout=`` (seconds per command, default 2) and ``?key_salt=`` (a secret
    mixed into the hash of every caller's key: without it, someone who can read Redis can test
    guessed API keys or IPv4 addresses against the key names; every process sharing the state
    needs the same salt). The server is contacted at once: an unreachable one raises
    :class:`StoreError` naming the URL (password and salt masked). Decisions use the server's
    clock; ``use_server_time=False`` makes them use the caller's ``now`` instead, for tests only.
    Concurrent asyncio decisions share writes (``batch_async``, the default) or are each written
    on their own (``batch_async=False``), pipelined on one connection per event loop either way.
    """

    # A decision is a network round trip: asyncio callers await decide_async instead.
    decides_on_loop = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        timeout_s: float | None = None,
        key_salt: str | None = None,
        use_server_time: bool = True,
        batch_async: bool = True,
    ) -> None:
        parsed = parse_url(url, prefix=prefix, timeout_s=timeout_s, key_salt=key_salt)
        self.url = parsed.masked
        self.prefix = parsed.prefix
        self.cluster = parsed.cluster
        self.use_server_time = use_server_time
        self.batch_async = batch_async
        self._password = parsed.password
        self._codec = Codec(parsed.prefix, parsed.key_salt, use_server_time=use_server_time)
        self._cluster: ClusterClient | None = None
        self._node: Node | None = None
        try:
            endpoint = Endpoint.from_url(parsed.target)
            if parsed.cluster:
                seeds = [(endpoint.host, endpoint.port), *parsed.extra_nodes]
                self._cluster = ClusterClient(
                    endpoint, seeds, parsed.timeout_s, coalesce=batch_async
                )
                self._cluster.start()
            else:
                self._node = Node(endpoint, parsed.timeout_s, coalesce=batch_async)
                self._node.call(pack(b"PING"))
        except (TypeError, ValueError) as exc:
            raise StoreURLError(
                f"bad option in the Redis store URL {self.url}: {self._clean(exc)} "
                "(expected redis-py's connection options)"
            ) from exc
        except Exception as exc:
            raise StoreError(
                f"cannot use the Redis store at {self.url}: {self._clean(exc)} "
                "(expected a reachable Redis or Valkey server)"
            ) from exc

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """Build a store from its URL; see the class docstring for the options."""
        return cls(url)

    def __repr__(self) -> str:
        kind = "cluster" if self.cluster else "standalone"
        salted = ", salted keys" if self._codec.salted else ""
        return f"<RedisStore {self.url} {kind} prefix={self.prefix!r}{salted}>"

    @property
    def sharded(self) -> bool:
        """Whether this store talks to a cluster (its masters fail one at a time)."""
        return self.cluster

    def shard_of(self, items: Items) -> str:
        """The masters that serve these items now (``host:port``, ``+``-joined): a decision
        fails when one of them does, and only decisions on a failed master do."""
        cluster = self._cluster
        if cluster is None:
            return self.url
        topology = cluster.topology
        slots = set(self._codec.placed(items)[1])
        return "+".join(sorted({topology.shard(slot) for slot in slots}))

    # -- the synchronous driver -------------------------------------------------------------

    def decide(self, items: Items, cost: int, now: float, *, peek: bool = False) -> Decision:
        """Decide and charge (unless ``peek``) atomically, in one round trip per slot."""
        attempt = 0
        while True:
            try:
                node = self._node
                if node is not None:
                    call, n_limits = self._codec.marshal(items, cost, now, peek)
                    return decision(node.script(call), items, n_limits)
                cluster: ClusterClient = self._cluster  # type: ignore[assignment]
                names, slots = placed = self._codec.placed(items)
                if slots.count(slots[0]) == len(slots):
                    call, n_limits = self._codec.marshal(items, cost, now, peek, keys=names)
                    reply = cluster.script(slots[0], call)
                    return decision(reply, items, n_limits)
                flow = cross_slot_flow(self._codec, items, cost, now, peek, placed)
                return drive(flow, cluster.run)
            except Exception as exc:
                delay = retry_delay(exc, attempt)
                if delay is None:
                    # Whatever failed (the wire, a refusal, an unreadable reply), the caller
                    # sees a StoreError: its fail mode applies, nothing else escapes.
                    raise self._error("decide", exc) from exc
            time.sleep(delay)
            attempt += 1

    def reset(self, items: Items) -> None:
        """Forget the state of these keys: they start afresh."""
        keys = [self._codec.key(limit_set, key) for limit_set, key in items]
        try:
            if self._cluster is not None:
                self._cluster.delete(keys)
            elif keys:
                node: Node = self._node  # type: ignore[assignment]
                reply = node.call(pack(b"DEL", *(k.encode() for k in keys)))
                if isinstance(reply, Exception):
                    raise reply
        except Exception as exc:
            raise self._error("reset", exc) from exc

    def close(self) -> None:
        """Close the synchronous connections (the async ones close with :meth:`close_async`)."""
        if self._node is not None:
            self._node.close()
        if self._cluster is not None:
            self._cluster.close()

    # -- the asyncio driver -----------------------------------------------------------------

    async def decide_async(
        self, items: Items, cost: int, now: float, *, peek: bool = False
    ) -> Decision:
        """The asyncio twin of :meth:`decide`; concurrent calls share pipelines."""
        attempt = 0
        while True:
            try:
                node = self._node
                if node is not None:
                    call, n_limits = self._codec.marshal(items, cost, now, peek)
                    return decision(await node.script_async(call), items, n_limits)
                cluster: ClusterClient = self._cluster  # type: ignore[assignment]
                names, slots = placed = self._codec.placed(items)
                if slots.count(slots[0]) == len(slots):
                    call, n_limits = self._codec.marshal(items, cost, now, peek, keys=names)
                    reply = await cluster.script_async(slots[0], call)
                    return decision(reply, items, n_limits)
                flow = cross_slot_flow(self._codec, items, cost, now, peek, placed)
                return await drive_async(flow, cluster.run_async)
            except Exception as exc:
                delay = retry_delay(exc, attempt)
                if delay is None:
                    raise self._error("decide", exc) from exc
            await asyncio.sleep(delay)
            attempt += 1

    async def reset_async(self, items: Items) -> None:
        """The asyncio twin of :meth:`reset`."""
        keys = [self._codec.key(limit_set, key) for limit_set, key in items]
        try:
            if self._cluster is not None:
                await self._cluster.delete_async(keys)
            elif keys:
                node: Node = self._node  # type: ignore[assignment]
                reply = await node.call_async(pack(b"DEL", *(k.encode() for k in keys)))
                if isinstance(reply, Exception):
                    raise reply
        except Exception as exc:
            raise self._error("reset", exc) from exc

    async def close_async(self) -> None:
        """Close the asyncio connections of the running event loop."""
        if self._node is not None:
            await self._node.close_async()
        if self._cluster is not None:
            await self._cluster.close_async()

    # -- errors -----------------------------------------------------------------------------

    def _clean(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _error(self, action: str, exc: BaseException) -> RedisStoreError:
        text = self._clean(exc)
        if "CLUSTERDOWN" in text:
            # The operator's fix, where they will look for it.
            text += (
                " (with cluster-require-full-coverage yes, every master refuses while one slot "
                "range has none: set it to no, see docs/redis.md)"
            )
        return RedisStoreError(f"Redis store {self.url} failed to {action}: {text}")
