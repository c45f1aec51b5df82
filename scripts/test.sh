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
.venv/bin/mypy --strict src
# The documentation's recipes are code users copy: typed against the public API.
.venv/bin/mypy --strict examples/recipes
# The documentation site: a broken link, a missing snippet or an undocumented public name fails.
site_dir="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site_dir"
rm -rf "$site_dir"
.venv/bin/python -m pytest "$@"
