#!/usr/bin/env bash
# Interleaved A/B of two daemon builds with benches/compare.rs: A (an older daemon, e.g. one
# built from an earlier commit) and B (this tree's target/release/warmpool, or $NEW_BIN) run
# the warmpool modes both support, one compare run each, alternately (A B, B A, A B, ...), so
# that a drift in the machine's load weighs on both alike. A gets no exec_transport key
# (WARMPOOL_BENCH_LEGACY_CONFIG=1: a daemon older than the key has attach only); B gets
# exec_transport = "attach" for pool-shim, so both shim rows are the attach transport. With
# A_LEGACY=0, A is a daemon that knows exec_transport too and gets the same config as B
# (then pool-direct can be compared: WARMPOOL_BENCH_MODES=pool-direct,pool-shim).
# Prints each mode's medians over the rounds for A and B, and the median of the per-round
# ratios B/A. Run it under the engine lock on a shared engine:
#
#   flock /tmp/warmpool-engine.lock benches/ab.sh /path/to/old/warmpool [ROUNDS=3]
#
# WARMPOOL_BENCH_MODES (default pool-shim,pool-exec) and compare's other knobs pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: benches/ab.sh OLD_DAEMON_BINARY [ROUNDS]}
rounds=${2:-3}
new=${NEW_BIN:-target/release/warmpool}
cargo bench --locked --bench compare --no-run 2>/dev/null
bench=$(ls -t target/release/deps/compare-* | grep -v '\.d$' | head -1)
export WARMPOOL_BENCH_MODES=${WARMPOOL_BENCH_MODES:-pool-shim,pool-exec}
export WARMPOOL_BENCH_RSS_WARM=0 WARMPOOL_BENCH_INSTANCE=${WARMPOOL_BENCH_INSTANCE:-abbench}
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for who in $order; do
        if [ "$who" = A ]; then bin=$old legacy=${A_LEGACY:-1}; else bin=$new legacy=0; fi
        echo "round $r/$rounds: $who ($bin)" >&2
        WARMPOOL_BENCH_BIN=$bin WARMPOOL_BENCH_LEGACY_CONFIG=$legacy "$bench" \
            >"$out/$who-$r.md" 2>"$out/$who-$r.err" || {
            cat "$out/$who-$r.err" >&2
            exit 1
        }
    done
done
echo "per-run tables: $out" >&2
python3 - "$out" "$rounds" "$old" "$new" <<'EOF'
import os, statistics, sys
out, rounds, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def rows(path):
    """mode label -> (p50, p99, tasks/s, the daemon's CPU ms per task, the CPU ms per task
    of the run's own processes: the total less "everything else", which is other people's
    load on a shared machine) from one compare run's tables."""
    found, cpu = {}, {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| warmpool"):
            continue
        if len(cells) == 5:
            found[cells[0]] = [float(cells[1]), float(cells[2]), float(cells[3].replace(",", ""))]
        elif len(cells) > 5:
            cpu[cells[0]] = [float(cells[1]), float(cells[-2]) - float(cells[-3])]
    return {k: v + cpu.get(k, [float("nan")] * 2) for k, v in found.items()}

runs = {w: [rows(os.path.join(out, f"{w}-{r}.md")) for r in range(1, rounds + 1)] for w in "AB"}
names = ["p50 ms", "p99 ms", "tasks/s @8 clients", "daemon CPU ms / task", "own CPU ms / task"]
print(f"\n## A/B, {rounds} interleaved rounds: A = {old}, B = {new}\n")
print("| mode | build | " + " | ".join(names) + " |")
print("| --- | --- |" + " ---: |" * len(names))
for mode in runs["A"][0]:
    for w in "AB":
        med = [statistics.median(r[mode][i] for r in runs[w]) for i in range(len(names))]
        print(f"| {mode} | {w} | " + " | ".join(f"{v:.2f}" if v < 100 else f"{v:,.0f}" for v in med) + " |")
    ratios = [statistics.median(runs["B"][r][mode][i] / runs["A"][r][mode][i] for r in range(rounds))
              for i in range(len(names))]
    print(f"| {mode} | B/A (median of per-round ratios) | " + " | ".join(f"{v:.2f}" for v in ratios) + " |")
print("\nPer round (" + " / ".join(names) + "):\n")
for mode in runs["A"][0]:
    for r in range(rounds):
        cells = [" / ".join(f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in runs[w][r][mode]) for w in "AB"]
        print(f"- {mode}, round {r + 1}: A {cells[0]}; B {cells[1]}")
EOF
