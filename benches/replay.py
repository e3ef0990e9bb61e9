#!/usr/bin/env python3
"""Replays a trace against a real daemon on the real engine and compares its warm-hit rate
with what `warmpool simulate` predicts for the same trace and config (issue 14).

Steps, all in one run:

1. The trace (JSONL, {"at", "pool", "duration"} a line) is compressed in time by --scale:
   every `at` and every `duration` is divided by it, so the arrival rate is multiplied by
   it and the number of tasks running at once (rate x duration) stays what it was: the
   pools need as many containers as in the original hour, in 1/scale of the time. The
   compressed trace is written next to the run's config (--keep to keep it).
2. Calibration, on a daemon of its own with the same pools: the engine's create latency L
   (the median of three lone creates, each a `POST /v1/pools/<pool>/prewarm` of one more
   container, timed until the pool shows it idle) and its create rate r (--burst more
   containers asked at once, ready after T: the simulator's model, one create every 1/r s,
   each ready L after its turn, gives r = (burst - 1) / (T - L)).
3. The replay: a fresh daemon with the config, its pools at their initial size; each task is
   `POST /v1/pools/<pool>/tasks {"cmd": ["sleep", "<duration>"]}` sent at its (compressed)
   time, one thread per task; `warmpool_acquisitions_total{pool, result}` read from /metrics
   before and after gives the real warm-hit rate, warm / (warm + cold).
4. `warmpool simulate --json` on the compressed trace with the same config, once with the
   calibrated `--create-latency`/`--create-rate` and once with the defaults.

Stdlib only. Run it under the engine lock, after `cargo build --release`:

    flock /tmp/warmpool-engine.lock benches/replay.py --trace benches/traces/bursts.jsonl \
        --config benches/pools.toml --scale 15
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`warmpool serve` with its own WARMPOOL_INSTANCE on a free loopback port; stop()
    sends SIGTERM and waits (the daemon removes its containers)."""

    def __init__(self, binary, config_text, instance, workdir):
        self.port = free_port()
        self.config = os.path.join(workdir, f"{instance}.toml")
        with open(self.config, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.port}"\nshutdown_grace = "5s"\n\n')
            f.write(config_text)
        self.log = open(os.path.join(workdir, f"{instance}.log"), "w")
        env = dict(os.environ, WARMPOOL_INSTANCE=instance, RUST_LOG="warmpool=warn")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", self.config],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def call(self, method, path, body=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, raw
        finally:
            conn.close()

    def json(self, method, path, body=None):
        status, raw = self.call(method, path, body)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_ready(self, limit=180):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"daemon exited early; see {self.log.name}")
            try:
                if self.call("GET", "/readyz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"daemon not ready in {limit} s; see {self.log.name}")

    def pool(self, name):
        return self.json("GET", f"/v1/pools/{name}")[1]

    def wait_pools_up(self, pools, limit=180):
        """Every pool at its target with that many idle: the state the simulator starts in."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if all(p["idle"] >= p["target"] for p in map(self.pool, pools)):
                return
            time.sleep(0.05)
        sys.exit(f"pools not up in {limit} s")

    def acquisitions(self, pool):
        text = self.call("GET", "/metrics")[1].decode()
        out = {"warm": 0.0, "cold": 0.0}
        pat = re.compile(r'^warmpool_acquisitions_total\{([^}]*)\} (\S+)$')
        for line in text.splitlines():
            m = pat.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("pool") == pool and labels.get("result") in out:
                out[labels["result"]] = float(m.group(2))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def compress(trace_path, scale, out_path):
    tasks = []
    with open(trace_path) as f:
        for line in f:
            line = line.strip()
            if line:
                tasks.append(json.loads(line))
    tasks.sort(key=lambda t: t["at"])
    with open(out_path, "w") as f:
        for t in tasks:
            c = {"at": round(t["at"] / scale, 4), "pool": t["pool"],
                 "duration": round(t["duration"] / scale, 4)}
            f.write(json.dumps(c, separators=(",", ":")) + "\n")
            t.update(c)
    return tasks


def wait_idle_at_least(d, pool, n, limit=180):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if d.pool(pool)["idle"] >= n:
            return time.monotonic() - start
        time.sleep(0.01)
    sys.exit(f"pool {pool}: {n} idle containers not within {limit} s")


def calibrate(args, config_text, workdir, pool):
    d = Daemon(args.bin, config_text, f"{args.instance}-cal", workdir)
    try:
        d.wait_ready()
        d.wait_pools_up([pool])
        lone = []
        for _ in range(3):
            have = d.pool(pool)["idle"]
            d.json("POST", f"/v1/pools/{pool}/prewarm", {"containers": have + 1, "for": "5m"})
            lone.append(wait_idle_at_least(d, pool, have + 1))
        latency = statistics.median(lone)
        have = d.pool(pool)["idle"]
        status, v = d.json("POST", f"/v1/pools/{pool}/prewarm",
                           {"containers": have + args.burst, "for": "5m"})
        if status != 200:
            sys.exit(f"prewarm: HTTP {status}: {v}")
        took = wait_idle_at_least(d, pool, have + args.burst)
        rate = (args.burst - 1) / max(took - latency, 1e-3)
        return latency, rate, lone, took
    finally:
        d.stop()


def replay(args, config_text, workdir, tasks, pools):
    d = Daemon(args.bin, config_text, args.instance, workdir)
    results = [None] * len(tasks)
    try:
        d.wait_ready()
        d.wait_pools_up(pools)
        before = {p: d.acquisitions(p) for p in pools}

        def run(i, t):
            try:
                status, v = d.json("POST", f"/v1/pools/{t['pool']}/tasks",
                                   {"cmd": ["sleep", f"{t['duration']:.4f}"]})
                ok = status == 200 and isinstance(v, dict) and v.get("exit_code") == 0
                results[i] = (ok, bool(ok and v.get("cold_start")),
                              v.get("queued_ms", 0.0) if ok else None)
            except OSError as e:
                results[i] = (False, False, None)
                print(f"task {i}: {e}", file=sys.stderr)

        threads = []
        late = []
        t0 = time.monotonic()
        for i, t in enumerate(tasks):
            delay = t0 + t["at"] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late.append(-delay)
            th = threading.Thread(target=run, args=(i, t), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(timeout=600)
        wall = time.monotonic() - t0
        after = {p: d.acquisitions(p) for p in pools}
    finally:
        d.stop()
    return before, after, results, wall, late


def simulate(args, config_path, trace_path, latency=None, rate=None):
    cmd = [args.bin, "simulate", "--config", config_path, "--trace", trace_path, "--json"]
    if latency is not None:
        cmd += ["--create-latency", f"{round(latency * 1000)}ms", "--create-rate", f"{rate:.2f}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r["pool"]: r for r in map(json.loads, filter(None, out.splitlines()))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default="benches/traces/bursts.jsonl")
    ap.add_argument("--config", default="benches/pools.toml")
    ap.add_argument("--scale", type=float, default=15.0,
                    help="divide every arrival time and duration by this (default 15)")
    ap.add_argument("--bin", default="target/release/warmpool")
    ap.add_argument("--instance", default="replaybench")
    ap.add_argument("--burst", type=int, default=10,
                    help="containers asked at once to measure the create rate (default 10)")
    ap.add_argument("--keep", help="directory to keep the compressed trace, config and logs in")
    args = ap.parse_args()

    workdir = args.keep or tempfile.mkdtemp(prefix="warmpool-replay-")
    os.makedirs(workdir, exist_ok=True)
    with open(args.config) as f:
        config_text = f.read()
    trace_path = os.path.join(workdir, "trace.jsonl")
    tasks = compress(args.trace, args.scale, trace_path)
    pools = sorted({t["pool"] for t in tasks})
    print(f"trace {args.trace}: {len(tasks)} tasks over {tasks[-1]['at']:.0f} s after "
          f"compression by {args.scale:g} (pools: {', '.join(pools)})", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])

    latency, rate, lone, took = calibrate(args, config_text, workdir, pools[0])
    print(f"engine: lone creates {[round(x * 1000) for x in lone]} ms -> L = "
          f"{latency * 1000:.0f} ms; {args.burst} at once ready after {took:.2f} s -> "
          f"r = {rate:.2f}/s", file=sys.stderr)

    before, after, results, wall, late = replay(args, config_text, workdir, tasks, pools)
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])

    # The simulator reads the same config file the daemon did (the [server] section added
    # for the port changes no pool).
    sim_cfg = os.path.join(workdir, f"{args.instance}.toml")
    predicted = simulate(args, sim_cfg, trace_path, latency, rate)
    default = simulate(args, sim_cfg, trace_path)

    print(f"\n## Real engine vs `warmpool simulate`: {os.path.basename(args.trace)} "
          f"compressed {args.scale:g}x ({len(tasks)} tasks in {tasks[-1]['at']:.0f} s)\n")
    print("| pool | tasks | ran (real) | warm-hit real (/metrics) | warm-hit real (answers) "
          "| predicted, calibrated engine | difference (points) | predicted, default engine |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    verdicts = []
    for p in pools:
        warm = after[p]["warm"] - before[p]["warm"]
        cold = after[p]["cold"] - before[p]["cold"]
        real = warm / (warm + cold) if warm + cold else float("nan")
        mine = [r for t, r in zip(tasks, results) if t["pool"] == p]
        ran = sum(1 for r in mine if r and r[0])
        answers = sum(1 for r in mine if r and r[0] and not r[1]) / max(ran, 1)
        pred = predicted[p]["warm_hit_rate"]
        diff = (real - pred) * 100
        verdicts.append((p, diff))
        print(f"| {p} | {len(mine)} | {ran} | {real * 100:.1f} % | {answers * 100:.1f} % | "
              f"{pred * 100:.1f} % | {diff:+.1f} | {default[p]['warm_hit_rate'] * 100:.1f} % |")
    print()
    for p, diff in verdicts:
        print(f"- {p}: within 2 points: {'yes' if abs(diff) <= 2 else 'NO'} ({diff:+.1f})")
    q = sorted(r[2] for r in results if r and r[0])
    if q:
        print(f"- real queue wait: p50 {q[len(q) // 2]:.1f} ms, p99 "
              f"{q[min(len(q) - 1, int(len(q) * 0.99))]:.1f} ms; predicted p50 "
              f"{predicted[pools[0]]['p50_queue_wait_ms']:.1f} ms, p99 "
              f"{predicted[pools[0]]['p99_queue_wait_ms']:.1f} ms")
    print(f"- calibrated engine: --create-latency {round(latency * 1000)}ms "
          f"--create-rate {rate:.2f} (defaults 300ms, 4)")
    lag = sorted(late)
    print(f"- replay took {wall:.0f} s; {len(late)} tasks sent after their time, by a median "
          f"{statistics.median(lag or [0]) * 1000:.1f} ms, at most {max(lag, default=0) * 1000:.0f} ms")
    print(f"- load average: {load_start} at the start, {load_end} at the end")


if __name__ == "__main__":
    main()
