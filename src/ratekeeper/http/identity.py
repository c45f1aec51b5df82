"""Who is asking: a minimal request view in, the store keys of the caller out.

Secrets never become store keys: API keys (and values returned by hooks) are hashed. A client's
address comes from one header, ``X-Forwarded-For`` unless the policy names another
(``identity.client_ip_header``: ``Forwarded``, ``X-Real-IP``...), and only when the peer is a
configured trusted proxy, walking the chain from the right and skipping trusted hops: what a
client wrote itself is to the left of what its proxy appended, so it is never reached. Every
other forwarding header is ignored, so a client cannot pick its address through one the proxy
does not rewrite.

Ambiguous credentials never become an identity: a key header sent twice (joined into a list) or
two key headers naming different keys is a conflict (:meth:`Identifier.key_conflict`), refused
with 400, because the upstream may read another of the keys than the one that would be counted.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ratekeeper.clock import Clock, system_clock
from ratekeeper.errors import PolicyError

__all__ = [
    "Caller",
    "Identifier",
    "RequestView",
    "TTLCache",
    "account_key",
    "client_ip",
    "hash_secret",
    "load_hook",
]

log = logging.getLogger("ratekeeper.http")

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_MISSING: Any = object()
# Values used verbatim in store keys must be short and plain; anything else is hashed.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@+")


@dataclass(frozen=True, slots=True)
class RequestView:
    """What ratekeeper needs of a request: ``headers`` has lower-case names (repeated headers
    joined with ``", "``); ``peer`` is the address of the socket's other end. ``request`` is
    the framework's own request object when a framework integration admits the request (what
    identity callables and key and cost functions receive), else ``None``."""

    method: str
    path: str
    headers: Mapping[str, str]
    peer: str | None
    query: str = ""
    request: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identified caller: ``keys`` maps each scope in use to a store key.

    ``api_key`` is kept only in memory for plan and account lookups; it never leaves.
    """

    keys: Mapping[str, str]
    ip: str
    api_key: str | None
    plan: str | None
    label: str

    def __repr__(self) -> str:
        return f"<Caller {self.label} ip={self.ip} plan={self.plan}>"


# Callers repeat: memoised, a digest is a dict lookup instead of a hash per request. Bounded, and
# the secrets it holds were in this process's memory anyway.
@functools.lru_cache(maxsize=65_536)
def hash_secret(value: str) -> str:
    """A short stable digest of a secret, safe for store keys and logs."""
    return hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def _plain_or_hashed(value: str) -> str:
    if len(value) <= 64 and all(c in _PLAIN for c in value):
        return value
    return "#" + hash_secret(value)


def account_key(account: str) -> str:
    """The store key of an account's shared budget (as :meth:`Identifier.identify` makes it)."""
    return "a:" + _plain_or_hashed(account)


def load_hook(spec: str, where: str) -> Callable[..., Any]:
    """Import ``"package.module:function"``; errors name ``where`` (file and key path)."""
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PolicyError(
            f"{where}: expected an importable function, got {spec!r}: {exc}"
        ) from None
    if not callable(target):
        raise PolicyError(f"{where}: expected a callable, {spec!r} is {type(target).__name__}")
    return target  # type: ignore[no-any-return]


