"""The cost of the operator's side on the allowed path, on and off in one run.

1. Admission alone: an enforcer with the key registry's stages (blocks, keys) and the admission
   observer (near-limit sample, refusal log) against the same enforcer without them, each on
   its own memory store. The registry knows 10 000 keys and holds a few blocks, so the stages
   do their full work.
2. The gateway app, called as ASGI in process (no sockets): ``ratekeeper serve``'s worker app
   (``OperatedGateway``: registry, sample, refusal log, admin routing) against the bare
   ``Gateway`` it wraps, both with the demo API behind them on one SQLite file each.

Both use one policy (a key per caller, 100000/minute so every request is allowed). Rounds
alternate on and off; the table reports the median CPU time per request of each (process
time: on a shared machine, other processes' load does not count) and the ratio.

    .venv/bin/python bench/operator_side.py            # about a minute
    .venv/bin/python bench/operator_side.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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


# "Off": the same policy without [keys], so no registry stage runs at all.
_WITHOUT_KEYS = POLICY.split("[keys]", maxsplit=1)[0]


def _enforcers(keys: int) -> tuple[Enforcer, Enforcer]:
    plain = Enforcer(loads_policy(_WITHOUT_KEYS), store=MemoryStore())
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
    operated.replace_stage("keys", key_registry(registry))
    operated.observe(AdmissionObserver(NearLimits(32), RefusalLog(), registry.label_of))
    return plain, operated


def _round(enforcer: Enforcer, views: list[RequestView]) -> float:
    admit = enforcer.admit
    started = time.process_time()
    for view in views:
        ticket = admit(view)
        if ticket.answer is not None:
            raise SystemExit(f"not allowed: {ticket.answer.status} {ticket.answer.body[:80]!r}")
    return (time.process_time() - started) / len(views)


def _gateways(directory: Path) -> tuple[Any, Any]:
    from ratekeeper.gateway.app import ServeSettings, build_gateway  # noqa: PLC0415
    from ratekeeper.gateway.operating import OperatedGateway, OperatorSettings  # noqa: PLC0415

    apps = []
    for name, text in (("off", _WITHOUT_KEYS), ("on", POLICY.format(unknown="refuse") + _KNOWN)):
        config = directory / f"{name}.toml"
        config.write_text(text)
        settings = ServeSettings(config=str(config), store=f"sqlite:///{directory / name}.db")
        apps.append(build_gateway(settings))
    return apps[0], OperatedGateway(apps[1], settings, OperatorSettings())


_KNOWN = "".join(f'[[keys.known]]\nkey = "key-{n}"\nlabel = "C {n}"\n' for n in range(1000))


async def _asgi_round(app: Any, keys: list[str]) -> float:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    started = time.process_time()
    for key in keys:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/integration/tracks",
            "raw_path": b"/api/integration/tracks",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), (b"x-api-key", key.encode())],
            "client": ("10.0.0.1", 5000),
            "server": ("127.0.0.1", 8080),
        }
        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"not allowed: {sent}")
        sent.clear()
    return (time.process_time() - started) / len(keys)


def _compare(rounds: int, run_off: Any, run_on: Any) -> tuple[float, float]:
    times: dict[str, list[float]] = {"off": [], "on": []}
    for index in range(rounds):
        order = [("off", run_off), ("on", run_on)]
        for name, run in order if index % 2 == 0 else reversed(order):
            times[name].append(run())
    return statistics.median(times["off"]), statistics.median(times["on"])


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
    off, on = _compare(rounds, lambda: _round(plain, views), lambda: _round(operated, views))
    print(f"{'allowed path':<52} {'us/request':>10}")
    print(f"{'admission, memory store: operator side off':<52} {off * 1e6:>10.2f}")
    print(f"{'admission, memory store: operator side on':<52} {on * 1e6:>10.2f}")
    print(f"{'  on / off':<52} {on / off:>10.3f}")
    with tempfile.TemporaryDirectory() as directory:
        bare, operated_app = _gateways(Path(directory))
        keys = [f"key-{n % 1000}" for n in range(requests // 4)]
        loop = asyncio.new_event_loop()

        def run(app: Any) -> float:
            return loop.run_until_complete(_asgi_round(app, keys))

        run(bare)
        run(operated_app)
        off, on = _compare(rounds, lambda: run(bare), lambda: run(operated_app))
        loop.close()
    print(f"{'gateway ASGI app, demo API, SQLite: operator side off':<52} {off * 1e6:>10.2f}")
    print(f"{'gateway ASGI app, demo API, SQLite: operator side on':<52} {on * 1e6:>10.2f}")
    print(f"{'  on / off':<52} {on / off:>10.3f}")


if __name__ == "__main__":
    main()
