"""llm-sandbox as a peer in `cargo bench --bench compare` (its mode `llm-sandbox`).

llm-sandbox (PyPI `llm-sandbox`, the version pinned in peer_llm_sandbox.requirements.txt) is
a library people pick instead of warmpool: it keeps a pool of warm containers
(`create_pool_manager`) and runs commands in them with `execute_command`, which is one
`docker exec` through docker-py. This script measures it the way its documentation shows
pooled use: one `SandboxSession(pool=...)` per task (acquire a container, run, release),
on the same engine, image and container settings as the bench's other modes.

The image is the bench's busybox image, which has no Python: `skip_environment_setup=True`
(a documented setting for images that come prepared) stops llm-sandbox from creating a venv
and upgrading pip in each new container, and `execute_command` needs nothing in the image but
the command itself. `lang="python"` then only names the (unused) language handler.

Protocol with compare.rs: one JSON object per line on stdout, each with an "event":
  ready       the pool is warm: {"version", "containers": [full ids], "warm_s"}
  sequential  {"per_task_ms": [...], "held_ms": [...], "errors": n} (latencies sorted), then
              the script waits for a line "go" on stdin, so that the bench can read the CPU
              counters just before the concurrent phase
  concurrent  {"tasks", "elapsed_s", "errors"}
  closed      {"close_s"}: every container of the pool removed
Anything else (logs, errors) goes to stderr. Every container carries the label given with
--label, so the bench removes what a crash here leaves; on a normal end, on an exception and
on SIGTERM the pool is closed here first, which removes its containers.
"""

import argparse
import importlib.metadata
import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import docker
from llm_sandbox import SandboxSession
from llm_sandbox.pool import PoolConfig, create_pool_manager

# The same main process as the bench's raw-exec targets and warmpool's docker-exec pools: it
# exits on SIGTERM, so the pool's `container.stop()` on close takes no 10 s stop timeout.
MAIN_PROCESS = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]


# Tells this script's containers from the bench's own (which carry the same --label).
PEER_LABEL = ("warmpool.bench.peer", "llm-sandbox")


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def one_task(pool):
    """One task as the documentation's pooled examples run it: a session per task."""
    with SandboxSession(pool=pool, lang="python") as session:
        out = session.execute_command("true")
    if out.exit_code != 0:
        raise RuntimeError(f"exit code {out.exit_code}: {out.stderr!r}")


def sequential(n, warmup, task):
    errors = 0
    for _ in range(warmup):
        try:
            task()
        except Exception as e:  # noqa: BLE001 - reported, the bench counts failures
            print(f"  llm-sandbox warm-up task failed: {e!r}", file=sys.stderr)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            task()
            lat.append((time.perf_counter() - t) * 1e3)
        except Exception as e:  # noqa: BLE001
            if errors < 3:
                print(f"  llm-sandbox task failed: {e!r}", file=sys.stderr)
            errors += 1
    return sorted(lat), errors


def concurrent(clients, secs, task):
    end = time.perf_counter() + secs
    start = time.perf_counter()

    def loop(_):
        done = errors = 0
        while time.perf_counter() < end:
            try:
                task()
                done += 1
            except Exception as e:  # noqa: BLE001
                if errors < 2:
                    print(f"  llm-sandbox client task failed: {e!r}", file=sys.stderr)
                errors += 1
        return done, errors

    with ThreadPoolExecutor(max_workers=clients) as ex:
        results = list(ex.map(loop, range(clients)))
    return (
        sum(r[0] for r in results),
        time.perf_counter() - start,
        sum(r[1] for r in results),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--label", required=True, help="key=value put on every container")
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--secs", type=float, default=5.0)
    a = p.parse_args()

    # SIGTERM from the bench: unwind through `finally`, which closes the pool.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    key, _, value = a.label.partition("=")
    ours = [a.label, "=".join(PEER_LABEL)]
    # docker-py's default keeps 10 connections; one per client thread and a few spare.
    client = docker.from_env(max_pool_size=a.clients + 4)
    runtime_configs = {
        "command": MAIN_PROCESS,
        "labels": {key: value, PEER_LABEL[0]: PEER_LABEL[1]},
        # As for every other mode of the bench: no network, no log files.
        "network_mode": "none",
        "network_disabled": True,
        "log_config": {"type": "none", "config": {}},
    }
    pool = create_pool_manager(
        backend="docker",
        client=client,
        config=PoolConfig(
            max_pool_size=a.pool,
            min_pool_size=a.pool,
            # As the warmpool pools of the bench: no recycling during the run.
            idle_timeout=3600.0,
            max_container_lifetime=86400.0,
            max_container_uses=None,
            enable_prewarming=True,
        ),
        lang="python",
        image=a.image,
        runtime_configs=runtime_configs,
        skip_environment_setup=True,
    )
    try:
        start = time.perf_counter()
        deadline = start + 180
        while pool.get_stats()["state_counts"]["idle"] < a.pool:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"pool not warm in 180 s: {pool.get_stats()}")
            time.sleep(0.05)
        ids = [c.id for c in client.containers.list(filters={"label": ours})]
        emit(
            "ready",
            version=importlib.metadata.version("llm-sandbox"),
            containers=ids,
            warm_s=time.perf_counter() - start,
        )

        per_task, errors = sequential(a.n, a.warmup, lambda: one_task(pool))
        # The same command in one session held open for all of them: no acquire and release
        # per task, so what is left is docker-py's exec (create, start, inspect).
        with SandboxSession(pool=pool, lang="python") as held:

            def held_task():
                out = held.execute_command("true")
                if out.exit_code != 0:
                    raise RuntimeError(f"exit code {out.exit_code}")

            held_ms, held_errors = sequential(a.n, 5, held_task)
        emit("sequential", per_task_ms=per_task, held_ms=held_ms, errors=errors + held_errors)

        if sys.stdin.readline().strip() != "go":
            raise RuntimeError("the bench did not say go")
        tasks, elapsed, c_errors = concurrent(a.clients, a.secs, lambda: one_task(pool))
        emit("concurrent", tasks=tasks, elapsed_s=elapsed, errors=c_errors)
    finally:
        t = time.perf_counter()
        pool.close()
        # close() removes the containers it knows; anything it lost track of goes too.
        for c in client.containers.list(all=True, filters={"label": ours}):
            try:
                c.remove(force=True)
            except docker.errors.APIError as e:
                print(f"  llm-sandbox: cannot remove {c.id[:12]}: {e}", file=sys.stderr)
        emit("closed", close_s=time.perf_counter() - t)


if __name__ == "__main__":
    main()
