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

# apt_install WHY PACKAGE...: install Debian packages (as root, or through sudo).
apt_install() {
  local why="$1"
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* (Debian packages) for $why" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "$* missing and cannot be installed here (need root + apt-get), needed for $why" >&2
    return 1
  fi
}

# ensure_redis: make redis-server available (tests start their own instances on free ports;
# the package's system instance on 6379 is unused).
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  apt_install "the Redis tests" redis-server
}

# ensure_nginx: make Debian's nginx available (the gateway tests run it on free loopback ports
# with a config generated from examples/nginx/ratekeeper.conf; the package's own site is unused).
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] && return 0
  apt_install "the gateway tests" nginx
}

# ensure_chromium: make Debian's chromium available (the live page's test drives it headless
# through playwright, with executable_path=/usr/bin/chromium; playwright's own browsers are
# never downloaded).
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  apt_install "the live page's test" chromium chromium-driver
}

# ensure_node: make Node.js available (the seed pages' own JavaScript and Node's strict HTTP
# parser run against the gateway in the tests).
ensure_node() {
  command -v node >/dev/null 2>&1 && return 0
  apt_install "the tests that run the seed pages' JavaScript" nodejs
}
