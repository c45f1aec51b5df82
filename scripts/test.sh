#!/usr/bin/env bash
# The whole test suite from a fresh machine with only Python >= 3.11 and pip:
# creates .venv, installs what the tests need, then lint, format, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The bench extra (dev + the peers) so the benchmark smoke test measures the peers too.
ensure_venv bench
ensure_redis
ensure_nginx
ensure_chromium
ensure_node
.venv/bin/ruff check src tests bench examples docs/hooks.py
.venv/bin/ruff format --check src tests bench examples docs/hooks.py
# Types and the documentation site (CPU for half a minute) are checked while the parallel tests
# run, which mostly wait on sockets and clocks; their output follows the tests'.
checks_log="$(mktemp)"
site_dir="$(mktemp -d)"
(
  .venv/bin/mypy --strict src
  # The documentation's recipes are code users copy: typed against the public API.
  .venv/bin/mypy --strict examples/recipes
  # The documentation site: a broken link, a missing snippet or an undocumented public name
  # fails.
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site_dir"
) >"$checks_log" 2>&1 &
checks=$!
status=0
if [ "$#" -gt 0 ]; then
  .venv/bin/python -m pytest "$@" || status=$?
else
  # Every core, a test file per worker (a module's servers start once); then the tests that
  # time a client's pace (marked realtime in tests/conftest.py) alone, one at a time, once
  # nothing else runs.
  .venv/bin/python -m pytest -n auto --dist loadfile -m "not realtime" || status=$?
fi
wait "$checks" || status=$?
cat "$checks_log"
rm -rf "$checks_log" "$site_dir"
if [ "$#" -eq 0 ]; then
  .venv/bin/python -m pytest -m realtime || status=$?
fi
exit "$status"
