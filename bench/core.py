"""Decision speed and memory of ratekeeper beside `limits` and `pyrate-limiter`, in one run.

Run ``.venv/bin/python bench/core.py`` (5-10 minutes on 2 shared cores) or ``--quick`` (a few
seconds, smaller sizes, for a smoke test). Every row enforces the same policy per key,
``100/minute; 1000/hour; 10000/day``, and prints one table with ratios against the ratekeeper
row of the same algorithm family. bench/README.md explains each scenario and column.
"""

# Peers are optional (CI installs only the dev extra): each is imported when its row is built.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

POLICY = "100/minute; 1000/hour; 10000/day"
LIMIT_COUNT = 3
BATCH = 100
# Moving the simulated clock this far after each batch of 100 hot-key decisions keeps every
# decision allowed: a fresh minute each batch, <= 400 per hour, <= 8700 per day.
HOT_STEP_S = 1000.0
START_S = 1_700_000_000.0

Decide = Callable[[str], bool]


class SimClock:
    """Simulated time moved by the harness between batches.

    Reads are C-level calls (``partial(box.__getitem__, 0)``), as cheap as ``time.time``, so the
    clock adds no Python frame to any library's hot path.
    """

    def __init__(self, start_s: float = START_S) -> None:
        self._s = [start_s]
        self._ms = [round(start_s * 1000)]
        self.seconds: Callable[[], float] = functools.partial(self._s.__getitem__, 0)
        self.millis: Callable[[], int] = functools.partial(self._ms.__getitem__, 0)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self._s[0] += seconds
        self._ms[0] += round(seconds * 1000)


@dataclass
class Built:
    """A contender ready to decide: ``decide(key)`` returns whether the request passes."""

    decide: Decide
    close: Callable[[], None]


@dataclass(frozen=True)
class Contender:
    """One row of the table: a library configured for the policy, and how to build it."""

    name: str
    family: str
    package: str
    build: Callable[[SimClock | None], Built]
    memory_id: str
    baseline: bool = False


# ---------------------------------------------------------------- ratekeeper


def _ratekeeper(algorithm: str) -> Callable[[SimClock | None], Built]:
    def build(clock: SimClock | None) -> Built:
        from ratekeeper import Limiter, LimitSet, MemoryStore

        limit_set = LimitSet("api", POLICY, algorithm=algorithm)
        store = MemoryStore()
        limiter = Limiter(store) if clock is None else Limiter(store, clock=clock.seconds)
        hit = limiter.hit

        def decide(key: str) -> bool:
            return hit(limit_set, key).allowed

        return Built(decide, store.close)

    return build


# ---------------------------------------------------------------- limits


def _limits(strategy: str, all_or_nothing: bool) -> Callable[[SimClock | None], Built]:
    def build(clock: SimClock | None) -> Built:
        import limits
        import limits.storage.memory as memory_module
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        real_time = memory_module.time  # type: ignore[attr-defined]
        if clock is not None:
            # limits reads time.time() inside its memory storage module; this is its only clock.
            memory_module.time = types.SimpleNamespace(time=clock.seconds)  # type: ignore[attr-defined,assignment]
        storage = MemoryStorage()
        strategy_cls = FixedWindowRateLimiter if strategy == "fixed" else MovingWindowRateLimiter
        limiter = strategy_cls(storage)
        minute, hour, day = limits.parse_many(POLICY)
        test, hit = limiter.test, limiter.hit

        if all_or_nothing:

            def decide(key: str) -> bool:
                if test(minute, key) and test(hour, key) and test(day, key):
                    hit(minute, key)
                    hit(hour, key)
                    hit(day, key)
                    return True
                return False

        else:

            def decide(key: str) -> bool:
                return hit(minute, key) and hit(hour, key) and hit(day, key)

        def close() -> None:
            # The expiry timer iterates the storage's dicts: let it finish before clearing them.
            storage.timer.cancel()
            storage.timer.join()
            storage.reset()
            memory_module.time = real_time  # type: ignore[attr-defined]

        return Built(decide, close)

    return build


