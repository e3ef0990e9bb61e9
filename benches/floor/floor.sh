#!/usr/bin/env bash
# The floor of a warm task here: srv.c in a container of IMAGE, with a pool container's
# restrictions (user 1000, no capabilities, no new privileges, read-only root, no network, a
# pids limit, no log; the socket in a bind-mounted directory of the user's), spawning /bin/true
# per round trip from cli.c on the host. Run under the engine lock, as root:
#
#   flock /tmp/warmpool-engine.lock benches/floor/floor.sh [N=3000] [IMAGE=warmpool/agent:latest]
#
# It measures twice: with the machine idle, then with a SCHED_IDLE busy loop on every CPU.
# Those loops only run when a CPU would otherwise be idle, so they take almost no time from
# anything (SCHED_IDLE's weight is 3 against a normal thread's 1024); they keep the CPUs from
# halting. The difference is what waking halted CPUs costs the round
# trip, which on a VM without guest halt polling is an exit to the hypervisor per wake-up.
# WARMPOOL_FLOOR_SPIN=0 skips the second measurement.
set -euo pipefail
cd "$(dirname "$0")"
n=${1:-3000}
image=${2:-warmpool/agent:latest}
work=$(mktemp -d)
name=warmpool-floor-$$
spinners=()
cleanup() {
    for p in "${spinners[@]}"; do kill "$p" 2>/dev/null || true; done
    docker rm -f "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -static -o "$work/srv" srv.c
gcc -O2 -o "$work/cli" cli.c
mkdir "$work/run"
chown 1000:1000 "$work/run"
chmod 700 "$work/run"
docker run -d --name "$name" --network none --read-only --user 1000:1000 --cap-drop ALL \
    --security-opt no-new-privileges --pids-limit 256 --log-driver none -v "$work/srv:/.floor/srv:ro" -v "$work/run:/.floor/run" \
    --entrypoint /.floor/srv "$image" /.floor/run/s.sock >/dev/null
# Assigned first: `echo "$(cli)"` would hide a failed cli from set -e.
idle=$("$work/cli" "$work/run/s.sock" "$n")
echo "idle:            $idle"
if [ "${WARMPOOL_FLOOR_SPIN:-1}" != 0 ]; then
    for _ in $(seq "$(nproc)"); do
        chrt -i 0 sh -c 'while :; do :; done' &
        spinners+=($!)
    done
    awake=$("$work/cli" "$work/run/s.sock" "$n")
    echo "CPUs kept awake: $awake"
fi
