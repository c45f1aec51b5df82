"""CPU instructions per decision (valgrind callgrind) for bench/core.py's rows: a figure that does
not move with the machine's load, for changes too small for the timed bench to see.

Run ``.venv/bin/python bench/instructions.py`` (about a minute per row; needs ``valgrind``), or
name rows: ``bench/instructions.py "ratekeeper fixed_window" "limits fixed, test x3 + hit x3"``.
Each figure is the difference between two runs of the same scenario, ``--small`` and
``--large`` decisions after the same warm-up, divided by the difference in decisions: start-up
and imports cancel out. Scenarios are core.py's hot key (allowed) and over limit, on its
simulated clock; the harness is the same ``sum(map(decide, batch))``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys

import core  # bench/core.py: this script's directory is first on sys.path

DEFAULT_ROWS = (
    "ratekeeper fixed_window",
    "ratekeeper sliding_window",
    "ratekeeper gcra",
    "limits fixed, test x3 + hit x3",
)
_COLLECTED = re.compile(r"Collected : (\d+)")


def run_child(name: str, scenario: str, decisions: int) -> None:
    """Decide ``decisions`` times (after a warm-up) in this process, for valgrind to count."""
    contender = next(c for c in core.CONTENDERS if c.name == name)
    clock = core.SimClock()
    built = contender.build(clock)
    batch = ["hot-key"] * core.BATCH
    step = functools.partial(clock.advance, core.HOT_STEP_S) if scenario == "hot" else None
    for _ in range(20 + decisions // core.BATCH):
        sum(map(built.decide, batch))
        if step is not None:
            step()
    built.close()


def _count(name: str, scenario: str, decisions: int) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         os.path.abspath(__file__), "--child", name, scenario, str(decisions)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    """Print instructions per decision for each row and scenario."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("rows", nargs="*", help="row names of bench/core.py (default: four)")
    parser.add_argument("--small", type=int, default=2_000, help="decisions in the first run")
    parser.add_argument("--large", type=int, default=12_000, help="decisions in the second run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, scenario, decisions = args.child
        run_child(name, scenario, int(decisions))
        return 0
    print(f"{'row':<34} {'hot, allowed':>13} {'over limit':>11}   (instructions per decision)")
    for name in args.rows or DEFAULT_ROWS:
        figures = []
        for scenario in ("hot", "over"):
            small = _count(name, scenario, args.small)
            large = _count(name, scenario, args.large)
            figures.append((large - small) / (args.large - args.small))
        print(f"{name:<34} {figures[0]:>13,.0f} {figures[1]:>11,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
