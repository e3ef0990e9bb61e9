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
# Everything from here drives the engine: hold the engine lock that every engine test run and
# benchmark on a shared engine takes (docs/benchmarks.md), so none of them overlaps this run.
# Compile first, outside the lock. The scripts below see WARMPOOL_ENGINE_LOCK_HELD and do not
# take it again (a second flock on the same file would wait for this one forever). The lock
# is held on fd 9, which every child inherits: a service that outlives the run (Podman's)
# must be started with `9>&-`, or it holds the lock after the run and the next one waits.
cargo test --locked --test '*' --no-run
cargo build --locked
exec 9>/tmp/warmpool-engine.lock
flock -w 3600 9 || { echo "test.sh: the engine lock stayed taken for an hour"; exit 1; }
export WARMPOOL_ENGINE_LOCK_HELD=1
cargo test --locked --test '*' -- --test-threads=1
# The daemon against its own OpenAPI document (/openapi.json), fuzzed by schemathesis.
scripts/test-api-schema.sh
# Clients as their users run them: the Python client with pytest against a real daemon,
scripts/test-python.sh
# The MCP server through the official Python MCP client, over stdio and /mcp.
scripts/test-mcp.sh
# The same engine tests on Podman's Docker-compatible API, rootful and a rootless smoke subset.
scripts/test-podman.sh
