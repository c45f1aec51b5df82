"""Redis store URLs: scheme, hosts, the store's own options and the rest for redis-py.

``redis://``, ``rediss://`` (TLS), ``redis+cluster://``, ``rediss+cluster://`` and the
``valkey`` spellings. ``?prefix=``, ``?timeout=`` and ``?key_salt=`` are the store's own; every
other option is redis-py's (read by its own parser, so it means what it means there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ratekeeper.errors import StoreURLError
from ratekeeper.stores.url import mask_url

__all__ = ["RedisURL", "parse_url"]

_STANDALONE = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
_CLUSTER = {
    "redis+cluster": "redis",
    "rediss+cluster": "rediss",
    "valkey+cluster": "redis",
    "valkeys+cluster": "rediss",
}
_OWN_OPTIONS = {"prefix", "timeout", "key_salt"}


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A store URL read: where to connect and the store's own settings."""

    masked: str
    cluster: bool
    # The first host as a redis-py URL (its options included) and, for a cluster, the others.
    target: str = field(repr=False)
    extra_nodes: tuple[tuple[str, int], ...]
    prefix: str
    timeout_s: float
    key_salt: str = field(repr=False)
    password: str = field(repr=False)


def parse_url(
    url: str, *, prefix: str | None, timeout_s: float | None, key_salt: str | None
) -> RedisURL:
    """Read a store URL; arguments given explicitly win over the URL's options.

    Raises :class:`StoreURLError` naming the URL (password and salt masked) and what is expected.
    """
    masked = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreURLError(f"malformed Redis store URL {masked!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    base = _STANDALONE.get(scheme) or _CLUSTER.get(scheme)
    if base is None:
        known = ", ".join(f"{s}://" for s in (*_STANDALONE, *_CLUSTER))
        raise StoreURLError(f"not a Redis store URL: {masked!r} (expected one of {known})")
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in _OWN_OPTIONS}
    passthrough = urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
    userinfo, _, hosts = parts.netloc.rpartition("@")
    host_list = [h for h in hosts.split(",") if h] or ["127.0.0.1:6379"]
    extra: list[tuple[str, int]] = []
    if scheme in _CLUSTER:
        for host in host_list[1:]:
            name, _, port = host.rpartition(":")
            if not port.isdigit():
                raise StoreURLError(f"cluster node {host!r} needs host:port in {masked!r}")
            extra.append((name.strip("[]"), int(port)))
    elif len(host_list) > 1:
        raise StoreURLError(f"several hosts given in {masked!r}: only cluster URLs take a list")
    netloc = f"{userinfo}@{host_list[0]}" if userinfo else host_list[0]
    return RedisURL(
        masked=masked,
        cluster=scheme in _CLUSTER,
        target=urlunsplit((base, netloc, parts.path, passthrough, "")),
        extra_nodes=tuple(extra),
        prefix=_prefix(options.get("prefix", "rk") if prefix is None else prefix, masked),
        timeout_s=_timeout(options.get("timeout", "2") if timeout_s is None else timeout_s, masked),
        key_salt=options.get("key_salt", "") if key_salt is None else key_salt,
        password=parts.password or "",
    )


def _prefix(prefix: str, masked: str) -> str:
    # Braces would make the prefix a cluster hash tag and put every key in one slot.
    if not prefix or any(c in prefix for c in "{}"):
        raise StoreURLError(
            f"key prefix must be non-empty without '{{' or '}}', got {prefix!r} (store {masked})"
        )
    return prefix


def _timeout(raw: str | float, masked: str) -> float:
    try:
        timeout_s = float(raw)
    except ValueError:
        timeout_s = math.nan
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise StoreURLError(f"timeout must be a number of seconds > 0 in store {masked}")
    return timeout_s
