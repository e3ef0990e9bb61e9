#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests (fake engine, paused time) and the
# integration tests against the real Docker engine. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "test.sh: no Docker engine answers (docker info failed)"; exit 1; }
scripts/install-test-deps.sh
scripts/build-demo-image.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Unit tests run in parallel; the engine tests run one at a time, since each starts a
# daemon that owns every warmpool container on the engine.
# The shim is one std-only file built by rustc (see build.rs); its unit tests likewise.
mkdir -p target
rustc --edition 2021 --test shim/main.rs -o target/shim-tests
target/shim-tests
cargo test --locked --lib --bins
cargo test --locked --test '*' -- --test-threads=1
# The daemon against its own OpenAPI document (/openapi.json), fuzzed by schemathesis.
scripts/test-api-schema.sh
# Clients as their users run them: the Python client with pytest against a real daemon,
scripts/test-python.sh
# The MCP server through the official Python MCP client, over stdio and /mcp.
scripts/test-mcp.sh
# The same engine tests on Podman's Docker-compatible API, rootful and a rootless smoke subset.
scripts/test-podman.sh
