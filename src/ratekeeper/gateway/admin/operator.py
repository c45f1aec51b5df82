"""The operator's tasks, free of HTTP: inspect, reset and block keys, lift lockouts, list the
callers nearest their limits. :mod:`ratekeeper.gateway.admin.api` serves them as JSON.

A key is named by its digest (``ratekeeper admin keys hash KEY``, or the CLI hashes it itself):
the raw key never reaches the gateway's admin API. Its limits are found from the running
policy: each limit counted per key, per account or per caller (and per address, when the
operator gives one), with the plan the registry gives the key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ratekeeper.errors import RegistryError
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import account_key
from ratekeeper.http.near_limits import NearLimits, merge_samples
from ratekeeper.limit import LimitSet
from ratekeeper.stores.registry import Block, KeyRecord, Registry
from ratekeeper.stores.registry.model import check_digest, parse_block_value

__all__ = ["Operator"]

log = logging.getLogger("ratekeeper.admin")

# Samples live a few publish periods, so a worker that stopped drops out of near-limit lists.
SAMPLE_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class _Counted:
    """One limit set of the policy counted for one store key."""

    name: str
    scope: str
    limit_set: LimitSet
    store_key: str
    shadow: bool


class Operator:
    """The admin operations over a running gateway's enforcer, registry and sample.

    ``enforcer`` is read through a callable, so a policy reload is seen at once.
    """

    def __init__(
        self,
        enforcer: Callable[[], Enforcer],
        registry: Registry,
        sample: NearLimits,
        *,
        worker: str,
        policy: Callable[[], dict[str, Any]] | None = None,
        reload: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._enforcer = enforcer
        self.registry = registry
        self.sample = sample
        self.worker = worker
        self.clock = clock
        self._policy = policy
        self._reload = reload
        self._published: tuple[str, float] = ("", 0.0)

    # -- policy ------------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """The running policy: source, generation, limits, plans, unknown-key mode."""
        if self._policy is not None:
            return self._policy()
        policy = self._enforcer().plan.policy
        return {"source": policy.source, "generation": 0}

    def reload(self) -> dict[str, Any]:
        """Reload the policy file; a broken one is refused (``reloaded`` false, ``error``)."""
        if self._reload is None:
            raise RegistryError("policy reload is not available in this process")
        return self._reload()

    # -- keys ------------------------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        """Every key the registry knows, and what unknown keys get."""
        view = self.registry.view
        policy = self._enforcer().plan.policy
        return {
            "version": view.version,
            "unknown": policy.keys.unknown,
            "keys": [record.to_json() for record in view.keys.values()],
        }

    def put_key(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add or change a key: ``hash`` (its digest), ``label``, ``plan``, ``account``."""
        plans = self._enforcer().plan.policy.tiers.plans
        plan = data.get("plan")
        if plan is not None and plan not in plans:
            known = ", ".join(sorted(plans)) or "none in this policy"
            raise RegistryError(f"plan: expected one of the policy's plans ({known}), got {plan!r}")
        unknown = set(data) - {"hash", "label", "plan", "account"}
        if unknown:
            raise RegistryError(
                f"unknown field(s) {sorted(unknown)}: expected hash, label, plan, account"
            )
        record = KeyRecord(
            digest=data.get("hash", ""),
            label=data.get("label"),
            plan=plan,
            account=data.get("account"),
        )
        self.registry.put(record)
        log.info("admin: key %s set (%s)", record.digest[:8], record.label or "no label")
        return {"key": record.to_json()}

    def remove_key(self, digest: str) -> bool:
        """Forget a key added at run time; ``False`` when the registry has no such entry."""
        check_digest(digest)
        record = self.registry.view.keys.get(digest)
        if record is not None and record.source == "policy":
            raise RegistryError("this key is listed in the policy file: remove it there and reload")
        removed = self.registry.remove(f"key:{digest}")
        if removed:
            log.info("admin: key %s removed", digest[:8])
        return removed

    def _counted(self, digest: str, address: str | None) -> list[_Counted]:
        """The policy's limit sets that count this key (and ``address``), with store keys."""
        policy = self._enforcer().plan.policy
        record = self.registry.view.keys.get(digest)
        key_key = "k:" + digest
        account = account_key(record.account) if record and record.account else key_key
        source = policy.identity.source
        by_scope: dict[str, str] = {"key": key_key, "account": account}
        if source in ("api_key", "account"):
            by_scope["caller"] = key_key if source == "api_key" else account
        if address is not None:
            by_scope["ip"] = "ip:" + address
            if source == "ip":
                by_scope["caller"] = "ip:" + address
        plan = record.plan if record else None
        overrides = policy.tiers.plans.get(plan, {}) if plan else {}
        out = []
        for name, spec in policy.limits.items():
            limit_set = overrides.get(name, spec.limit_set)
            store_key = by_scope.get(spec.scope)
            if limit_set is not None and store_key is not None:
                shadow = spec.shadow or policy.shadow
                out.append(_Counted(name, spec.scope, limit_set, store_key, shadow))
        return out

    async def inspect(self, digest: str, address: str | None = None) -> dict[str, Any]:
        """A key's registry entry, every limit's use, its lockout and the blocks on it."""
        check_digest(digest)
        if address is not None:
            address = parse_block_value("address", address)[0]
        enforcer = self._enforcer()
        now = self.clock()
        view = self.registry.view
        record = view.keys.get(digest)
        limits = []
        for counted in self._counted(digest, address):
            decision = await enforcer.fallback.decide_async(
                ((counted.limit_set, counted.store_key),), 0, now, peek=True
            )
            for state in decision.states:
                limits.append(
                    {
                        "limit": counted.name,
                        "window": state.limit.name,
                        "rate": str(state.limit.rate),
                        "scope": counted.scope,
                        "shadow": counted.shadow,
                        "used": state.limit.amount - state.remaining,
                        "remaining": state.remaining,
                        "reset_at": round(state.reset_at, 3),
                    }
                )
        blocks = [
            b.to_json()
            for b in (view.key_blocks.get(digest), view.address_blocks.get(address or ""))
            if b is not None and b.active(now)
        ]
        return {
            "hash": digest,
            "known": record is not None,
            "key": record.to_json() if record else None,
            "state": "blocked" if blocks else "active",
            "plan": record.plan if record else None,
            "account": record.account if record else None,
            "limits": limits,
            "lockout": await self._lockout_state(digest, address, now),
            "blocks": blocks,
            "store_degraded": bool(enforcer.fallback.degraded),
        }

    async def reset_key(self, digest: str, address: str | None = None) -> dict[str, Any]:
        """Start every limit of the key (and of ``address``) afresh."""
        check_digest(digest)
        counted = self._counted(digest, address)
        items = tuple((c.limit_set, c.store_key) for c in counted)
        if items:
            await self._enforcer().fallback.reset_async(items)
        log.info("admin: key %s reset (%d limit sets)", digest[:8], len(items))
        return {"reset": sorted({c.name for c in counted})}

    # -- lockouts and blocks -------------------------------------------------------------------

    def _lock_key(self, digest: str | None, address: str | None) -> str | None:
        policy = self._enforcer().plan.policy
        spec = policy.lockout
        if spec is None:
            return None
        if spec.scope == "ip" or (spec.scope == "caller" and policy.identity.source == "ip"):
            return "ip:" + address if address else None
        if digest is None:
            return None
        return next(
            (c.store_key for c in self._counted(digest, None) if c.scope == spec.scope), None
        ) or ("k:" + digest)

    async def _lockout_state(
        self, digest: str | None, address: str | None, now: float
    ) -> dict[str, Any] | None:
        enforcer = self._enforcer()
        spec = enforcer.plan.lockout
        key = self._lock_key(digest, address)
        if spec is None or key is None:
            return None
        lock = await enforcer.fallback.decide_async(((spec.lock, key),), 0, now, peek=True)
        failures = await enforcer.fallback.decide_async(((spec.failures, key),), 0, now, peek=True)
        locked = lock.states[0].remaining == 0
        failed = failures.states[0]
        return {
            "locked": locked,
            "until": round(lock.states[0].reset_at, 3) if locked else None,
            "failures": failed.limit.amount - failed.remaining,
            "failures_allowed": failed.limit.amount,
        }

    async def lift_lockout(self, digest: str | None, address: str | None) -> dict[str, Any]:
        """Lift the auth lockout of a key (by digest) or an address, and clear its failures."""
        if digest is not None:
            check_digest(digest)
        if address is not None:
            address = parse_block_value("address", address)[0]
        enforcer = self._enforcer()
        spec = enforcer.plan.lockout
        if spec is None:
            raise RegistryError("this policy has no [lockout]")
        key = self._lock_key(digest, address)
        if key is None:
            need = "address" if spec.scope == "ip" else "hash"
            raise RegistryError(f"{need}: expected the locked-out caller's {need}")
        await enforcer.fallback.reset_async(((spec.lock, key), (spec.failures, key)))
        log.info("admin: lockout lifted for %s", key[:10])
        return {"lifted": key[:10] + ("..." if len(key) > 10 else "")}

    def blocks(self) -> dict[str, Any]:
        """Every block still in force."""
        view = self.registry.view
        now = self.clock()
        every = [*view.key_blocks.values(), *view.address_blocks.values(), *view.network_blocks]
        return {"blocks": [b.to_json() for b in every if b.active(now)]}

    def block(self, data: dict[str, Any]) -> dict[str, Any]:
        """Block a key (``value`` its digest), an address or a network, for ``for_s`` seconds
        (or until lifted)."""
        unknown = set(data) - {"kind", "value", "for_s", "reason"}
        if unknown:
            raise RegistryError(
                f"unknown field(s) {sorted(unknown)}: expected kind, value, for_s, reason"
            )
        duration = data.get("for_s")
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= 366 * 86_400
        ):
            raise RegistryError(
                f"for_s: expected seconds above 0, at most a year, got {duration!r}"
            )
        block = Block(
            kind=data.get("kind", ""),
            value=str(data.get("value", "")),
            until=self.clock() + duration if duration is not None else None,
            reason=data.get("reason") or "",
        )
        self.registry.put(block)
        log.info("admin: %s %s blocked", block.kind, block.value[:18])
        return {"block": block.to_json()}

    def unblock(self, kind: str, value: str) -> bool:
        """Lift a block; ``False`` when there was none."""
        canonical, _ = parse_block_value(kind, value)
        lifted = self.registry.remove(f"block:{kind}:{canonical}")
        if lifted:
            log.info("admin: %s %s unblocked", kind, canonical[:18])
        return lifted

    # -- near limits -------------------------------------------------------------------------

    def publish_sample(self, *, force: bool = False) -> None:
        """Publish this worker's near-limit sample for the others (every second or so); an
        unchanged one only as often as its expiry needs, so an idle worker writes little."""
        now = self.clock()
        body = json.dumps(self.sample.snapshot(now))
        last_body, last_at = self._published
        if not force and body == last_body and now < last_at + SAMPLE_TTL_S / 2:
            return
        self.registry.driver.publish(self.worker, body, SAMPLE_TTL_S)
        self._published = (body, now)

    def near_limits(self, top: int) -> dict[str, Any]:
        """The ``top`` callers nearest each limit, over every worker sharing the store."""
        if isinstance(top, bool) or not 1 <= top <= self.sample.size:
            raise RegistryError(f"top: expected 1 to {self.sample.size}, got {top!r}")
        self.publish_sample(force=True)
        samples = [json.loads(body) for body in self.registry.driver.samples()]
        merged = merge_samples(samples, self.clock(), top)
        for entries in merged.values():
            for entry in entries:
                label = entry["label"]
                if label.startswith("k:"):
                    entry["label"] = self.registry.label_of(label[2:]) or label[:10]
        return {"workers": len(samples), "sample_size": self.sample.size, "limits": merged}
