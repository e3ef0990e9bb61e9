#!/usr/bin/env python3
"""Per-task overhead of the in-container shim, measured on the host without any container
engine, or with --docker IMAGE in one container on the local engine (without the daemon).

Each shim binary given runs as PID 1 of a fresh pid namespace (`unshare --pid --fork
--mount-proc`, as root), the way it runs as a container's init, listening on a unix socket
(`--listen`, the direct transport). This script is the daemon: it connects (from outside the
namespace, so the shim's peer check lets it in), reads the Hello, and sends Spawn frames of
`["true"]` one after another, each waiting for its Exit. It reports, per round:

- p50 / p99 (nearest rank) of the time from writing a Spawn to reading its Exit, in ms;
- CPU per task of the shim (utime + stime of all its threads) and of its reaped children
  (cutime + cstime: the tasks), from /proc/<pid>/stat over the measured tasks, in ms.

Several binaries are run interleaved (A B A B ... for --rounds rounds), each round a new
shim, so that a change is judged against noise. Without --shim the current tree's shim is
built with the flags build.rs uses.

    sudo python3 benches/shim_harness.py -n 2000 --rounds 3 --reset \
        --shim A=target/shim-a --shim B=target/shim-b
"""

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REQ_SPAWN = 0x01
EV_HELLO = 0x81
EV_STDOUT = 0x82
EV_STDERR = 0x83
EV_EXIT = 0x84


def put_bytes(b):
    return struct.pack(">I", len(b)) + b


def put_list(items):
    return struct.pack(">I", len(items)) + b"".join(put_bytes(i) for i in items)


def spawn_frame(task_id, argv, workdir, reset, timeout_ms, max_output):
    body = (
        struct.pack(">Q", task_id)
        + put_list(argv)
        + struct.pack(">I", 0)  # env: none
        + put_bytes(workdir)
        + put_bytes(b"")  # stdin: none
        + struct.pack(">QQ", timeout_ms, max_output)
        + put_list(reset)
    )
    return b"WP" + bytes([REQ_SPAWN]) + struct.pack(">I", len(body)) + body


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray()

    def frame(self):
        while True:
            if len(self.buf) >= 7:
                if self.buf[:2] != b"WP":
                    sys.exit(f"bad frame magic {bytes(self.buf[:2])!r}")
                (n,) = struct.unpack(">I", self.buf[3:7])
                if len(self.buf) >= 7 + n:
                    kind, body = self.buf[2], bytes(self.buf[7 : 7 + n])
                    del self.buf[: 7 + n]
                    return kind, body
            data = self.sock.recv(65536)
            if not data:
                sys.exit("the shim closed the connection")
            self.buf += data


def exit_code(body):
    """The Exit's code, or exits with what the shim said went wrong."""
    pos = 8
    code = None
    if body[pos]:
        (code,) = struct.unpack(">i", body[pos + 1 : pos + 5])
        pos += 5
    else:
        pos += 1
    if code != 0:
        sys.exit(f"task failed: Exit frame {body!r}")
    return code


def proc_cpu_ticks(pid):
    """(own utime+stime, reaped children's cutime+cstime), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + stime, cutime + cstime


def shim_threads(pid):
    """(CPU ns, context switches) summed over the shim's threads, from schedstat and status:
    finer than the clock ticks of /proc/<pid>/stat. Threads that exit in between are lost,
    but the shim's are long-lived (its workers are reused)."""
    ns = switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ns, switches


