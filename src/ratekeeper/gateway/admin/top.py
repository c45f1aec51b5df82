"""``ratekeeper top``: the live page's picture in a terminal, refreshed in place (rich).

It polls ``GET /admin/live`` of a running gateway's admin listener (``--url`` or ``--unix``,
token from ``$RATEKEEPER_ADMIN_TOKEN`` or ``--token``, as ``ratekeeper admin``) and shows the
requests per rule and zone (totals, requests per second, the last minute as a sparkline), the
callers nearest their limits, lockouts, blocks, the store and the running policy. Counts are the
whole gateway's; rates are the difference between two snapshots.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ratekeeper.gateway.admin.cli import listener_arguments, listener_client

__all__ = ["Picture", "render", "top_main"]

KINDS = ("allowed", "refused", "unenforced")
_STYLES = {"allowed": "green", "refused": "red", "unenforced": "yellow"}
_SPARKS = " ▁▂▃▄▅▆▇█"
_HISTORY = 60


@dataclass
class Picture:
    """What ``top`` has seen so far: the last snapshot and each zone's recent rates."""

    last: dict[str, Any] | None = None
    rates: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    now: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def add(self, snapshot: dict[str, Any]) -> None:
        """Take in a new snapshot; rates come from the difference with the previous one."""
        previous = self.last
        totals = totals_of(snapshot)
        if previous is not None and snapshot["at"] > previous["at"]:
            before = totals_of(previous)
            dt = snapshot["at"] - previous["at"]
            for zone, counts in totals.items():
                old = before.get(zone, dict.fromkeys(KINDS, 0))
                rates = {k: max(counts[k] - old[k], 0) / dt for k in KINDS}
                self.now[zone] = rates
                history = self.rates.setdefault(zone, deque(maxlen=_HISTORY))
                history.append(sum(rates.values()))
        self.last = snapshot


