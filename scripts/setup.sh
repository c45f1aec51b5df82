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

# ensure_redis: make redis-server available (tests start their own instances on free ports).
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (Debian package) for the Redis tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    # The package starts a system instance on 6379; the tests use their own ports.
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  else
    echo "redis-server is missing and cannot be installed here (need root + apt-get)" >&2
    return 1
  fi
}

# ensure_nginx: make Debian's nginx available (the gateway tests run it on free loopback ports
# with a config generated from examples/nginx/ratekeeper.conf; the package's own site is unused).
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nginx (Debian package) for the gateway tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
  else
    echo "nginx is missing and cannot be installed here (need root + apt-get)" >&2
    return 1
  fi
}

# ensure_chromium: make Debian's chromium available (the live page's test drives it headless
# through playwright, with executable_path=/usr/bin/chromium; playwright's own browsers are
# never downloaded).
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian package) for the live page's test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "chromium is missing and cannot be installed here (need root + apt-get)" >&2
    return 1
  fi
}
