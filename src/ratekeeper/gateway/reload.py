"""Policy reload: a validated policy handed from the process that reloads to every worker.

``ratekeeper serve`` keeps a run directory for its processes. :class:`PolicyReloader` (run on
SIGHUP, on a file change with ``--watch``, or by ``POST /admin/policy/reload``) reads the policy
file and validates and compiles it; a broken file is refused and logged, and the running policy
stays. A good one is written to the run directory as one JSON file (text, source, generation),
replaced atomically. Each worker's :class:`PolicyFollower` looks at that file's change time a few
times a second and swaps in a newer generation, so every worker runs the same validated text
within about a second, whatever the file on disk has become since.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ratekeeper.errors import PolicyError, RatekeeperError
from ratekeeper.http.compiled import compile_policy
from ratekeeper.policy import loads_policy
from ratekeeper.policy.schema import Policy

__all__ = ["PolicyChannel", "PolicyFollower", "PolicyReloader", "with_trusted_proxies"]

log = logging.getLogger("ratekeeper.gateway")

_CURRENT = "policy.json"


def with_trusted_proxies(policy: Policy, trusted: tuple[str, ...]) -> Policy:
    """``policy`` with ``trusted`` (``--trust-proxy``) added to its identity's trusted proxies."""
    if not trusted:
        return policy
    identity = policy.identity
    merged = tuple(dict.fromkeys((*identity.trusted_proxies, *trusted)))
    return replace(policy, identity=replace(identity, trusted_proxies=merged))


class PolicyChannel:
    """The current validated policy of one ``serve`` run, as a file in its run directory."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / _CURRENT
        self._lock = threading.Lock()

    def publish(self, text: str, source: str) -> int:
        """Make ``text`` the policy of every worker; returns its generation."""
        with self._lock:
            current = self.read()
            generation = (current["generation"] if current else 0) + 1
            document = {
                "generation": generation,
                "source": source,
                "text": text,
                "loaded_at": time.time(),
            }
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(document), encoding="utf-8")
            os.replace(temporary, self.path)
            return generation

    def read(self) -> dict[str, Any] | None:
        """The current document, or ``None`` before the first publication."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def stamp(self) -> int:
        """A number that changes when the document is replaced (its change time)."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0


class PolicyReloader:
    """Validates the policy file and publishes it on ``channel``; refuses a broken one."""

    def __init__(self, path: Path, channel: PolicyChannel, trusted: tuple[str, ...] = ()) -> None:
        self.path = path
        self.channel = channel
        self.trusted = trusted
        self._lock = threading.Lock()

    def reload(self) -> dict[str, Any]:
        """Read, validate and publish the policy file: ``{"reloaded": bool, ...}``."""
        with self._lock:
            current = self.channel.read()
            generation = current["generation"] if current else 0
            try:
                text = self.path.read_text(encoding="utf-8")
                policy = with_trusted_proxies(loads_policy(text, str(self.path)), self.trusted)
                headers = compile_policy(policy).identifier.header_names
                if current is not None:
                    self._same_headers(current, headers)
            except (OSError, UnicodeDecodeError, RatekeeperError) as exc:
                message = str(exc) if isinstance(exc, RatekeeperError) else f"{self.path}: {exc}"
                log.error("policy reload refused, the running policy stays: %s", message)
                return {"reloaded": False, "generation": generation, "error": message}
            if current is not None and current["text"] == text:
                return {"reloaded": False, "generation": generation, "error": None}
            generation = self.channel.publish(text, str(self.path))
            if current is not None:
                log.warning("policy reloaded from %s: generation %d", self.path, generation)
            return {"reloaded": True, "generation": generation, "error": None}

    def _same_headers(self, current: dict[str, Any], headers: frozenset[str] | None) -> None:
        running = with_trusted_proxies(
            loads_policy(current["text"], current["source"]), self.trusted
        )
        before = compile_policy(running).identifier.header_names
        if before != headers:
            # The servers pass only the headers the policy reads, chosen when they start.
            raise PolicyError(
                f"{self.path}: the request headers the policy reads changed "
                f"({sorted(before or ())} -> {sorted(headers or ())}); restart to apply"
            )


class PolicyFollower:
    """Applies the channel's newer generations with ``apply(policy)`` (in a worker)."""

    def __init__(
        self,
        channel: PolicyChannel,
        apply: Callable[[Policy], None],
        trusted: tuple[str, ...] = (),
        generation: int = 0,
    ) -> None:
        self.channel = channel
        self.apply = apply
        self.trusted = trusted
        self.generation = generation
        self.loaded_at = time.time()
        self._stamp = channel.stamp()

    def current(self) -> Policy | None:
        """The channel's policy now (validated), noting its generation; ``None`` if none."""
        document = self.channel.read()
        if document is None:
            return None
        policy = loads_policy(document["text"], document["source"])
        self.generation = document["generation"]
        self.loaded_at = document["loaded_at"]
        return with_trusted_proxies(policy, self.trusted)

    def poll(self) -> bool:
        """Apply a newer generation if one was published; whether one was applied."""
        stamp = self.channel.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        document = self.channel.read()
        if document is None or document["generation"] <= self.generation:
            return False
        try:
            policy = with_trusted_proxies(
                loads_policy(document["text"], document["source"]), self.trusted
            )
            self.apply(policy)
        except (RatekeeperError, ValueError) as exc:
            # Validated before publication: this worker cannot apply it (e.g. a hook's import).
            log.error("policy generation %d not applied here: %s", document["generation"], exc)
            return False
        self.generation = document["generation"]
        self.loaded_at = document["loaded_at"]
        log.info("policy generation %d applied", self.generation)
        return True
