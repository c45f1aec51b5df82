"""The benchmark runs end to end (``--quick``) and compares rows that really enforce the policy."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "core.py"
NUMBER = r"\d+\.\d+"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_core", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def test_quick_run_prints_the_table() -> None:
    done = subprocess.run(
        # Smaller than --quick alone: the table's shape is checked here, not its numbers.
        [sys.executable, str(BENCH), "--quick", "--rr-keys", "1000", "--memory-keys", "2000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "policy per key: 100/minute; 1000/hour; 10000/day" in out
    assert "keys round-robin" in out
    assert "B/key" in out
    row = re.compile(
        rf"^ratekeeper fixed_window\s+fixed\s+\|\s*{NUMBER}\s+{NUMBER}\s+1\.0x\|"
        rf"\s*{NUMBER}\s+{NUMBER}\s+1\.0x\|\s*{NUMBER}\s+1\.0x\|\s*\d+\s+\d+\s+1\.0x\| 100/100/",
        re.MULTILINE,
    )
    assert row.search(out), out
    for name, package in (
        ("limits fixed, test x3 + hit x3", "limits"),
        ("pyrate InMemoryBucket (log)", "pyrate_limiter"),
    ):
        line = next(line for line in out.splitlines() if line.startswith(name))
        if _installed(package):
            # Measured, with a ratio against the ratekeeper row of its family.
            assert re.search(rf"\|\s*{NUMBER}\s+{NUMBER}\s+{NUMBER}x\|", line), line
        else:
            assert "not installed" in line
    assert "target <= 2 us per 3-limit decision" in out


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_bench()


def test_every_row_enforces_the_policy(bench: ModuleType) -> None:
    """A row that let everything through would look fast; each must stop at 100 per minute."""
    for contender in bench.CONTENDERS:
        module = {"pyrate-limiter": "pyrate_limiter"}.get(contender.package, contender.package)
        if not _installed(module):
            continue
        clock = bench.SimClock()
        built = contender.build(clock)
        try:
            assert sum(built.decide("k") for _ in range(150)) == 100, contender.name
            assert built.decide("other-key"), contender.name
            clock.advance(bench.HOT_STEP_S)
            assert built.decide("k"), contender.name
        finally:
            built.close()


def test_sim_clock_moves_seconds_and_milliseconds_together(bench: ModuleType) -> None:
    clock = bench.SimClock(start_s=100.0)
    clock.advance(2.5)
    assert clock.seconds() == 102.5
    assert clock.millis() == 102_500