# ---------------------------------------------------------------- pyrate-limiter


def _pyrate(algorithm: str) -> Callable[[SimClock | None], Built]:
    def build(clock: SimClock | None) -> Built:
        from pyrate_limiter import (
            GCRA,
            AbstractBucket,
            BucketFactory,
            Duration,
            InMemoryBucket,
            Limiter,
            MonotonicClock,
            Rate,
            RateItem,
            StateBucket,
        )

        rates = [Rate(100, Duration.MINUTE), Rate(1000, Duration.HOUR), Rate(10000, Duration.DAY)]
        bucket_clock: Any = (
            MonotonicClock() if clock is None else types.SimpleNamespace(now=clock.millis)
        )

        class PerKeyFactory(BucketFactory):
            """One bucket per key, created on demand: the pattern of pyrate-limiter's README."""

            def __init__(self) -> None:
                self.buckets: dict[str, AbstractBucket] = {}

            def wrap_item(self, name: str, weight: int = 1) -> RateItem:
                return RateItem(name, bucket_clock.now(), weight=weight)

            def get(self, item: RateItem) -> AbstractBucket:
                bucket = self.buckets.get(item.name)
                if bucket is None:
                    if algorithm == "gcra":
                        bucket = self.create(
                            StateBucket, rates, algorithm=GCRA(), clock=bucket_clock
                        )
                    else:
                        bucket = self.create(InMemoryBucket, rates)
                        bucket._clock = bucket_clock
                    self.buckets[item.name] = bucket
                return bucket

        limiter = Limiter(PerKeyFactory())
        try_acquire = limiter.try_acquire

        def decide(key: str) -> bool:
            return try_acquire(key, blocking=False)  # type: ignore[return-value]

        return Built(decide, limiter.close)

    return build


CONTENDERS: tuple[Contender, ...] = (
    Contender("ratekeeper fixed_window", "fixed", "ratekeeper", _ratekeeper("fixed_window"),
              "rk-fixed", baseline=True),
    Contender("ratekeeper sliding_window", "sliding", "ratekeeper",
              _ratekeeper("sliding_window"), "rk-sliding", baseline=True),
    Contender("ratekeeper gcra", "gcra", "ratekeeper", _ratekeeper("gcra"), "rk-gcra",
              baseline=True),
    Contender("limits fixed, test x3 + hit x3", "fixed", "limits", _limits("fixed", True),
              "limits-fixed"),
    Contender("limits fixed, naive hit x3", "fixed", "limits", _limits("fixed", False),
              "limits-fixed"),
    Contender("limits moving, test x3 + hit x3", "sliding", "limits", _limits("moving", True),
              "limits-moving"),
    Contender("limits moving, naive hit x3", "sliding", "limits", _limits("moving", False),
              "limits-moving"),
    Contender("pyrate InMemoryBucket (log)", "sliding", "pyrate-limiter", _pyrate("log"),
              "pyrate-log"),
    Contender("pyrate StateBucket gcra", "gcra", "pyrate-limiter", _pyrate("gcra"),
              "pyrate-gcra"),
)  # fmt: skip

BY_MEMORY_ID = {c.memory_id: c for c in reversed(CONTENDERS)}


# ---------------------------------------------------------------- measuring


@dataclass
class Timing:
    """Per-call times (ns) of each timed batch, and how many decisions were allowed."""

    batch_ns: list[float] = field(default_factory=list)
    allowed: int = 0
    calls: int = 0

    def add(self, other: Timing) -> None:
        """Pool another run's batches into this one."""
        self.batch_ns += other.batch_ns
        self.allowed += other.allowed
        self.calls += other.calls

    @property
    def best_us(self) -> float:
        """The fastest batch's per-call time, in µs: noise on a shared machine only ever adds
        time, so the minimum of repeats is the best estimate of what the code costs (timeit's
        advice)."""
        return min(self.batch_ns) / 1000

    @property
    def p50_us(self) -> float:
        """Median per-call time of the batches, in µs."""
        return statistics.median(self.batch_ns) / 1000

    @property
    def allowed_pct(self) -> float:
        """Share of timed decisions that were allowed, in percent."""
        return 100.0 * self.allowed / self.calls if self.calls else 0.0


