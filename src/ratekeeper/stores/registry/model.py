"""What the key registry holds: known keys and blocks, as frozen values with a JSON form.

A registry is a set of entries, each an id and a JSON body: ``key:<digest>`` for a known key,
``block:<kind>:<value>`` for a block. Drivers store entries and a version number that every
write raises; a :class:`RegistryView` is the entries of one version, indexed for the hot path.

Raw API keys never enter a registry: a key is named by :func:`key_digest`, the same digest the
gateway's identity computes for a request's key, so the CLI can hash a key before it leaves
the operator's machine.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from ratekeeper.errors import RegistryError

__all__ = [
    "BLOCK_KINDS",
    "Block",
    "BlockKind",
    "KeyRecord",
    "RegistryView",
    "block_from_entry",
    "entry_of",
    "key_digest",
    "parse_block_value",
    "record_from_entry",
]

BlockKind: TypeAlias = Literal["key", "address", "network"]
BLOCK_KINDS: tuple[BlockKind, ...] = ("key", "address", "network")
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_DIGEST = re.compile(r"^[0-9a-f]{24}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:/-]{0,127}$")
# Labels are for people: any printable text, but no control characters (log lines stay lines).
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


@functools.lru_cache(maxsize=65_536)
def key_digest(key: str) -> str:
    """The digest naming an API key in the registry, store keys and logs (never the key)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is a key digest (24 lower-case hex digits); else :class:`RegistryError`."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise RegistryError(
            f"expected a key digest of 24 hex digits (ratekeeper admin keys hash KEY), "
            f"got {str(digest)[:40]!r}"
        )
    return digest


