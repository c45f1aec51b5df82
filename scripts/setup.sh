# Shared set-up for the scripts in this folder (sourced, not run).

# ensure_venv EXTRAS: create .venv with the interpreter in $PYTHON (default python3) and install
# the project with the given extras; a no-op when the same extras are already installed.
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
      echo "ratekeeper needs Python >= 3.11 (found $("$py" --version 2>&1)); set PYTHON=..." >&2
      exit 1
    }
    "$py" -m venv .venv
  fi
  local stamp=".venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
    touch "$stamp"
  fi
}
