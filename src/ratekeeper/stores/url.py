"""Store URLs: ``memory://`` (and the schemes of the other stores) -> a store instance.

A plain scheme -> module table, imported lazily so optional drivers cost nothing unless used.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ratekeeper.errors import StoreURLError
from ratekeeper.stores.memory import MemoryStore

__all__ = ["mask_url", "resolve_store", "store_from_url"]

# scheme://user:password@hosts -> the password part, up to the last '@' of the authority.
_USERINFO_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/?#@]*:)[^/?#]*@", re.IGNORECASE)
_SECRET_OPTION = re.compile(r"([?&](?:password|key_salt)=)[^&#]*", re.IGNORECASE)

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
    """The URL with its password (and any ``password``/``key_salt`` option) shown as ``***``.

    Works on the text, not through ``urlsplit(...).port``, so cluster URLs that list several
    ``host:port`` pairs are masked too.
    """
    return _SECRET_OPTION.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


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


def resolve_store(store: Any) -> Any:
    """The store an option names: a store itself, a store URL, or ``None`` for a new
    in-memory store."""
    if isinstance(store, str):
        return store_from_url(store)
    # ``is None``, not ``or``: an empty store is falsy (it has a length).
    return MemoryStore() if store is None else store