def _name(value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise RegistryError(
            f"{what}: expected up to 128 letters, digits or '._@+:/-', got {str(value)[:40]!r}"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """A known key: its ``digest``, a ``label`` for people, its ``plan`` (tier) and ``account``
    (the budget it shares with the account's other keys, e.g. a radio stream). ``source`` is
    ``policy`` for keys listed in the policy file, ``registry`` for keys added at run time."""

    digest: str
    label: str | None = None
    plan: str | None = None
    account: str | None = None
    source: str = "registry"

    def __post_init__(self) -> None:
        check_digest(self.digest)
        if self.label is not None and (
            not isinstance(self.label, str) or not _LABEL.match(self.label)
        ):
            raise RegistryError(
                f"label: expected 1 to 128 printable characters, got {str(self.label)[:40]!r}"
            )
        _name(self.plan, "plan")
        _name(self.account, "account")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {
            "hash": self.digest,
            "label": self.label,
            "plan": self.plan,
            "account": self.account,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A refusal of a key (by digest), an address or a network until ``until`` (epoch seconds;
    ``None``: until lifted)."""

    kind: BlockKind
    value: str
    until: float | None = None
    reason: str = ""
    network: _Network | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        value, network = parse_block_value(self.kind, self.value)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "network", network)
        if self.until is not None and not (
            isinstance(self.until, int | float) and math.isfinite(self.until)
        ):
            raise RegistryError(f"until: expected epoch seconds or null, got {self.until!r}")
        if not isinstance(self.reason, str) or len(self.reason) > 200:
            raise RegistryError("reason: expected a text of at most 200 characters")

    @property
    def entry_id(self) -> str:
        """The registry entry id of this block."""
        return f"block:{self.kind}:{self.value}"

    def active(self, now: float) -> bool:
        """Whether the block still holds at ``now``."""
        return self.until is None or now < self.until

    def to_json(self) -> dict[str, Any]:
        """The block as a JSON object."""
        return {"kind": self.kind, "value": self.value, "until": self.until, "reason": self.reason}


def parse_block_value(kind: str, value: str) -> tuple[str, _Network | None]:
    """The canonical value of a block of ``kind`` (and its network, for a network block)."""
    if kind == "key":
        return check_digest(value), None
    try:
        if kind == "address":
            return str(ipaddress.ip_address(str(value).strip())), None
        if kind == "network":
            network = ipaddress.ip_network(str(value).strip(), strict=False)
            return str(network), network
    except ValueError:
        what = "an IP address" if kind == "address" else "a CIDR network such as 10.0.0.0/8"
        raise RegistryError(f"expected {what} to block, got {str(value)[:60]!r}") from None
    raise RegistryError(f"block kind: expected one of {', '.join(BLOCK_KINDS)}, got {kind!r}")


def entry_of(item: KeyRecord | Block) -> tuple[str, str]:
    """The registry entry ``(id, body)`` of a record or block."""
    if isinstance(item, KeyRecord):
        body = item.to_json()
        del body["source"]
        return f"key:{item.digest}", json.dumps(body, sort_keys=True)
    return item.entry_id, json.dumps(item.to_json(), sort_keys=True)


def record_from_entry(body: str) -> KeyRecord:
    """A key record from its entry body."""
    data = json.loads(body)
    return KeyRecord(
        digest=data["hash"],
        label=data.get("label"),
        plan=data.get("plan"),
        account=data.get("account"),
    )


def block_from_entry(body: str) -> Block:
    """A block from its entry body."""
    data = json.loads(body)
    return Block(
        kind=data["kind"],
        value=data["value"],
        until=data.get("until"),
        reason=data.get("reason", ""),
    )


@dataclass(frozen=True, slots=True)
class RegistryView:
    """The registry at one ``version``: ``keys`` by digest, blocks by kind, each a dict (the
    networks a tuple, checked in turn). Replaced whole on a change, never mutated."""

    version: int = 0
    keys: Mapping[str, KeyRecord] = field(default_factory=dict)
    key_blocks: Mapping[str, Block] = field(default_factory=dict)
    address_blocks: Mapping[str, Block] = field(default_factory=dict)
    network_blocks: tuple[Block, ...] = ()
    # address -> the blocks that match it, whatever their time: callers repeat, and a network
    # test is a parse and a walk. Belongs to this view, so a change starts it afresh.
    _matches: dict[str, tuple[Block, ...]] = field(default_factory=dict, compare=False, repr=False)
    has_blocks: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        blocks = bool(self.key_blocks or self.address_blocks or self.network_blocks)
        object.__setattr__(self, "has_blocks", blocks)

    @classmethod
    def build(
        cls, version: int, base: Iterable[KeyRecord], entries: Mapping[str, str]
    ) -> RegistryView:
        """The view of ``entries`` (id -> body) over the policy file's keys ``base``."""
        keys = {record.digest: record for record in base}
        key_blocks: dict[str, Block] = {}
        address_blocks: dict[str, Block] = {}
        networks: list[Block] = []
        for entry_id, body in entries.items():
            try:
                if entry_id.startswith("key:"):
                    record = record_from_entry(body)
                    keys[record.digest] = record
                    continue
                block = block_from_entry(body)
            except (ValueError, KeyError, TypeError, RegistryError):
                # Written by a newer or broken writer: skipped, never fatal to the hot path.
                continue
            if block.kind == "key":
                key_blocks[block.value] = block
            elif block.kind == "address":
                address_blocks[block.value] = block
            else:
                networks.append(block)
        return cls(version, keys, key_blocks, address_blocks, tuple(networks))

    def blocked(self, digest: str | None, address: str, now: float) -> Block | None:
        """The block holding a request from ``address`` with key ``digest``, if any."""
        if digest is not None and self.key_blocks:
            block = self.key_blocks.get(digest)
            if block is not None and block.active(now):
                return block
        if self.address_blocks or self.network_blocks:
            matches = self._matches.get(address)
            if matches is None:
                matches = self._match(address)
                if len(self._matches) >= 65_536:
                    self._matches.clear()
                self._matches[address] = matches
            for block in matches:
                if block.active(now):
                    return block
        return None

    def _match(self, address: str) -> tuple[Block, ...]:
        found = []
        block = self.address_blocks.get(address)
        if block is not None:
            found.append(block)
        if self.network_blocks:
            ip = _parsed_address(address)
            if ip is not None:
                found += [b for b in self.network_blocks if b.network and ip in b.network]
        return tuple(found)


# Callers repeat: a parsed address is a dict lookup instead of a parse per request (bounded).
@functools.lru_cache(maxsize=65_536)
def _parsed_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None
