#!/bin/sh
# Replays every shipped trace (benches/traces/*.jsonl) against benches/pools.toml with
# today's policy (thresholds only) and the new defaults side by side, next to the oracle.
# Needs no Docker engine. Usage: benches/simulate.sh [extra `warmpool simulate` flags]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet
for trace in steady bursts diurnal conversations step; do
    echo "== $trace"
    target/release/warmpool simulate --config benches/pools.toml \
        --trace "benches/traces/$trace.jsonl" --compare "$@"
done
