"""The policy's ``[keys]`` section: keys known from the file, and what unknown keys get.

```toml
[keys]
unknown = "refuse"          # refuse (401) | ip (counted by address) | own (a budget each)
[[keys.known]]
key = "radio-demo-a1"       # or hash = "<24 hex digits>" (ratekeeper admin keys hash KEY)
label = "Demo stream A, app 1"
account = "demo-stream-a"   # keys of one account share its budget
plan = "enterprise"         # a [plans.<name>] table
```

Keys added at run time live in the key registry (:mod:`ratekeeper.stores.registry`); a policy
without ``[keys]`` gives every key its own budget, as ``unknown = "own"`` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ratekeeper.errors import RegistryError
from ratekeeper.policy.reader import TableReader
from ratekeeper.stores.registry.model import KeyRecord, check_digest, key_digest

__all__ = ["UNKNOWN_KEY_MODES", "KeysSpec", "read_keys"]

UNKNOWN_KEY_MODES = ("refuse", "ip", "own")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysSpec:
    """``unknown``: what a key missing from the registry gets; ``known``: the file's keys."""

    unknown: str = "own"
    known: tuple[KeyRecord, ...] = ()
    declared: bool = False


def read_keys(reader: TableReader | None, plans: Mapping[str, object]) -> KeysSpec:
    """Read ``[keys]``; plans named by keys must be ``[plans]`` tables."""
    if reader is None:
        return KeysSpec()
    unknown = reader.text("unknown", "refuse", UNKNOWN_KEY_MODES)
    entries = reader.get("known")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise reader.error("known", "an array of tables ([[keys.known]])")
    known: dict[str, KeyRecord] = {}
    for index, table in enumerate(entries):
        record = _read_known(TableReader(reader.source, f"keys.known[{index}]", table), plans)
        if record.digest in known:
            raise reader.error(f"known[{index}]", "each key once (this key is listed twice)")
        known[record.digest] = record
    reader.done()
    return KeysSpec(unknown=unknown, known=tuple(known.values()), declared=True)


def _read_known(entry: TableReader, plans: Mapping[str, object]) -> KeyRecord:
    raw = entry.text("key", "")
    digest = entry.text("hash", "")
    if bool(raw) == bool(digest):
        raise entry.error("key", "either key (the API key) or hash (its digest), not both")
    if digest:
        try:
            check_digest(digest)
        except RegistryError as exc:
            raise entry.error("hash", str(exc).removeprefix("expected ")) from None
    plan = entry.text("plan", "") or None
    if plan is not None and plan not in plans:
        known = ", ".join(sorted(plans)) or "none defined"
        raise entry.error("plan", f"a plan from [plans] ({known}); got {plan!r}")
    try:
        record = KeyRecord(
            digest=digest or key_digest(raw),
            label=entry.text("label", "") or None,
            plan=plan,
            account=entry.text("account", "") or None,
            source="policy",
        )
    except RegistryError as exc:
        raise entry.error("", str(exc)) from None
    entry.done()
    return record