def shim_pid(unshare_pid):
    """The pid (host view) of unshare's forked child: the shim, PID 1 of its namespace."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    sys.exit("the shim did not start")


def start_shim(shim, root, image):
    """Start the shim listening on ROOT/shim.sock. Returns (host pid of the shim, a function
    that stops it, one that says whether it still runs, the workdir and the second wiped
    directory as the shim sees them)."""
    sock_path = os.path.join(root, "shim.sock")
    if image:
        # With a pool container's restrictions (src/runtime/docker.rs): a non-root user, no
        # capabilities, no new privileges, a read-only root with tmpfs /work and /tmp, no
        # network, a pids limit, no log; the socket directory is the container's user's, as
        # the direct transport's is. No memory limit: the bench's pools set none.
        os.chown(root, 1000, 1000)
        os.chmod(root, 0o700)
        name = f"shim-harness-{os.getpid()}-{time.monotonic_ns()}"

        def stop():
            subprocess.run(["docker", "rm", "-f", name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def alive():
            out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                 capture_output=True, text=True)
            return out.stdout.strip() == "true"

        try:
            subprocess.run(
                ["docker", "run", "-d", "--name", name, "--network", "none", "--read-only",
                 "--user", "1000:1000", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "--pids-limit", "256",
                 "--log-driver", "none",
                 "--tmpfs", "/work:rw,exec,nosuid,mode=0755,uid=1000,gid=1000",
                 "--tmpfs", "/tmp:rw,exec,nosuid,mode=1777,uid=1000,gid=1000",
                 "--workdir", "/work",
                 "-v", f"{shim}:/.warmpool/shim:ro", "-v", f"{root}:/.warmpool/run",
                 "--entrypoint", "/.warmpool/shim", image,
                 "--listen", "/.warmpool/run/shim.sock"],
                check=True, stdout=subprocess.DEVNULL,
            )
            pid = int(subprocess.check_output(
                ["docker", "inspect", "-f", "{{.State.Pid}}", name]).decode())
            if pid == 0:
                sys.exit(f"container {name} exited at once (see docker logs: none kept)")
        except BaseException:
            # A failed run may still have created the container; an interrupt too.
            stop()
            raise
        return pid, stop, alive, "/work", "/tmp"
    work = os.path.join(root, "work")
    tmp = os.path.join(root, "tmp")
    os.mkdir(work)
    os.mkdir(tmp)
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", shim, "--listen", sock_path],
        cwd=work,
        # A container's PATH (Docker's default), not this shell's: the task's argv[0] is
        # looked up in it, one failed exec per entry before the right one.
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    try:
        pid = shim_pid(proc.pid)
    except BaseException:
        proc.kill()
        proc.wait()
        raise

    def stop():
        # unshare does not pass signals on: SIGTERM the shim itself, which then exits 0.
        os.kill(pid, 15)
        proc.wait()

    return pid, stop, lambda: proc.poll() is None, work, tmp


def run_round(shim, n, warmup, reset, argv, image):
    with tempfile.TemporaryDirectory(prefix="shim-harness-") as root:
        sock_path = os.path.join(root, "shim.sock")
        pid, stop, alive, work, tmp = start_shim(shim, root, image)
        try:
            deadline = time.monotonic() + 5
            while not os.path.exists(sock_path):
                if time.monotonic() > deadline or not alive():
                    sys.exit("the shim never listened")
                time.sleep(0.005)
            conn = Conn(sock_path)
            kind, _ = conn.frame()
            if kind != EV_HELLO:
                sys.exit(f"expected Hello, got kind {kind:#x}")
            wipe = [work.encode(), tmp.encode()] if reset else []
            lat = []
            cpu0 = None
            t_all = 0.0
            for i in range(warmup + n):
                if i == warmup:
                    cpu0 = proc_cpu_ticks(pid)
                    thr0 = shim_threads(pid)
                    t_all = time.perf_counter()
                frame = spawn_frame(i + 1, argv, work.encode(), wipe, 300_000, 1 << 20)
                t0 = time.perf_counter_ns()
                conn.sock.sendall(frame)
                while True:
                    kind, body = conn.frame()
                    if kind == EV_EXIT:
                        break
                t1 = time.perf_counter_ns()
                exit_code(body)
                if i >= warmup:
                    lat.append((t1 - t0) / 1e6)
            wall = time.perf_counter() - t_all
            cpu1 = proc_cpu_ticks(pid)
            thr1 = shim_threads(pid)
        finally:
            stop()
    hz = os.sysconf("SC_CLK_TCK")
    lat.sort()
    return {
        "p50": lat[len(lat) // 2],
        "p99": lat[max(0, -(-len(lat) * 99 // 100) - 1)],
        "shim_cpu": (thr1[0] - thr0[0]) / 1e6 / n,
        "switches": (thr1[1] - thr0[1]) / n,
        "task_cpu": (cpu1[1] - cpu0[1]) / hz * 1000 / n,
        "rate": n / wall,
    }


def build_current():
    out = os.path.join("target", "shim-harness", "warmpool-shim")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(
        ["rustc", "--edition", "2021", "-C", "opt-level=3", "-C", "panic=abort",
         "-C", "strip=symbols", "-C", "target-feature=+crt-static",
         "--target", "x86_64-unknown-linux-gnu", "shim/main.rs", "-o", out],
        check=True,
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shim", action="append", default=[],
                    help="NAME=PATH of a shim binary (repeat for A/B); default: build this tree's")
    ap.add_argument("-n", type=int, default=2000, help="measured tasks per round")
    ap.add_argument("--warmup", type=int, default=100, help="unmeasured tasks first")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per binary, interleaved")
    ap.add_argument("--reset", action="store_true",
                    help="each Spawn wipes the workdir and a tmp dir (reset_workdir = true)")
    ap.add_argument("--cmd", default="busybox true",
                    help="the task's argv, split on spaces (default: the static busybox `true` "
                         "the demo image runs)")
    ap.add_argument("--docker", metavar="IMAGE",
                    help="run the shim in a container of IMAGE on the local Docker engine, "
                         "with a pool container's restrictions (user 1000, no capabilities, "
                         "read-only root, tmpfs /work and /tmp, no network, a pids limit), "
                         "instead of in a pid namespace on the host")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (unshare --pid --mount-proc, or the socket directory's owner)")
    shims = [s.split("=", 1) if "=" in s else (s, s) for s in args.shim]
    if not shims:
        shims = [("current", build_current())]
    shims = [(name, os.path.abspath(path)) for name, path in shims]
    argv = [a.encode() for a in args.cmd.split()]
    results = {name: [] for name, _ in shims}
    where = f"docker {args.docker}" if args.docker else "host pid namespace"
    print(f"n={args.n} warmup={args.warmup} reset={args.reset} cmd={args.cmd!r} in {where}")
    print(f"{'shim':<12}{'round':>6}{'p50 ms':>9}{'p99 ms':>9}{'shim cpu':>10}{'task cpu':>10}{'tasks/s':>9}{'switches':>9}")
    for r in range(args.rounds):
        for name, path in shims:
            res = run_round(path, args.n, args.warmup, args.reset, argv, args.docker)
            results[name].append(res)
            print(f"{name:<12}{r + 1:>6}{res['p50']:>9.3f}{res['p99']:>9.3f}"
                  f"{res['shim_cpu']:>10.3f}{res['task_cpu']:>10.3f}{res['rate']:>9.0f}"
                  f"{res['switches']:>9.1f}",
                  flush=True)
    print("medians over rounds (CPU in ms per task):")
    for name, _ in shims:
        rs = results[name]
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        print(f"{name:<12}{'med':>6}{med['p50']:>9.3f}{med['p99']:>9.3f}"
              f"{med['shim_cpu']:>10.3f}{med['task_cpu']:>10.3f}{med['rate']:>9.0f}"
              f"{med['switches']:>9.1f}")


if __name__ == "__main__":
    main()
