"""The live picture of a running gateway, as one JSON snapshot (``GET /admin/live``).

Every figure is the whole gateway's, whichever worker answers:

- request counts come from the gateway's own ``/metrics`` (summed over the workers by
  prometheus-client's multiprocess mode), as cumulative counters per rule, zone and outcome: a
  viewer gets rates by subtracting two snapshots, so the chart and ``/metrics`` cannot disagree;
- the store's decision latency (p50, p99) is read from the merged ``ratekeeper_store_seconds``
  histogram, over the last minute (the difference with the oldest snapshot this worker answered
  within that minute; since start on the first call);
- near-limit callers, lockouts and blocks come from the samples and registry every worker shares
  through the store (:meth:`~ratekeeper.gateway.admin.operator.Operator.near_limits`).

Lockouts live in the store under their callers' keys, which cannot be listed without a scan, so
:class:`LockoutSightings` notes each caller a lockout refuses in the shared near-limit sample
(limit ``lockout/lock``), and the snapshot peeks at each one's lock: the page lists the
lockouts in force that refused a request (a lifted one drops out at once).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ratekeeper.decision import Decision
from ratekeeper.errors import StoreError
from ratekeeper.gateway.admin.operator import Operator
from ratekeeper.http.asgi import ASGIApp, Scope
from ratekeeper.http.asgi_scope import Message
from ratekeeper.http.engine import Enforcer
from ratekeeper.http.flow import Context, Ticket
from ratekeeper.http.near_limits import NearLimits
from ratekeeper.stores.url import mask_url

__all__ = [
    "LOCKOUT_GROUP",
    "OUTCOME_KINDS",
    "LatencyWindow",
    "LiveSnapshot",
    "LockoutSightings",
    "quantile",
    "read_metrics",
    "scraper",
]

LOCKOUT_GROUP = "lockout/lock"

OUTCOME_KINDS = {
    "allowed": "allowed",
    "rejected": "refused",
    "refused": "refused",
    "store_unavailable": "refused",
    "shadow_rejected": "unenforced",
    "unchecked": "unenforced",
}
"""What the page shows each ``outcome`` of ``ratekeeper_requests_total`` as: a request let
through, a request refused (limit, identity, block, store down and failing closed), or a request
let through that the policy did not enforce (shadow limits, store down and failing open)."""

_LATENCY_WINDOW_S = 60.0


class LockoutSightings:
    """An admission observer: a caller refused by the auth lockout joins the near-limit sample
    under ``lockout/lock``, until its lock ends (so every worker's lockouts are listed)."""

    __slots__ = ("_enforcer", "sample")

    def __init__(self, sample: NearLimits, enforcer: Callable[[], Enforcer]) -> None:
        self.sample = sample
        self._enforcer = enforcer

    def __call__(self, ctx: Context, ticket: Ticket) -> None:
        answer = ticket.answer
        if answer is None or ticket.reason != "too_many_failed_attempts":
            return
        key, caller = ctx.ticket.lock_key, ctx.caller
        spec = self._enforcer().plan.lockout
        if key is None or caller is None or spec is None:
            return
        now = time.time()
        headers = dict(answer.headers)
        until = _number(headers.get("X-RateLimit-Reset"))
        if until is None:
            until = now + (_number(headers.get("Retry-After")) or 1.0)
        wait = max(until - now, 0.0)
        step = (False, None, 0.0, until, wait)
        self.sample.note(Decision(False, wait, now, ((spec.lock, key),), (step,)), caller.label)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def scraper(app: ASGIApp, enforcer: Enforcer) -> Callable[[], Awaitable[str | None]]:
    """Reads ``/metrics`` from the gateway ``app`` in process, as a scrape would (``None`` when
    the policy turned metrics off: the path is then the API's, and must not be called)."""

    async def scrape() -> str | None:
        if not enforcer.metrics.enabled:
            return None
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/metrics",
            "raw_path": b"/metrics",
            "query_string": b"",
            "root_path": "",
            "headers": [],
            "client": None,
            "server": None,
        }
        chunks: list[bytes] = []
        status = 0

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return b"".join(chunks).decode() if status == 200 else None

    return scrape


