"""The key registry's stages: ``blocks`` refuses blocked keys, addresses and networks; ``keys``
gives a known key its plan, account and label, and an unknown key what the policy says.

Both read the registry's current view (a dict lookup, no I/O; the view is refreshed in the
background, see :class:`~ratekeeper.stores.registry.Registry`). They run after ``identify``:
the caller's key digest is the one identity computes, so the registry never sees a raw key.
Unknown keys (``[keys] unknown``): ``own`` leaves them their own budget; ``refuse`` answers 401
in the policy's body format; ``ip`` counts them by address, as if they had sent no key.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ratekeeper.http.bodies import seconds_words
from ratekeeper.http.flow import Context, Kit, Stage, StageFactory, Ticket, repeatable
from ratekeeper.http.identity import Caller, account_key, hash_secret
from ratekeeper.http.stages.answer import Answers
from ratekeeper.stores.registry import Registry
from ratekeeper.stores.registry.drivers import MemoryRegistry
from ratekeeper.stores.registry.model import Block, KeyRecord

__all__ = ["blocks", "key_registry"]

_WHO = {"key": "This API key", "address": "Your address", "network": "Your network"}


def blocks(registry: Registry, clock: Callable[[], float] = time.time) -> StageFactory:
    """The stage refusing (403) requests from blocked keys, addresses and networks."""

    def make(kit: Kit) -> Stage:
        answers, metrics = kit.answers, kit.metrics

        def stage(ctx: Context) -> Ticket | None:
            view = registry.view
            if not view.has_blocks:
                return None
            caller = ctx.identified
            api_key = caller.api_key
            digest = hash_secret(api_key) if api_key is not None and view.key_blocks else None
            block = view.blocked(digest, caller.ip, clock())
            if block is None:
                return None
            metrics.count(ctx.matched.name, "blocked", "refused")
            return _blocked(answers, block, clock())

        # A block only ends by the clock once it holds: a request it let through before is let
        # through again until the registry's view changes.
        return repeatable(stage, lambda: registry.view)

    return make


def _blocked(answers: Answers, block: Block, now: float) -> Ticket:
    headers = []
    message = f"{_WHO[block.kind]} is blocked."
    if block.until is not None:
        wait = max(1, int(-(-(block.until - now) // 1)))
        headers.append(("Retry-After", str(wait)))
        message = f"{_WHO[block.kind]} is blocked for {seconds_words(wait)} more."
    return answers.error(403, "blocked", message, headers)


def key_registry(registry: Registry | None = None) -> StageFactory:
    """The stage applying ``registry`` to the caller's key (see the module docstring); without
    one, the policy's own ``[keys]`` (none: no stage)."""

    def make(kit: Kit) -> Stage | None:
        policy = kit.plan.policy
        live = registry
        if live is None:
            if not policy.keys.declared:
                return None
            live = Registry(MemoryRegistry(), policy.keys.known)
        unknown = policy.keys.unknown
        source = policy.identity.source
        answers, metrics = kit.answers, kit.metrics
        # Callers repeat, and building one costs more than the rest of the stage: the caller a
        # record makes is kept, keyed by everything it is made of (bounded).
        made: dict[tuple[str | None, ...], Caller] = {}

        def stage(ctx: Context) -> Ticket | None:
            caller = ctx.identified
            api_key = caller.api_key
            if api_key is None:
                return None
            digest = hash_secret(api_key)
            record = live.view.keys.get(digest)
            if record is not None:
                # A label alone changes nothing here: logs and the admin API look it up.
                if record.plan is not None or record.account is not None:
                    keys = caller.keys
                    memo = (
                        digest,
                        caller.ip,
                        keys.get("ip_ua"),
                        keys.get("account"),
                        caller.plan,
                        record.plan,
                        record.account,
                    )
                    found = made.get(memo)
                    if found is None:
                        if len(made) >= 65_536:
                            made.clear()
                        found = made[memo] = known(caller, record, source, digest)
                    ctx.caller = ctx.ticket.caller = found
                return None
            if unknown == "own":
                return None
            if unknown == "refuse":
                metrics.count(ctx.matched.name, "unknown_key", "refused")
                return answers.error(
                    401,
                    "unknown_api_key",
                    "This API key is not known.",
                    [("WWW-Authenticate", "Bearer")],
                )
            ctx.caller = ctx.ticket.caller = by_address(caller, source)
            return None

        return repeatable(stage, lambda: live.view)

    return make


def known(caller: Caller, record: KeyRecord, source: str, digest: str) -> Caller:
    """``caller`` with the plan and account the registry gives its key (``digest``); its label
    names the key (``k:<digest>``), which logs and the admin API turn into the key's label."""
    keys = caller.keys
    if record.account is not None:
        keys = dict(keys)
        shared = account_key(record.account)
        if "account" in keys:
            keys["account"] = shared
        if source == "account":
            keys["caller"] = shared
    return Caller(
        keys=keys,
        ip=caller.ip,
        api_key=caller.api_key,
        plan=record.plan or caller.plan,
        label="k:" + digest,
    )


def by_address(caller: Caller, source: str) -> Caller:
    """``caller`` counted by address, as if no key had come (an unknown key under ``ip``)."""
    ip_key = "ip:" + caller.ip
    keys = dict(caller.keys)
    for scope in ("key", "account"):
        if scope in keys:
            keys[scope] = ip_key
    if source in ("api_key", "account"):
        keys["caller"] = ip_key
    return Caller(keys=keys, ip=caller.ip, api_key=None, plan=None, label="ip")
