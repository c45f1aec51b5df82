"""The SQLite store: same decisions as the memory store, persistent, exact, and loud when broken."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratekeeper import (
    Decision,
    Limit,
    Limiter,
    LimitSet,
    ManualClock,
    MemoryStore,
    StoreError,
    StoreURLError,
    store_from_url,
)
from ratekeeper.core import EntryState
from ratekeeper.stores import sqlite as sqlite_module
from ratekeeper.stores.sqlite import SQLiteStore

SRC = str(Path(__file__).resolve().parents[1] / "src")

LIMIT_SETS = (
    LimitSet("fixed", "3/10s; 5/minute"),
    LimitSet("first", Limit.parse("2/7s", "first_hit_window")),
    LimitSet("sliding", Limit.parse("4/10s", "sliding_window")),
    LimitSet("gcra", [Limit.parse("5/10s", "gcra", burst=2), Limit.parse("8/minute")]),
)
GLOBAL = LimitSet("global", "12/30s")


def _view(decision: Decision) -> tuple[object, ...]:
    return (
        decision.allowed,
        decision.retry_after_s,
        tuple(
            (s.limit_set, s.key, s.remaining, s.reset_at, s.retry_after_s) for s in decision.states
        ),
    )


operations = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "hit_global", "peek", "reset"]),
        st.integers(0, len(LIMIT_SETS) - 1),
        st.sampled_from(["alice", "bob", "carol"]),
        st.integers(1, 3),
        st.floats(0, 8, allow_nan=False).map(lambda x: round(x, 3)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_decisions_equal_the_memory_store(ops: list[tuple[str, int, str, int, float]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_store = SQLiteStore(Path(tmp) / "rk.db")
        memory_store = MemoryStore()
        try:
            clock = ManualClock(1_700_000_000.0)
            for op, index, key, cost, advance in ops:
                clock.advance(advance)
                limit_set = LIMIT_SETS[index]
                items: tuple[tuple[LimitSet, str], ...] = ((limit_set, key),)
                if op == "hit_global":
                    items = ((limit_set, key), (GLOBAL, "all"))
                if op == "reset":
                    sqlite_store.reset(items)
                    memory_store.reset(items)
                    continue
                peek = op == "peek"
                got = sqlite_store.decide(items, 0 if peek else cost, clock(), peek=peek)
                want = memory_store.decide(items, 0 if peek else cost, clock(), peek=peek)
                assert _view(got) == _view(want)
        finally:
            sqlite_store.close()


def test_a_daily_quota_survives_closing_and_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/quota.db"
    limits = LimitSet("daily", "5/day")
    clock = ManualClock(1_700_000_000.0)
    store = store_from_url(url)
    for _ in range(3):
        assert Limiter(store, clock=clock).hit(limits, "key")
    store.close()
    clock.advance(3600)
    reopened = store_from_url(url)
    limiter = Limiter(reopened, clock=clock)
    assert [bool(limiter.hit(limits, "key")) for _ in range(3)] == [True, True, False]
    reopened.close()


_HIT_SCRIPT = """
import sys
from ratekeeper import Limiter, LimitSet, ManualClock
from ratekeeper.stores.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
limiter = Limiter(store, clock=ManualClock(float(sys.argv[2])))
print(sum(bool(limiter.hit(LimitSet("daily", "5/day"), "key")) for _ in range(int(sys.argv[3]))))
"""


def _hit_in_new_process(path: Path, now: float, hits: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _HIT_SCRIPT, str(path), str(now), str(hits)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    return int(out.stdout)


def test_a_daily_quota_survives_a_process_restart(tmp_path: Path) -> None:
    path = tmp_path / "quota.db"
    day = 1_700_006_400.0  # a UTC midnight
    assert _hit_in_new_process(path, day + 100, 4) == 4
    assert _hit_in_new_process(path, day + 50_000, 4) == 1
    assert _hit_in_new_process(path, day + 86_400 + 1, 4) == 4


_WORKER_SCRIPT = """
import json, random, sys, threading, time
from ratekeeper import Limit, LimitSet, Limiter, StoreError
from ratekeeper.stores.sqlite import SQLiteStore
path, start_at, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
per_key = LimitSet("key", Limit.parse("200/hour", "first_hit_window"))
everyone = LimitSet("all", Limit.parse("1500/hour", "first_hit_window"))
store = SQLiteStore(path, busy_timeout_s=30)
limiter = Limiter(store)
admitted = {}
attempts = [0]
errors = []
lock = threading.Lock()
def work(seed):
    rng = random.Random(seed)
    mine = {}
    tries = 0
    while time.time() < start_at:
        time.sleep(0.01)
    while time.time() < start_at + duration:
        key = f"key-{rng.randrange(10)}"
        try:
            decision = limiter.hit_many([(per_key, key), (everyone, "all")])
        except StoreError as exc:
            errors.append(str(exc))
            continue
        tries += 1
        if decision.allowed:
            mine[key] = mine.get(key, 0) + 1
    with lock:
        attempts[0] += tries
        for key, n in mine.items():
            admitted[key] = admitted.get(key, 0) + n
threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"admitted": admitted, "attempts": attempts[0], "errors": errors[:3]}))
"""


def test_four_processes_of_fifty_threads_admit_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    start_at = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER_SCRIPT, str(path), str(start_at), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        for _ in range(4)
    ]
    admitted: dict[str, int] = {}
    attempts = 0
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["errors"] == []
        attempts += result["attempts"]
        for key, n in result["admitted"].items():
            admitted[key] = admitted.get(key, 0) + n
    assert attempts > 3000, "too few attempts to contend"
    # The global limit binds: exactly its amount got through, all or nothing per decision, so
    # every key's stored count equals what its callers were told.
    assert sum(admitted.values()) == 1500
    store = SQLiteStore(path)
    now = time.time()
    everyone = LimitSet("all", Limit.parse("1500/hour", "first_hit_window"))
    per_key = LimitSet("key", Limit.parse("200/hour", "first_hit_window"))
    assert store.decide(((everyone, "all"),), 0, now, peek=True).remaining == 0
    for i in range(10):
        stored = 200 - store.decide(((per_key, f"key-{i}"),), 0, now, peek=True).remaining
        assert stored == admitted.get(f"key-{i}", 0) <= 200
    store.close()


def test_a_rejection_reads_without_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    store = SQLiteStore(path, busy_timeout_s=0)
    limits = LimitSet("api", "1/hour")
    now = 1_700_000_000.0
    assert store.decide(((limits, "spent"),), 1, now).allowed
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
    try:
        assert not store.decide(((limits, "spent"),), 1, now).allowed
        # A charge needs the lock: with no busy timeout it fails at once, naming the file.
        with pytest.raises(StoreError, match=r"rk\.db.*busy_timeout_s"):
            store.decide(((limits, "fresh"),), 1, now)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.decide(((limits, "fresh"),), 1, now).allowed
    store.close()


def test_a_charge_read_before_another_writer_committed_is_decided_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rk.db"
    store, other = SQLiteStore(path), SQLiteStore(path)
    limits = LimitSet("api", "2/hour")
    now = 1_700_000_000.0
    assert store.decide(((limits, "warm"),), 1, now).allowed  # its due sweep, done
    # Its last decision charged nothing: the next one starts as a read, not under the lock.
    assert store.decide(((limits, "warm"),), 0, now, peek=True).remaining == 1
    assert other.decide(((limits, "k"),), 1, now).remaining == 1
    seen: list[object] = []
    real_decide = sqlite_module.decide

    def interleaved(
        items: Sequence[tuple[LimitSet, str]],
        entries: list[EntryState | None],
        at: float,
        cost: int,
    ) -> tuple[list[EntryState] | None, Decision]:
        seen.append(entries[0])
        if len(seen) == 1:
            # Between this transaction's read and its write, another process charges the last
            # unit (its own call decides once, on the state it cached).
            assert other.decide(items, 1, at).allowed
        return real_decide(items, entries, at, cost)

    monkeypatch.setattr(sqlite_module, "decide", interleaved)
    decision = store.decide(((limits, "k"),), 1, now)
    monkeypatch.undo()
    # Read (1 left), the other's read and charge, then this one again under the write lock.
    assert len(seen) == 3 and seen[0] == seen[1] != seen[2]
    assert not decision.allowed
    assert store.decide(((limits, "k"),), 0, now, peek=True).remaining == 0
    store.close()
    other.close()


def test_cached_rows_are_trusted_only_until_another_connection_commits(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    store, other = SQLiteStore(path), SQLiteStore(path)
    limits = LimitSet("api", "3/hour")
    key = ((limits, "k"),)
    now = 1_700_000_000.0

    def remaining() -> int:
        return store.decide(key, 0, now, peek=True).remaining

    assert store.decide(key, 1, now).remaining == 2
    assert remaining() == 2
    assert other.decide(key, 1, now).remaining == 1
    assert remaining() == 1
    assert other.decide(key, 1, now).remaining == 0
    assert not store.decide(key, 1, now).allowed
    other.reset(key)
    # A rejection from the cache would be wrong now: the other connection's reset is seen.
    assert store.decide(key, 1, now).remaining == 2
    store.reset(key)
    assert remaining() == 3
    store.close()
    other.close()


def test_threads_and_tasks_of_one_process_are_exact(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rk.db")
    limits = LimitSet("api", "50/hour")
    now = 1_700_000_000.0

    async def main() -> int:
        decisions = await asyncio.gather(
            *(store.decide_async(((limits, "k"),), 1, now) for _ in range(120))
        )
        return sum(d.allowed for d in decisions)

    assert asyncio.run(main()) == 50
    assert store.decide(((limits, "k"),), 0, now, peek=True).remaining == 0
    asyncio.run(store.reset_async(((limits, "k"),)))
    assert store.decide(((limits, "k"),), 1, now).remaining == 49
    asyncio.run(store.close_async())


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rk.db")
    limits = LimitSet("api", "10/hour")
    now = 1_700_000_000.0
    store.decide(((limits, "k"),), 1, now)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for _ in range(4):
                store.decide(((limits, "k"),), 1, now)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.decide(((limits, "k"),), 1, now).remaining == 4
    store.close()


def test_expired_rows_are_swept_a_slice_per_decision(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    store = SQLiteStore(path, purge_interval_s=60)
    minute = LimitSet("minute", "10/minute")
    day = LimitSet("day", "10/day")
    now = 1_700_000_000.0
    for i in range(1500):
        store.decide(((minute, f"k{i}"),), 1, now)
    store.decide(((day, "lasting"),), 1, now)

    def rows() -> int:
        with sqlite3.connect(path) as conn:
            count: int = conn.execute("SELECT count(*) FROM ratekeeper_state").fetchone()[0]
        return count

    assert rows() == 1501
    now += 61  # past the minute rows' expiry and the purge interval
    counts = []
    for _ in range(6):
        store.decide(((day, "lasting"),), 1, now)
        counts.append(rows())
    # Each decision looks at one slice of 500 rows in key order (the live "day" row sorts
    # first), until a short slice ends the sweep; then it rests for the interval.
    assert counts == [1002, 502, 2, 1, 1, 1]
    for i in range(20):
        store.decide(((minute, f"late{i}"),), 1, now)
    now += 61
    store.decide(((day, "lasting"),), 1, now)
    assert rows() == 1
    assert store.decide(((day, "lasting"),), 0, now, peek=True).remaining == 2
    store.close()


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    store = SQLiteStore(path)
    secret = "sk_live_0123456789abcdef"
    store.decide(((LimitSet("api", "5/minute"), secret),), 1, 1_700_000_000.0)
    store.close()
    for file in tmp_path.iterdir():
        assert secret.encode() not in file.read_bytes()


def test_a_corrupted_file_is_an_error_naming_it_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    garbage = b"this is not a database, but it is somebody's file\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="corrupted or not an SQLite database") as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage


def test_a_corrupted_state_row_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    limits = LimitSet("api", "5/minute")
    store = SQLiteStore(path)
    store.decide(((limits, "k"),), 1, 1_700_000_000.0)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE ratekeeper_state SET state = x'0203'")
    with pytest.raises(StoreError, match="unreadable state row") as info:
        store.decide(((limits, "k"),), 1, 1_700_000_000.0)
    assert str(path) in str(info.value)
    store.close()


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreError, match="not a ratekeeper file"):
        SQLiteStore(path)
    with sqlite3.connect(path) as conn:
        tables = conn.execute("SELECT name FROM sqlite_schema").fetchall()
    assert tables == [("users",)]


def _in_unprivileged_child(action: Callable[[], str]) -> str:
    """Run ``action`` as an unprivileged user (root ignores file modes) and return its text."""
    if os.geteuid() != 0:
        return action()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            text = action()
        except BaseException as exc:
            text = f"child failed: {exc!r}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


def test_a_read_only_file_is_an_error_naming_it() -> None:
    directory = Path(tempfile.mkdtemp(prefix="rk-readonly-"))
    path = directory / "rk.db"
    limits = LimitSet("api", "5/minute")
    store = SQLiteStore(path)
    store.decide(((limits, "k"),), 1, 1_700_000_000.0)
    store.close()
    path.chmod(0o444)
    directory.chmod(0o777)
    before = path.read_bytes()

    def open_it() -> str:
        try:
            SQLiteStore(path).close()
        except StoreError as exc:
            return str(exc)
        return "opened"

    try:
        message = _in_unprivileged_child(open_it)
        after = path.read_bytes()
    finally:
        for file in directory.iterdir():
            file.unlink()
        directory.rmdir()
    assert "read-only" in message
    assert str(path) in message
    assert after == before


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/rk.db", "expected sqlite:///relative/file.db"),
        ("sqlite:///", "expected sqlite:///relative/file.db"),
        ("sqlite:///rk.db?journal=off", "unknown option"),
        ("sqlite:///rk.db?busy_timeout_s=soon", "busy_timeout_s must be a number"),
        ("sqlite:///rk.db?purge_interval_s=inf", "purge_interval_s must be a finite number"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(StoreURLError, match=message):
        store_from_url(url)


def test_url_paths_are_relative_with_three_slashes_absolute_with_four(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = store_from_url("sqlite:///rel.db?busy_timeout_s=0.5&purge_interval_s=10")
    absolute = store_from_url(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.busy_timeout_s == 0.5
    assert relative.purge_interval_s == 10
    assert (tmp_path / "rel.db").exists()
    assert (tmp_path / "abs.db").exists()
    relative.close()
    absolute.close()


def test_a_missing_directory_and_a_closed_store_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "rk.db"
    with pytest.raises(StoreError, match="directory exists") as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    store = SQLiteStore(tmp_path / "rk.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.decide(((LimitSet("api", "5/minute"), "k"),), 1, 0.0)


_OPEN_TOGETHER = """
import sys, time
from ratekeeper import Limiter, LimitSet, SQLiteStore
path, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
limiter = Limiter(SQLiteStore(path))
print(int(limiter.hit(LimitSet("api", "100/hour"), "k").allowed))
"""


def test_processes_opening_one_new_file_together_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL fails at once (no busy handler) while another process does
    # the same; every opener must wait its turn instead.
    for attempt in range(3):
        path = tmp_path / f"new-{attempt}.db"
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_TOGETHER, str(path), str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outputs = [proc.communicate(timeout=60) for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * 6, [err for _, err in outputs]
        assert sum(int(out) for out, _ in outputs) == 6


_ONE_KEY_WORKER = """
import json, sys, time
from ratekeeper import Limit, Limiter, LimitSet, SQLiteStore, StoreError
path = sys.argv[1]
limits = LimitSet("one", [Limit.parse("400/hour", "first_hit_window"), Limit.parse("10000/day")])
# No over-limit cache: every refusal is the store's own, read under contention.
limiter = Limiter(SQLiteStore(path), over_limit_cache_s=0)
# Imports under load can take seconds: both start charging only when the test says go.
print("ready", flush=True)
sys.stdin.readline()
start_at = time.time()
admitted = attempts = 0
errors = []
while time.time() < start_at + 1.5:
    try:
        admitted += limiter.hit(limits, "hot").allowed
    except StoreError as exc:
        errors.append(str(exc))
    attempts += 1
