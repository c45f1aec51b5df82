#!/usr/bin/env bash
# Try ratekeeper in one command, from a fresh machine with only Python >= 3.11 and pip:
#   bash scripts/serve.sh --preset musique
# creates .venv with the http extra, then runs `ratekeeper serve` with the given options: the
# preset's demo API on http://127.0.0.1:8080, counters in ./ratekeeper.db (SQLite).
# Any `ratekeeper serve` option works (--upstream URL, --store URL, --port N, --workers N, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_venv http
case " $* " in
  *" --preset"* | *" --config"* | *" -h "* | *" --help "*) ;;
  *) set -- --preset musique "$@" ;;
esac
exec .venv/bin/ratekeeper serve "$@"