def totals_of(snapshot: dict[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    """Request totals per (rule, zone) and kind (allowed, refused, unenforced)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for entry in snapshot["requests"]:
        zone = out.setdefault((entry["rule"], entry["zone"]), dict.fromkeys(KINDS, 0))
        zone[entry["kind"]] += entry["count"]
    return out


def _spark(values: deque[float] | None) -> str:
    if not values:
        return ""
    top = max(values) or 1.0
    return "".join(_SPARKS[round(v / top * (len(_SPARKS) - 1))] for v in values)


def _caller(entry: dict[str, Any]) -> str:
    label = str(entry.get("label") or entry["key"])
    return label[:10] + "…" if label.startswith("k:") and len(label) > 16 else label


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _requests(picture: Picture, snapshot: dict[str, Any]) -> Table:
    table = Table(title="requests", title_justify="left", expand=True)
    table.add_column("rule")
    table.add_column("zone")
    for kind in KINDS:
        table.add_column(kind, justify="right", style=_STYLES[kind])
    table.add_column("req/s", justify="right")
    table.add_column(f"last {_HISTORY} polls")
    for zone, counts in sorted(totals_of(snapshot).items()):
        rates = picture.now.get(zone)
        rate = f"{sum(rates.values()):.1f}" if rates else "-"
        cells = [str(counts[k]) for k in KINDS]
        table.add_row(zone[0], zone[1] or "(none)", *cells, rate, _spark(picture.rates.get(zone)))
    return table


def _near(snapshot: dict[str, Any]) -> Table:
    table = Table(title="nearest their limits", title_justify="left", expand=True)
    for name in ("limit", "caller", "used / limit", "", "resets in"):
        table.add_column(name, justify="right" if name.startswith("used") else "left")
    at = snapshot["at"]
    for limit, entries in snapshot["near"].items():
        for entry in entries:
            table.add_row(
                limit,
                _caller(entry),
                f"{entry['used']} / {entry['limit']}",
                ProgressBar(total=entry["limit"], completed=entry["used"], width=20),
                f"{max(entry['reset_at'] - at, 0):.0f} s",
            )
    return table


def _held(snapshot: dict[str, Any]) -> Table:
    table = Table(title="lockouts and blocks", title_justify="left", expand=True)
    for name in ("what", "who", "until", "reason"):
        table.add_column(name)
    for entry in snapshot["lockouts"]:
        until = time.strftime("%H:%M:%S", time.localtime(entry["reset_at"]))
        table.add_row("lockout", _caller(entry), until, "")
    for block in snapshot["blocks"]:
        until = block["until"]
        shown = time.strftime("%H:%M:%S", time.localtime(until)) if until else "until lifted"
        table.add_row(f"block ({block['kind']})", block["value"], shown, block["reason"])
    return table


def _store_and_policy(snapshot: dict[str, Any]) -> Text:
    store, policy = snapshot["store"], snapshot["policy"]
    text = Text()
    text.append("store ", style="bold")
    text.append(f"{store['kind']} {store['url']} ")
    text.append(*(("healthy", "green") if store["healthy"] else ("DOWN", "bold red")))
    latency = store.get("latency")
    if latency:
        text.append(f" · p50 {_ms(latency['p50_ms'])} p99 {_ms(latency['p99_ms'])}")
    text.append(f" · errors {store.get('errors', '-')} outages {store.get('outages', '-')}")
    text.append(f" · on error {store['on_store_error']}\n")
    text.append("policy ", style="bold")
    text.append(f"{policy['source']} (generation {policy.get('generation', 0)})")
    rates = policy.get("limits", {})
    for rule in policy["rules"]:
        limits = "; ".join(f"{n} {' + '.join(rates.get(n, []))}" for n in rule["limits"])
        text.append(f"\n  {rule['name']}: {' '.join(rule['routes'])} → {limits or 'none'}")
    return text


def render(picture: Picture, source: str) -> RenderableType:
    """The screen for the latest snapshot ``picture`` holds."""
    snapshot = picture.last
    if snapshot is None:
        return Text(f"ratekeeper top: waiting for {source}…")
    clock = time.strftime("%H:%M:%S", time.localtime(snapshot["at"]))
    workers = snapshot["workers"]
    shown = "? workers" if workers is None else f"{workers} worker{'' if workers == 1 else 's'}"
    head = Text(f"ratekeeper top · {source} · {shown} · {clock}", "bold")
    for missing in snapshot.get("unavailable", []):
        head.append(f"\nunavailable: {missing}", "red")
    return Group(
        head,
        _requests(picture, snapshot),
        _near(snapshot),
        _held(snapshot),
        _store_and_policy(snapshot),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratekeeper top",
        description="Watch a running ratekeeper serve through its admin listener (--admin).",
    )
    listener_arguments(parser)
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--top", type=int, default=5, help="callers shown per limit (1-32)")
    parser.add_argument(
        "--iterations", type=int, default=0, help="stop after N snapshots (default: until ^C)"
    )
    return parser


def top_main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """The ``ratekeeper top`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if not 1 <= args.top <= 32 or args.interval <= 0:
        print("ratekeeper top: --top takes 1 to 32, --interval a positive number of seconds")
        return 2
    client, base = listener_client(args, 5.0)
    source = args.unix or base
    picture = Picture()
    console = console or Console()
    seen = 0
    with (
        client,
        Live(render(picture, source), console=console, auto_refresh=False) as live,
    ):
        try:
            while not args.iterations or seen < args.iterations:
                try:
                    answer = client.get(base + "/admin/live", params={"top": args.top})
                except httpx.HTTPError as exc:
                    live.update(
                        Text(f"cannot reach {source}: {exc} (retrying)", "red"), refresh=True
                    )
                else:
                    if answer.status_code == 401:
                        message = "the admin token was refused: set --token"
                        live.update(Text(message, "red"), refresh=True)
                        return 1
                    picture.add(answer.json())
                    live.update(render(picture, source), refresh=True)
                    seen += 1
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0
