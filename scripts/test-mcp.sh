#!/usr/bin/env bash
# The MCP tests: the official Python MCP client (PyPI `mcp`) against a real daemon, over stdio
# (`warmpool mcp`) and streamable HTTP (`/mcp`). Makes a venv under target/, builds the debug
# daemon, runs pytest on tests/mcp_client/. Starts a daemon and containers: on a shared
# engine run it under the lock, `flock /tmp/warmpool-engine.lock scripts/test-mcp.sh`.
# Extra arguments go to pytest (e.g. -k stdio).
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "test-mcp.sh: no Docker engine answers (docker info failed)" >&2; exit 1; }
venv=target/mcp-venv
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "test-mcp.sh: installing Debian's python3-venv"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check mcp pytest
scripts/build-demo-image.sh
cargo build --locked

# pytest exits 5 when it collected no tests: that is a failure here too.
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/mcp_client "$@"