def _time_batches(
    decide: Decide, batches: list[list[str]], between: Callable[[], None] | None = None
) -> Timing:
    timing = Timing()
    clock_ns = time.perf_counter_ns
    allowed = 0
    out = timing.batch_ns
    for batch in batches:
        start = clock_ns()
        # sum(map(...)) loops in C: the harness adds no Python bytecode per call.
        allowed += sum(map(decide, batch))
        out.append((clock_ns() - start) / len(batch))
        if between is not None:
            between()
    timing.allowed = allowed
    timing.calls = sum(len(b) for b in batches)
    return timing


def _settle() -> None:
    gc.collect()


def measure_hot(contender: Contender, batches: int) -> Timing:
    """One key, simulated time moved after each batch so that every decision is allowed."""
    clock = SimClock()
    built = contender.build(clock)
    try:
        keys = [["hot-key"] * BATCH]
        step = functools.partial(clock.advance, HOT_STEP_S)
        _time_batches(built.decide, keys * max(batches // 10, 5), step)
        return _time_batches(built.decide, keys * batches, step)
    finally:
        built.close()
        _settle()


def measure_over(contender: Contender, batches: int) -> Timing:
    """One key, simulated time frozen: after the first 100, every decision is rejected."""
    clock = SimClock()
    built = contender.build(clock)
    try:
        keys = [["hot-key"] * BATCH]
        _time_batches(built.decide, keys * max(batches // 10, 5))
        return _time_batches(built.decide, keys * batches)
    finally:
        built.close()
        _settle()


def measure_round_robin(contender: Contender, key_count: int, rounds: int) -> Timing:
    """``key_count`` distinct keys in turn on the real clock; the first round (creating every
    key) is not timed."""
    built = contender.build(None)
    try:
        keys = [f"user-{i:07d}" for i in range(key_count)]
        batches = [keys[i : i + BATCH] for i in range(0, key_count, BATCH)]
        _time_batches(built.decide, batches)
        return _time_batches(built.decide, batches * rounds)
    finally:
        built.close()
        _settle()


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(memory_id: str, key_count: int, method: str) -> dict[str, Any]:
    """Bytes per key after ``key_count`` distinct keys were each decided once (frozen time, so
    nothing expires). Runs in a fresh process; key strings are made before the baseline."""
    contender = BY_MEMORY_ID[memory_id]
    built = contender.build(SimClock())
    keys = [f"user-{i:07d}" for i in range(key_count)]
    built.decide("warm-up")
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss_bytes()
    allowed = sum(map(built.decide, keys))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else _rss_bytes()
    return {"bytes_per_key": (after - before) / key_count, "allowed": allowed, "keys": key_count}


def measure_memory(memory_id: str, key_count: int, method: str) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter so no other row's heap is in the way."""
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", memory_id,
         "--memory-keys", str(key_count), "--memory-method", method],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"memory run for {memory_id!r} failed (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["allowed"] != key_count:
        raise RuntimeError(
            f"memory run for {memory_id!r} allowed {result['allowed']} of {key_count} fresh keys,"
            " expected all: its state would not be what the column claims"
        )
    return result


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    """Everything measured for one contender."""

    contender: Contender
    hot: Timing = field(default_factory=Timing)
    rr: Timing = field(default_factory=Timing)
    over: Timing = field(default_factory=Timing)
    bytes_per_key: float | None = None
    missing: str = ""


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return "-"
    return f"{value / base:.1f}x"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(rows: list[Row], memory_title: str) -> str:
    """The one table: latency per scenario, memory, and ratios to the same-family baseline."""
    baseline = {r.contender.family: r for r in rows if r.contender.baseline and not r.missing}
    header = (
        f"{'row':<32} {'fam':<7}|{'hot key, allowed':^21}|{'keys round-robin':^21}|"
        f"{'over limit':^14}|{memory_title:^23}| allowed %"
    )
    sub = (
        f"{'':<32} {'':<7}|{'best':>6} {'p50':>6} {'x rk':>7}|{'best':>6} {'p50':>6} {'x rk':>7}|"
        f"{'best':>6} {'x rk':>7}|{'B/key':>7} {'B/lim':>6} {'x rk':>8}| hot/rr/over"
    )
    lines = [header, sub, "-" * len(sub)]
    for row in rows:
        name = row.contender.name
        if row.missing:
            lines.append(f"{name:<32} {row.contender.family:<7}| {row.missing}")
            continue
        base = baseline.get(row.contender.family)
        per_limit = None if row.bytes_per_key is None else row.bytes_per_key / LIMIT_COUNT
        lines.append(
            f"{name:<32} {row.contender.family:<7}|"
            f"{row.hot.best_us:>6.2f} {row.hot.p50_us:>6.2f} "
            f"{_ratio(row.hot.best_us, base.hot.best_us if base else None):>7}|"
            f"{row.rr.best_us:>6.2f} {row.rr.p50_us:>6.2f} "
            f"{_ratio(row.rr.best_us, base.rr.best_us if base else None):>7}|"
            f"{row.over.best_us:>6.2f} "
            f"{_ratio(row.over.best_us, base.over.best_us if base else None):>7}|"
            f"{_num(row.bytes_per_key, 0):>7} {_num(per_limit, 0):>6} "
            f"{_ratio(row.bytes_per_key, base.bytes_per_key if base else None):>8}| "
            f"{row.hot.allowed_pct:.0f}/{row.rr.allowed_pct:.0f}/{row.over.allowed_pct:.1f}"
        )
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def verdicts(rows: list[Row]) -> list[str]:
    """The issues' targets, each with the best figure it is judged on, MET or MISSED, and the
    figure's ratio to limits' fail-fast refusal in the same run (``x lim``), a yardstick that
    moves with the machine as ratekeeper's figures do."""
    found = {r.contender.name: r for r in rows if not r.missing}
    lines: list[str] = []
    rk = found.get("ratekeeper fixed_window")
    if rk is None:
        return lines
    peer = found.get("limits fixed, test x3 + hit x3")
    yardstick = peer.over.best_us if peer is not None else None

    def lim(value: float) -> str:
        return "" if yardstick is None else f" ({value / yardstick:.2f}x lim)"

    if yardstick is not None:
        lines.append(
            f"x lim = figure / limits' fail-fast refusal ({yardstick:.2f} us best, this run)"
        )
    worst = max(rk.hot.best_us, rk.rr.best_us)
    lines.append(
        f"target <= 2 us per 3-limit decision (allowed): ratekeeper fixed_window best hot "
        f"{rk.hot.best_us:.2f} us{lim(rk.hot.best_us)}, round-robin {rk.rr.best_us:.2f} us"
        f"{lim(rk.rr.best_us)} -> {_mark(worst <= 2.0)}"
    )
    for peer_name, base_name, factor in (
        ("limits fixed, test x3 + hit x3", "ratekeeper fixed_window", 10.0),
        ("limits moving, test x3 + hit x3", "ratekeeper sliding_window", 10.0),
        ("pyrate InMemoryBucket (log)", "ratekeeper sliding_window", 4.0),
        ("pyrate StateBucket gcra", "ratekeeper gcra", 4.0),
    ):
        other, base = found.get(peer_name), found.get(base_name)
        if other is None or base is None:
            continue
        hot = other.hot.best_us / base.hot.best_us
        rr = other.rr.best_us / base.rr.best_us
        lines.append(
            f"target >= {factor:.0f}x faster than {peer_name}: {base_name} is {hot:.1f}x (hot), "
            f"{rr:.1f}x (round-robin) faster -> {_mark(min(hot, rr) >= factor)}"
        )
    lines.append(
        f"issue 17: target <= 1 us to refuse a key over its limit: ratekeeper fixed_window best "
        f"{rk.over.best_us:.2f} us{lim(rk.over.best_us)} -> {_mark(rk.over.best_us <= 1.0)}"
    )
    for row in rows:
        if row.contender.baseline and row.bytes_per_key is not None:
            per_limit = row.bytes_per_key / LIMIT_COUNT
            lines.append(
                f"target <= 150 B per key per limit (issue 17: <= 250 B per key): "
                f"{row.contender.name} {per_limit:.0f} B, {row.bytes_per_key:.0f} B per key"
                f" -> {_mark(per_limit <= 150)}, {_mark(row.bytes_per_key <= 250)}"
            )
    return lines


def _versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for package in ("ratekeeper", "limits", "pyrate-limiter"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts.append(f"{os.cpu_count()} cpus, load {load:.1f}")
    return ", ".join(parts)


def _installed(package: str) -> bool:
    module = {"pyrate-limiter": "pyrate_limiter"}.get(package, package)
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _alternating(rows: list[Row], repeat: int) -> Iterator[Row]:
    """Rows in forward then reverse order, ``repeat`` times, so drift hits all rows alike."""
    live = [r for r in rows if not r.missing]
    for index in range(repeat):
        yield from live if index % 2 == 0 else reversed(live)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario for every contender and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few seconds")
    parser.add_argument("--repeat", type=int, default=None, help="latency passes to pool")
    parser.add_argument("--rr-keys", type=int, default=None, help="keys in the round-robin")
    parser.add_argument("--memory-keys", type=int, default=None, help="keys for memory")
    parser.add_argument(
        "--memory-method", choices=("rss", "tracemalloc"), default=None,
        help="rss (default on Linux): resident-set growth; tracemalloc: Python heap only",
    )  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the memory columns")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    method = args.memory_method or ("rss" if os.path.exists("/proc/self/statm") else "tracemalloc")
    memory_keys = args.memory_keys or (10_000 if args.quick else 1_000_000)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, memory_keys, method)))
        return 0

    hot_batches = 100 if args.quick else 2000
    over_batches = 50 if args.quick else 1000
    rr_keys = args.rr_keys or (5_000 if args.quick else 100_000)
    rr_rounds = 1 if args.quick else 2
    repeat = args.repeat or (1 if args.quick else 2)

    rows = [Row(c) for c in CONTENDERS]
    for row in rows:
        if not _installed(row.contender.package):
            row.missing = f"{row.contender.package} not installed (pip install -e '.[bench]')"

    started = time.perf_counter()
    for row in _alternating(rows, repeat):
        row.hot.add(measure_hot(row.contender, hot_batches // repeat))
        row.over.add(measure_over(row.contender, over_batches // repeat))
    for row in _alternating(rows, repeat):
        row.rr.add(measure_round_robin(row.contender, rr_keys, rr_rounds))
    memory_title, memory_note = "memory: not run", "memory: not run (--no-memory)"
    if not args.no_memory:
        measured: dict[str, float] = {}
        for row in rows:
            if row.missing:
                continue
            memory_id = row.contender.memory_id
            if memory_id not in measured:
                measured[memory_id] = measure_memory(memory_id, memory_keys, method)[
                    "bytes_per_key"
                ]
            row.bytes_per_key = measured[memory_id]
        memory_title = f"memory ({method})"
        memory_note = (
            f"memory: {method}, {memory_keys:,} keys each decided once, frozen clock, a fresh"
            " process per storage layout."
        )
    elapsed = time.perf_counter() - started

    print(f"policy per key: {POLICY} -- {_versions()}")
    print(
        f"latency: us per decision, {repeat} pass(es) of {BATCH}-call batches; best: the fastest"
        " batch (noise only adds time),\n  p50: the median batch\n"
        f"  hot key, allowed: one key, simulated clock +{HOT_STEP_S:g} s after each batch\n"
        f"  keys round-robin: {rr_keys:,} keys in turn, real clock, first round not timed\n"
        "  over limit: one key, frozen clock: rejected after its first 100\n"
        f"{memory_note}\n"
        "x rk = this row / the ratekeeper row of the same family (>1: slower or bigger)"
    )
    print(render(rows, memory_title))
    for line in verdicts(rows):
        print(line)
    print(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