def quantile(bounds: list[float], counts: list[float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram (``counts[i]`` observations at most
    ``bounds[i]``, the last bound ``inf``), interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; ``None`` without observations."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def read_metrics(text: str) -> dict[str, Any]:
    """The figures the page needs from a ``/metrics`` answer: request counts per rule, zone
    and outcome, the store's latency histogram, errors, outages and health."""
    requests: list[dict[str, Any]] = []
    buckets: dict[float, float] = {}
    store = {"errors": 0.0, "outages": 0.0, "fallback_active": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "ratekeeper_requests_total":
                outcome = labels.get("outcome", "")
                requests.append(
                    {
                        "rule": labels.get("rule", ""),
                        "zone": labels.get("zone", ""),
                        "outcome": outcome,
                        "kind": OUTCOME_KINDS.get(outcome, "refused"),
                        "count": int(value),
                    }
                )
            elif name == "ratekeeper_store_seconds_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif name in ("ratekeeper_store_errors_total", "ratekeeper_store_outages_total"):
                store[name.split("_")[2]] = value
            elif name == "ratekeeper_fallback_active":
                store["fallback_active"] = max(store["fallback_active"], value)
    bounds = sorted(buckets)
    return {
        "requests": sorted(requests, key=lambda r: (r["rule"], r["zone"], r["outcome"])),
        "latency": (bounds, [buckets[b] for b in bounds]),
        "store": store,
    }


class LatencyWindow:
    """The store's latency over the last minute, from successive cumulative histograms."""

    def __init__(self, window_s: float = _LATENCY_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, list[float]]] = deque()

    def update(self, now: float, bounds: list[float], counts: list[float]) -> dict[str, Any]:
        """p50 and p99 in milliseconds since the oldest histogram kept (or since start)."""
        seen = self._seen
        if seen and seen[-1][1][-1] > counts[-1]:
            seen.clear()  # a restarted gateway counts from zero
        while seen and (seen[0][0] < now - self.window_s or len(seen[0][1]) != len(counts)):
            seen.popleft()
        since = None
        recent = counts
        if seen and seen[0][1][-1] <= counts[-1]:
            since, base = seen[0]
            recent = [c - b for c, b in zip(counts, base, strict=True)]
        seen.append((now, counts))
        if len(seen) > 600:
            seen.popleft()
        p50, p99 = quantile(bounds, recent, 0.5), quantile(bounds, recent, 0.99)
        return {
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "decisions": int(recent[-1]) if recent else 0,
            "over_s": None if since is None else round(now - since, 1),
        }


class LiveSnapshot:
    """Builds the ``/admin/live`` snapshot (see the module docstring).

    ``scrape`` answers the gateway's ``/metrics`` text (``None`` when metrics are off);
    ``store_url`` is shown masked.
    """

    def __init__(
        self,
        operator: Operator,
        enforcer: Callable[[], Enforcer],
        scrape: Callable[[], Awaitable[str | None]],
        *,
        store_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.operator = operator
        self._enforcer = enforcer
        self._scrape = scrape
        self.store_url = mask_url(store_url)
        self.clock = clock
        self.latency = LatencyWindow()

    async def snapshot(self, top: int = 10) -> dict[str, Any]:
        """The whole picture, as JSON-ready data. While the store is down, what it holds
        (callers near their limits, lockouts) is left out and ``unavailable`` says why."""
        text = await self._scrape()
        unavailable: list[str] = []
        try:
            near = await asyncio.to_thread(self.operator.near_limits, top)
        except StoreError as exc:
            near = {"workers": None, "limits": {}}
            unavailable.append(f"callers near their limits: {exc}")
        now = self.clock()
        figures = read_metrics(text) if text is not None else None
        limits = near["limits"]
        try:
            lockouts = await self._in_force(limits.pop(LOCKOUT_GROUP, []), now)
        except StoreError as exc:
            lockouts = []
            unavailable.append(f"lockouts: {exc}")
        return {
            "at": round(now, 3),
            "workers": near["workers"],
            "metrics": figures is not None,
            "requests": figures["requests"] if figures else [],
            "store": self._store(now, figures),
            "policy": self._policy(),
            "near": limits,
            "lockouts": lockouts,
            "blocks": self.operator.blocks()["blocks"],
            "unavailable": unavailable,
        }

    async def _in_force(self, seen: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The sighted lockouts still in force (one peek each: a lifted one drops out)."""
        enforcer = self._enforcer()
        spec = enforcer.plan.lockout
        if spec is None or not seen:
            return []
        out = []
        for entry in seen:
            lock = await enforcer.fallback.decide_async(
                ((spec.lock, entry["key"]),), 0, now, peek=True
            )
            state = lock.states[0]
            if state.remaining == 0:
                out.append({**entry, "reset_at": round(state.reset_at, 3)})
        return out

    def _store(self, now: float, figures: dict[str, Any] | None) -> dict[str, Any]:
        fallback = self._enforcer().fallback
        out: dict[str, Any] = {
            "kind": self.store_url.split(":", 1)[0],
            "url": self.store_url,
            "on_store_error": fallback.mode.value,
            "healthy": not fallback.degraded,
        }
        if figures is not None:
            store = figures["store"]
            out["healthy"] = out["healthy"] and store["fallback_active"] == 0
            out["errors"] = int(store["errors"])
            out["outages"] = int(store["outages"])
            bounds, counts = figures["latency"]
            out["latency"] = self.latency.update(now, bounds, counts) if counts else None
        return out

    def _policy(self) -> dict[str, Any]:
        policy = self._enforcer().plan.policy
        rules = [
            {
                "name": rule.name,
                "routes": list(rule.routes),
                "methods": sorted(rule.methods) if rule.methods else None,
                "limits": list(dict.fromkeys((*policy.apply, *rule.limits))),
                "shadow": rule.shadow or policy.shadow,
                "exempt": rule.exempt,
            }
            for rule in policy.rules
        ]
        rules.append(
            {
                "name": "default",
                "routes": ["(any other)"],
                "methods": None,
                "limits": list(dict.fromkeys((*policy.apply, *policy.default))),
                "shadow": policy.shadow,
                "exempt": False,
            }
        )
        return {**self.operator.policy(), "rules": rules}