print(json.dumps({"admitted": admitted, "attempts": attempts, "errors": errors[:3]}))
"""


def test_two_processes_charging_one_key_admit_exactly_its_limit(tmp_path: Path) -> None:
    # One item per decision (the common one-statement write), both processes on one row.
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ONE_KEY_WORKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert [r["errors"] for r in results] == [[], []]
    # Both ran in the same 1.5 s, each well past the limit's 400 decisions in total.
    assert all(r["attempts"] > 300 for r in results), results
    assert sum(r["admitted"] for r in results) == 400


def test_a_charge_waits_out_another_writer_and_past_its_timeout_is_a_store_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rk.db"
    limits = LimitSet("api", "5/hour")
    now = 1_700_000_000.0
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    patient, hasty = SQLiteStore(path, busy_timeout_s=10), SQLiteStore(path, busy_timeout_s=0.2)
    writer.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.5, writer.execute, ("ROLLBACK",))
    released.start()
    try:
        with pytest.raises(StoreError, match=r"rk\.db.*more than 0\.2 s \(busy_timeout_s\)"):
            hasty.decide(((limits, "k"),), 1, now)
        # Waits for the lock (not SQLite's own 1 ms, 2 ms, 5 ms... sleeps), then charges.
        assert patient.decide(((limits, "k"),), 1, now).remaining == 4
    finally:
        released.join()
        writer.close()
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.3, writer.execute, ("ROLLBACK",))
    released.start()
    try:
        patient.reset(((limits, "k"),))
    finally:
        released.join()
        writer.close()
    assert hasty.decide(((limits, "k"),), 1, now).remaining == 4
    patient.close()
    hasty.close()


def test_a_charge_refused_inside_sqlites_update_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rk.db"
    store, other = SQLiteStore(path), SQLiteStore(path)
    limits = LimitSet("api", "3/hour")
    key = ((limits, "k"),)
    now = 1_700_000_000.0
    assert store.decide(key, 1, now).remaining == 2
    # The other process spends the rest: this store's cached row (2 left) is stale now.
    assert other.decide(key, 2, now).remaining == 0
    watcher = sqlite3.connect(path, isolation_level=None)
    version = watcher.execute("PRAGMA data_version").fetchone()[0]
    # Expected to charge, so decided in one UPDATE on the row as it is: refused there.
    decision = store.decide(key, 1, now)
    assert not decision.allowed and decision.remaining == 0
    assert decision.retry_after_s == pytest.approx(3600 - now % 3600)
    assert watcher.execute("PRAGMA data_version").fetchone()[0] == version, "it wrote"
    assert other.decide(key, 0, now, peek=True).remaining == 0
    # The refusal's row is remembered, and its next charge after the window is exact.
    assert store.decide(key, 1, now + 3600).remaining == 2
    watcher.close()
    store.close()
    other.close()


def test_a_charge_of_a_known_key_is_one_statement(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rk.db")
    limits = LimitSet("api", "100/minute; 1000/hour; 10000/day")
    now = 1_700_000_000.0
    assert store.decide(((limits, "k"),), 1, now).allowed
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    for i in range(5):
        assert store.decide(((limits, "k"),), 1, now + i).remaining == 98 - i
    assert [s.split()[0] for s in statements] == ["UPDATE"] * 5
    store.close()


def test_a_new_keys_first_charge_tries_no_update_before_its_insert(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "rk.db")
    limits = LimitSet("api", "5/minute")
    now = 1_700_000_000.0
    assert store.decide(((limits, "warm"),), 1, now).allowed  # charging: the next is likely to
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    assert store.decide(((limits, "new"),), 1, now).remaining == 4
    assert [s.split()[0] for s in statements] == ["BEGIN", "SELECT", "INSERT", "COMMIT"]
    store.close()
