"""The cost of the operator's side on the allowed path: admission with the key registry's stages
(blocks, keys) and the admission observer (near-limit sample, refusal log) against the same
enforcer without them, in one run.

Both enforcers run the same policy (a key per caller, 100000/minute so every request is
allowed) on their own memory store; the registry knows 10 000 keys and holds a few blocks, so
the stages do their full work. Rounds alternate the two, and the table reports the median
time per admission of each and their ratio.

    .venv/bin/python bench/operator_side.py            # about a minute
    .venv/bin/python bench/operator_side.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

from ratekeeper.http.engine import Enforcer
from ratekeeper.http.identity import RequestView
from ratekeeper.http.near_limits import NearLimits
from ratekeeper.http.operator_observer import AdmissionObserver
from ratekeeper.http.refusals import RefusalLog
from ratekeeper.http.stages.keys import blocks, key_registry
from ratekeeper.policy import loads_policy
from ratekeeper.stores.memory import MemoryStore
from ratekeeper.stores.registry import Block, KeyRecord, Registry, key_digest, registry_driver

POLICY = """
body = "musique"
apply = ["api"]
[identity]
source = "api_key"
key_headers = ["X-API-Key"]
anonymous = "reject"
[limits.api]
rates = "100000/minute; 1000000/day"
[plans.gold]
api = "200000/minute; 2000000/day"
[keys]
unknown = "{unknown}"
"""


def _enforcers(keys: int) -> tuple[Enforcer, Enforcer]:
    plain = Enforcer(loads_policy(POLICY.format(unknown="own")), store=MemoryStore())
    operated = Enforcer(loads_policy(POLICY.format(unknown="refuse")), store=MemoryStore())
    registry = Registry(registry_driver("memory://"))
    for n in range(keys):
        registry.driver.write(
            f"key:{key_digest(f'key-{n}')}",
            f'{{"hash": "{key_digest(f"key-{n}")}", "label": "Customer {n}", "plan": "gold"}}',
        )
    registry.refresh()
    registry.put(Block(kind="network", value="198.51.100.0/24"))
    registry.put(Block(kind="address", value="203.0.113.9"))
    registry.put(KeyRecord(digest=key_digest("blocked"), label="x"))
    operated.add_stage("blocks", blocks(registry), after="identify")
    operated.add_stage("keys", key_registry(registry), after="blocks")
    operated.observe(AdmissionObserver(NearLimits(32), RefusalLog(), registry.label_of))
    return plain, operated


def _round(enforcer: Enforcer, views: list[RequestView]) -> float:
    admit = enforcer.admit
    started = time.perf_counter()
    for view in views:
        ticket = admit(view)
        if ticket.answer is not None:
            raise SystemExit(f"not allowed: {ticket.answer.status} {ticket.answer.body[:80]!r}")
    return (time.perf_counter() - started) / len(views)


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    rounds, requests = (3, 2_000) if args.quick else (args.rounds, args.requests)
    plain, operated = _enforcers(10_000)
    views = [
        RequestView("GET", "/api/tracks", {"x-api-key": f"key-{n % 1000}"}, f"10.0.{n % 200}.1")
        for n in range(requests)
    ]
    _round(plain, views[:1000])
    _round(operated, views[:1000])
    times: dict[str, list[float]] = {"off": [], "on": []}
    for index in range(rounds):
        order = [("off", plain), ("on", operated)]
        for name, enforcer in order if index % 2 == 0 else reversed(order):
            times[name].append(_round(enforcer, views))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"{'allowed path, memory store':<44} {'us/admission':>12}")
    print(f"{'  registry + near-limit sample off':<44} {off * 1e6:>12.2f}")
    print(f"{'  registry + near-limit sample on':<44} {on * 1e6:>12.2f}")
    print(f"{'  on / off':<44} {on / off:>12.3f}")


if __name__ == "__main__":
    main()
