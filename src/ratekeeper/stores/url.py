"""Store URLs: ``memory://`` (and the schemes of the other stores) -> a store instance.

A plain scheme -> module table, imported lazily so optional drivers cost nothing unless used.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ratekeeper.errors import StoreURLError

__all__ = ["mask_url", "store_from_url"]

# scheme -> (module, class with a ``from_url`` constructor)
_SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("ratekeeper.stores.memory", "MemoryStore"),
    "sqlite": ("ratekeeper.stores.sqlite", "SQLiteStore"),
    "redis": ("ratekeeper.stores.redis", "RedisStore"),
    "rediss": ("ratekeeper.stores.redis", "RedisStore"),
    "redis+cluster": ("ratekeeper.stores.redis", "RedisStore"),
    "rediss+cluster": ("ratekeeper.stores.redis", "RedisStore"),
    "valkey": ("ratekeeper.stores.redis", "RedisStore"),
    "valkeys": ("ratekeeper.stores.redis", "RedisStore"),
    "valkey+cluster": ("ratekeeper.stores.redis", "RedisStore"),
    "valkeys+cluster": ("ratekeeper.stores.redis", "RedisStore"),
}


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for errors and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def store_from_url(url: str) -> Any:
    """Build the store a URL names; unknown schemes raise :class:`StoreURLError`."""
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(f"not a store URL: {mask_url(str(url))!r} (expected e.g. 'memory://')")
    scheme = url.split("://", 1)[0].lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise StoreURLError(f"unknown store scheme in {mask_url(url)!r}: known schemes are {known}")
    module_name, class_name = target
    return getattr(importlib.import_module(module_name), class_name).from_url(url)
