#!/usr/bin/env python3
"""Writes the task-arrival traces that `warmpool simulate` replays (benches/traces/*.jsonl).

Each line is one task: {"at": seconds from the trace's start, "pool": name, "duration":
seconds the task runs}, in order of "at". Every trace is seeded, so running this again
writes the same files byte for byte. Task durations are log-normal (median 0.8 s, a long
tail capped at 60 s), the shape of an agent's shell commands: mostly quick, a few builds.

Usage: scripts/gen-traces.py [OUT_DIR]   (default benches/traces)
"""

import json
import math
import os
import random
import sys


def duration(rng: random.Random) -> float:
    return min(60.0, rng.lognormvariate(math.log(0.8), 1.0))


def poisson(rng, rate_at, start, end, rate_max):
    """Arrival times of a Poisson process whose rate (per second) changes with time,
    drawn by thinning: candidates at rate_max, each kept with rate_at(t) / rate_max."""
    t = start
    while True:
        t += rng.expovariate(rate_max)
        if t >= end:
            return
        if rng.random() * rate_max < rate_at(t):
            yield t


def steady(rng):
    """One hour of Poisson arrivals at 2 tasks/s."""
    return [(t, "coder") for t in poisson(rng, lambda t: 2.0, 0, 3600, 2.0)]


def bursts(rng):
    """One hour of on/off traffic: 30 s at 8 tasks/s, then 150 s at 0.05 tasks/s."""
    def rate(t):
        return 8.0 if t % 180 < 30 else 0.05
    return [(t, "coder") for t in poisson(rng, rate, 0, 3600, 8.0)]


def diurnal(rng):
    """A day whose rate follows the sun: 0.01 tasks/s at 03:00, 0.4 tasks/s at 15:00."""
    def rate(t):
        phase = math.cos(2 * math.pi * (t / 3600 - 15) / 24)
        return 0.01 + (0.4 - 0.01) * (1 + phase) / 2
    return [(t, "coder") for t in poisson(rng, rate, 0, 86400, 0.4)]


def conversations(rng):
    """One hour of conversations arriving as a Poisson process (one per 20 s on average),
    each 5 to 50 commands 1 to 10 s apart, on the coder pool with a tester call now and then."""
    tasks = []
    for start in poisson(rng, lambda t: 0.05, 0, 3600, 0.05):
        t = start
        for _ in range(rng.randint(5, 50)):
            pool = "tester" if rng.random() < 0.2 else "coder"
            tasks.append((t, pool))
            t += rng.uniform(1, 10)
    return tasks


def step(rng):
    """40 minutes: 0.5 tasks/s, then a sudden step to 5 tasks/s at minute 20."""
    def rate(t):
        return 0.5 if t < 1200 else 5.0
    return [(t, "coder") for t in poisson(rng, rate, 0, 2400, 5.0)]


TRACES = {
    "steady": steady,
    "bursts": bursts,
    "diurnal": diurnal,
    "conversations": conversations,
    "step": step,
}


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "benches/traces"
    os.makedirs(out, exist_ok=True)
    for seed, (name, make) in enumerate(TRACES.items(), start=1):
        rng = random.Random(seed)
        tasks = sorted(make(rng))
        path = os.path.join(out, f"{name}.jsonl")
        with open(path, "w") as f:
            for at, pool in tasks:
                line = {"at": round(at, 3), "pool": pool, "duration": round(duration(rng), 3)}
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
        print(f"{path}: {len(tasks)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