class TTLCache:
    """A bounded dict whose entries expire ``ttl_s`` after they were stored."""

    __slots__ = ("_clock", "_data", "max_entries", "ttl_s")

    def __init__(self, ttl_s: float, clock: Clock, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        """The cached value, or the module's ``_MISSING`` sentinel."""
        item = self._data.get(key)
        if item is None or item[0] <= self._clock():
            return _MISSING
        return item[1]

    def put(self, key: str, value: Any) -> None:
        """Store ``value``; when full, the oldest tenth goes first."""
        data = self._data
        if len(data) >= self.max_entries and key not in data:
            for old in list(data)[: max(1, self.max_entries // 10)]:
                del data[old]
        data[key] = (self._clock() + self.ttl_s, value)


def _parse_networks(texts: Iterable[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` addresses of an RFC 7239 ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            addr = raw.strip().strip('"')
            if addr.startswith("["):
                addr = addr[1 : addr.find("]")] if "]" in addr else ""
            elif addr.count(":") == 1:
                addr = addr.split(":", 1)[0]
            out.append(addr)
    return out


def _normalise(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def client_ip(
    peer: str | None,
    headers: Mapping[str, str],
    trusted: tuple[_Network, ...],
    header: str = "x-forwarded-for",
) -> str:
    """The client's address: the peer, unless it is a trusted proxy, in which case the
    rightmost untrusted address of the chain in ``header`` (lower-case; ``forwarded`` is read
    as RFC 7239, any other as comma-separated addresses); a malformed hop stops the walk."""
    address = peer or "unknown"
    if not trusted or peer is None:
        return address
    current = _normalise(peer)
    if current is None or not _in(current, trusted):
        return address
    value = headers.get(header)
    if not value:
        return current
    chain = _forwarded_for(value) if header == "forwarded" else value.split(",")
    for hop in reversed(chain):
        parsed = _normalise(hop)
        if parsed is None:
            break
        current = parsed
        if not _in(parsed, trusted):
            break
    return current


def _spelled(header: str) -> str:
    """A lower-case header name as people write it (``X-API-Key``, ``Authorization: Bearer``)."""
    if header == "authorization":
        return "Authorization: Bearer"
    words = header.split("-")
    return "-".join(w.upper() if w in ("api", "id", "ip") else w.capitalize() for w in words)


def _in(address: str, networks: tuple[_Network, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in networks)


class Identifier:
    """Turns a :class:`RequestView` into a :class:`Caller` (or ``None`` when a required
    API key is missing), computing only the scopes the policy uses."""

    def __init__(
        self,
        *,
        source: str,
        key_headers: tuple[str, ...],
        anonymous: str,
        trusted_proxies: Iterable[str],
        scopes: Iterable[str],
        function: Callable[[RequestView], str | None] | None = None,
        accounts: Mapping[str, str] | None = None,
        account_hook: Callable[[str], str | None] | None = None,
        account_ttl_s: float = 60.0,
        plan_keys: Mapping[str, str] | None = None,
        plan_hook: Callable[[str], str | None] | None = None,
        plan_ttl_s: float = 60.0,
        client_ip_header: str = "X-Forwarded-For",
        clock: Clock = system_clock,
    ) -> None:
        self.source = source
        self.client_ip_header = client_ip_header.lower()
        self.key_headers = key_headers
        self.anonymous = anonymous
        self.trusted = _parse_networks(trusted_proxies)
        self.scopes = frozenset(scopes) | {"caller"}
        self.function = function
        self.accounts = dict(accounts or {})
        self.account_hook = account_hook
        self.plan_keys = dict(plan_keys or {})
        self.plan_hook = plan_hook
        self._account_cache = TTLCache(account_ttl_s, clock)
        self._plan_cache = TTLCache(plan_ttl_s, clock)
        self._ip_cache: dict[tuple[str | None, str | None], str] = {}
        # Callers repeat: without hooks (whose answers may change) a caller is made once per
        # address, key and (where a scope reads it) User-Agent, and kept (bounded).
        self._reads_agent = "ip_ua" in self.scopes or source == "ip_ua"
        hooked = function or account_hook or plan_hook
        self._callers: dict[tuple[str, str | None, str | None], Caller | None] | None = (
            None if hooked else {}
        )
        # X-Forwarded-For is read even without trusted proxies, to warn about servers that
        # rewrite the peer address from it.
        wanted = {"user-agent", "x-forwarded-for"} | set(key_headers)
        if self.trusted:
            wanted.add(self.client_ip_header)
        self.header_names: frozenset[str] | None = None if function else frozenset(wanted)

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """The API key from the first configured header present (``Bearer`` for Authorization)."""
        for name in self.key_headers:
            value = headers.get(name)
            if not value:
                continue
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    continue
                value = token
            value = value.strip()
            if value:
                return value
        return None

    def key_conflict(self, headers: Mapping[str, str]) -> str | None:
        """Why the request's API key is ambiguous, or ``None``: a key header sent more than once
        (its values joined with commas, which no key holds) or key headers naming different keys.

        Counting one of them would let the others be a fresh budget each while the upstream
        authenticates the real one, and which one an upstream reads differs between servers.
        """
        found: str | None = None
        for name in self.key_headers:
            value = headers.get(name)
            if not value:
                continue
            if name == "authorization":
                scheme, _, value = value.partition(" ")
                # Other schemes (Basic, Digest) carry no key here, and Digest holds commas.
                if scheme.lower() != "bearer":
                    continue
            value = value.strip()
            if "," in value:
                return f"{_spelled(name)} was sent more than once; send one API key."
            if found is not None and value and value != found:
                names = " and ".join(_spelled(n) for n in self.key_headers)
                return f"{names} name different API keys; send one API key."
            found = found or value or None
        return None

    def _ip(self, view: RequestView) -> str:
        if not self.trusted:
            return view.peer or "unknown"
        headers = view.headers
        probe = (view.peer, headers.get(self.client_ip_header))
        found = self._ip_cache.get(probe)
        if found is None:
            found = client_ip(view.peer, headers, self.trusted, self.client_ip_header)
            if len(self._ip_cache) >= 10_000:
                self._ip_cache.clear()
            self._ip_cache[probe] = found
        return found

    def _lookup(self, cache: TTLCache, table: Mapping[str, str], hook: Any, key: str) -> str | None:
        found = table.get(key)
        if found is not None or hook is None:
            return found
        digest = hash_secret(key)
        cached = cache.get(digest)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        try:
            value = hook(key)
        except Exception:
            log.warning("lookup hook %r failed for key #%s", hook, digest, exc_info=True)
            value = None
        result = value if isinstance(value, str) and value else None
        cache.put(digest, result)
        return result

    def _call(self, view: RequestView) -> str | None:
        function = self.function
        if function is None:
            return None
        try:
            value = function(view)
        except Exception:
            # A failing hook must not turn into a 500: the caller counts as anonymous.
            log.warning("identity callable %r failed", function, exc_info=True)
            return None
        return "c:" + _plain_or_hashed(value) if isinstance(value, str) and value else None

    def identify(self, view: RequestView) -> Caller | None:
        """The caller, or ``None`` when the policy requires an API key and there is none."""
        ip = self._ip(view)
        api_key = self.api_key(view.headers) if self.key_headers else None
        callers = self._callers
        if callers is None:
            return self._identify(view, ip, api_key)
        agent = view.headers.get("user-agent", "") if self._reads_agent else None
        probe = (ip, api_key, agent)
        found = callers.get(probe, _MISSING)
        if found is _MISSING:
            found = self._identify(view, ip, api_key)
            if len(callers) >= 65_536:
                callers.clear()
            callers[probe] = found
        return found  # type: ignore[no-any-return]

    def _identify(self, view: RequestView, ip: str, api_key: str | None) -> Caller | None:
        scopes = self.scopes
        keys: dict[str, str] = {}
        ip_key = "ip:" + ip
        if "ip" in scopes:
            keys["ip"] = ip_key
        if "ip_ua" in scopes or self.source == "ip_ua":
            ua = view.headers.get("user-agent", "")
            keys["ip_ua"] = f"ipua:{ip}:{hash_secret(ua)}"
        if "global" in scopes or self.source == "global":
            keys["global"] = "*"
        key_key = "k:" + hash_secret(api_key) if api_key is not None else None
        account = None
        if api_key is not None and ("account" in scopes or self.source == "account"):
            account = self._lookup(self._account_cache, self.accounts, self.account_hook, api_key)
        account_key = "a:" + _plain_or_hashed(account) if account is not None else key_key
        plan = None
        if api_key is not None and (self.plan_keys or self.plan_hook is not None):
            plan = self._lookup(self._plan_cache, self.plan_keys, self.plan_hook, api_key)
        source = self.source
        caller: str | None
        if source == "api_key":
            caller = key_key
        elif source == "account":
            caller = account_key
        elif source == "callable":
            caller = self._call(view)
        else:
            caller = keys.get(source, ip_key)
        if caller is None:
            if self.anonymous == "reject":
                return None
            caller = ip_key
        keys["caller"] = caller
        if "key" in scopes:
            keys["key"] = key_key or ip_key
        if "account" in scopes:
            keys["account"] = account_key or ip_key
        label = caller if not caller.startswith("ip") else "ip"
        return Caller(keys=keys, ip=ip, api_key=api_key, plan=plan, label=label)
