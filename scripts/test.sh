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
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy --strict src
.venv/bin/python -m pytest "$@"
