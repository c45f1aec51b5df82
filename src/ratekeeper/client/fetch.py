"""``ratekeeper fetch``: download URLs within a server's limits, for people not writing code.

URLs come from the arguments and/or a file (one per line, ``-`` for stdin). Requests are
paced by a given policy (``--rate 100/minute``, or the provider's policy file or preset with
``--policy``) or by what the server's headers say, retried
as the client's retry policy says, and written to a directory (one file per URL) or as JSON
lines to stdout. A progress bar on stderr shows the current rate and the time spent waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ratekeeper.client.helpers import gather_bounded
from ratekeeper.client.pacing import HostPolicy
from ratekeeper.client.retry import RetryPolicy
from ratekeeper.client.transport import AsyncRateLimitTransport
from ratekeeper.errors import RatekeeperError

__all__ = ["build_parser", "fetch_main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``fetch`` command's arguments."""
    parser = argparse.ArgumentParser(
        prog="ratekeeper fetch",
        description="Fetch URLs politely: paced, retried, never over the server's limits.",
    )
    parser.add_argument("urls", nargs="*", help="URLs to fetch")
    parser.add_argument("-i", "--input", help="file with one URL per line ('-' for stdin)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--rate", help="the server's policy, e.g. '100/minute; 1000/hour'")
    given.add_argument(
        "--policy", help="the server's published policy file, or a preset name (e.g. musique)"
    )
    parser.add_argument("--tier", help="with --policy: your plan in it (e.g. enterprise)")
    parser.add_argument(
        "--algorithm",
        help="how the server counts, if known: fixed_window, first_hit_window, sliding_window, "
        "gcra (unknown: at most N in any span of W, faster once the server shows aligned windows)",
    )
    parser.add_argument("--min-interval", type=float, default=0.0, help="seconds between sends")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    parser.add_argument("--retries", type=int, default=5, help="retries per URL")
    parser.add_argument(
        "--max-wait", type=float, default=300.0, help="longest single wait accepted, seconds"
    )
    parser.add_argument("--store", help="store URL to share the budget, e.g. sqlite:///b.db")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("-o", "--output-dir", help="write each answer's body to a file here")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--user-agent", help="User-Agent to send (some APIs require a contact)")
    parser.add_argument(
        "--warn-low",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="warn when under this fraction of a reported limit is left (default: quiet)",
    )
    return parser


def _read_urls(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    urls = list(args.urls)
    if args.input:
        text = stdin.read() if args.input == "-" else Path(args.input).read_text()
        urls.extend(line.strip() for line in text.splitlines())
    return [u for u in urls if u and not u.startswith("#")]


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def _file_name(index: int, url: str) -> str:
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", httpx.URL(url).path.strip("/"))[-60:] or "index"
    digest = hashlib.blake2b(url.encode(), digest_size=4).hexdigest()
    return f"{index:05d}-{tail}-{digest}"


class _Meter:
    """Completions in the last few seconds and the time spent sleeping, for the bar."""

    def __init__(self) -> None:
        self.done: collections.deque[float] = collections.deque()
        self.waited_s = 0.0

    def rate(self, now: float, span_s: float = 10.0) -> float:
        while self.done and self.done[0] < now - span_s:
            self.done.popleft()
        if not self.done:
            return 0.0
        return len(self.done) / max(min(span_s, now - self.done[0]), 1.0)


def _transport(
    args: argparse.Namespace, sleep: Callable[[float], Awaitable[None]]
) -> AsyncRateLimitTransport:
    """The transport pacing every URL: by ``--policy`` (a file or preset) or by ``--rate``."""
    # Running low is what a fetch paced to the limits does: quiet unless asked.
    options = {
        "min_interval_s": args.min_interval,
        "max_in_flight": args.concurrency,
        "low_remaining": args.warn_low,
        "user_agent": args.user_agent,
    }
    policy = (
        HostPolicy.from_policy(args.policy, tier=args.tier, **options)
        if args.policy
        else HostPolicy(limits=args.rate, algorithm=args.algorithm, tier=args.tier, **options)
    )
    return AsyncRateLimitTransport(
        default=policy,
        retry=RetryPolicy(max_retries=args.retries, max_wait_s=args.max_wait),
        store=args.store,
        sleep=sleep,
    )


def _progress(args: argparse.Namespace, err: Console) -> Progress:
    """The bar on standard error: done of all, the recent rate and the time spent waiting."""
    return Progress(
        TextColumn("[bold]fetch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} req/s"),
        TextColumn("waited {task.fields[waited]:.1f}s"),
        TimeElapsedColumn(),
        console=err,
        disable=args.no_progress,
    )


async def _run(args: argparse.Namespace, urls: list[str], err: Console, out: TextIO) -> int:
    meter = _Meter()

    async def sleep(seconds: float) -> None:
        meter.waited_s += seconds
        await asyncio.sleep(seconds)

    transport = _transport(args, sleep)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    progress = _progress(args, err)
    async with httpx.AsyncClient(
        transport=transport, headers=_headers(args.header), timeout=args.timeout
    ) as client:
        with progress:
            task = progress.add_task("fetch", total=len(urls), rate=0.0, waited=0.0)

            async def one(index: int, url: str) -> None:
                nonlocal failures
                record: dict[str, Any] = {"url": url}
                try:
                    response = await client.get(url)
                    record["status"] = response.status_code
                    if out_dir is not None:
                        path = out_dir / _file_name(index, url)
                        path.write_bytes(response.content)
                        record["file"] = str(path)
                    else:
                        record["body"] = response.text
                    ok = response.is_success
                except (httpx.HTTPError, RatekeeperError) as exc:
                    record["error"] = str(exc)
                    ok = False
                if not ok:
                    failures += 1
                    err.print(f"[red]{url}: {record.get('error') or record.get('status')}")
                if out_dir is None or not ok:
                    out.write(json.dumps(record) + "\n")
                now = time.monotonic()
                meter.done.append(now)
                progress.update(task, advance=1, rate=meter.rate(now), waited=meter.waited_s)

            await gather_bounded(
                (one(i, u) for i, u in enumerate(urls)), max(args.concurrency, 1) * 4
            )
    err.print(
        f"{len(urls) - failures}/{len(urls)} fetched, {failures} failed, "
        f"{meter.waited_s:.1f}s spent waiting for the server's limits"
    )
    return 1 if failures else 0


def fetch_main(
    argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Run ``ratekeeper fetch`` with ``argv``; returns the exit code (0: every URL answered
    2xx, 1: some failed, 2: bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        urls = _read_urls(args, stdin or sys.stdin)
        _headers(args.header)
        if args.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
        if not urls:
            raise ValueError("no URL given: pass URLs as arguments or --input FILE")
        return asyncio.run(_run(args, urls, err, stdout or sys.stdout))
    except (ValueError, OSError, RatekeeperError) as exc:
        err.print(f"ratekeeper fetch: {exc}")
        return 2
