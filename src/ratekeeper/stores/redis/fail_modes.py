"""Fail modes per cluster master: :class:`ShardFallbackStore` (kept importable from here; it works
for any sharded store and lives in :mod:`ratekeeper.stores.fallback_shards`)."""

from ratekeeper.stores.fallback_shards import ShardFallbackStore

__all__ = ["ShardFallbackStore"]
