#!/usr/bin/env bash
# Tests the Python client (clients/python) against a real daemon: builds the debug binary
# and the demo image, makes a venv under target/, installs the client and pytest in it, and
# runs pytest, which starts `target/debug/warmpool serve` on a free port and stops it by
# SIGTERM. Run it under the engine lock on a shared engine:
#   flock /tmp/warmpool-engine.lock scripts/test-python.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "test-python.sh: no Docker engine answers (docker info failed)"; exit 1; }
export DEBIAN_FRONTEND=noninteractive
need=""
command -v python3 >/dev/null 2>&1 || need="python3"
# Debian's python3 lacks venv (and ensurepip) until python3-venv is installed.
if [ -z "$need" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then need="python3-venv"; fi
if [ -n "$need" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-python.sh: missing $need; run as root or apt-get install $need" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$need" >/dev/null
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "test-python.sh: the client needs Python >= 3.10, python3 is $(python3 -V)" >&2; exit 1; }

scripts/build-demo-image.sh
cargo build --locked

venv=target/py-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade ./clients/python pytest

# pytest exits 5 when it collected no test: that is a failure here as well (set -e).
WARMPOOL_BIN="$PWD/target/debug/warmpool" "$venv/bin/python" -m pytest clients/python/tests -v -p no:cacheprovider "$@"
