//! `cargo bench --bench compare`: one run, one engine, one image, seven ways to run `true`:
//!
//! 1. cold `docker run`: create + start + wait + remove, through the Engine API (bollard);
//! 2. raw `docker exec` into a running container through the Engine API (create exec, start
//!    attached, read to end, inspect the exit code);
//! 3. llm-sandbox, a peer people pick instead: its container pool and `execute_command`, one
//!    pooled session per task, run by `benches/peer_llm_sandbox.py` in a venv the bench makes
//!    (`WARMPOOL_BENCH_VENV`) with the versions pinned in
//!    `benches/peer_llm_sandbox.requirements.txt`; the script prints its latencies as JSON;
//! 4. warmpool with `exec = "docker-exec"`, through its HTTP API;
//! 5. warmpool with the shim over the engine's attached stream (`exec_transport = "attach"`),
//!    through its HTTP API;
//! 6. warmpool with the shim over its own unix socket (`exec_transport = "direct"`, the
//!    default), through its HTTP API;
//! 7. direct with `reset_workdir = false`, which shows what wiping /work and /tmp between
//!    pool tasks costs.
//!
//! For each: p50/p99 of N tasks one after another, and tasks/s with 8 concurrent clients on 4
//! containers. Then the daemon's RSS with 20 warm containers. Prints a markdown table.
//!
//! The bench starts `target/release/warmpool` itself (cargo builds it for benches and passes
//! its path as `CARGO_BIN_EXE_warmpool`) with its own `WARMPOOL_INSTANCE`, on a free loopback
//! port, and stops it with SIGTERM at the end, on panic too. Containers it creates for modes
//! 1 and 2, and llm-sandbox's (mode 3), carry the label `warmpool.bench=<instance>` and are
//! removed the same way.
//!
//! Knobs (environment): WARMPOOL_BENCH_N (sequential tasks of the fast modes, 200),
//! WARMPOOL_BENCH_N_COLD (sequential cold runs, 30), WARMPOOL_BENCH_SECS (seconds of each
//! concurrent phase, 5), WARMPOOL_BENCH_CLIENTS (8), WARMPOOL_BENCH_POOL (containers per pool,
//! 4), WARMPOOL_BENCH_RSS_WARM (20; 0 skips the RSS step), WARMPOOL_BENCH_MODES (comma list
//! of cold,exec,llm-sandbox,pool-exec,pool-shim,pool-direct,pool-shim-noreset; all by default),
//! WARMPOOL_BENCH_ROUNDS (1: rounds of the warmpool modes, interleaved, the order reversed
//! every other round; with more than one the table gives each mode's medians over the rounds
//! and a per-round table follows), WARMPOOL_BENCH_INSTANCE (bench), WARMPOOL_BENCH_BIN (the
//! daemon to run, for A/B comparisons; default the one cargo built), WARMPOOL_BENCH_LEGACY_CONFIG
//! (1: write no `exec_transport` key, for a daemon that predates it, whose shim pools all use
//! attach; the modes pool-direct and pool-shim-noreset are then refused, since they would
//! measure attach under a direct label), WARMPOOL_BENCH_VENV (the venv for llm-sandbox,
//! target/bench-venv), WARMPOOL_BENCH_PYTHON (the Python that makes it, python3).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::Value;

use common::{
    container_body, env_or, fmt_ms, machine_facts, median, met, percentile, run_container,
    sequential, ContainerGuard, Daemon, BENCH_LABEL, IMAGE,
};

struct Settings {
    n_fast: usize,
    n_cold: usize,
    secs: f64,
    clients: usize,
    pool: usize,
    rss_warm: usize,
    modes: Vec<String>,
    instance: String,
    rounds: usize,
    venv: PathBuf,
    python: String,
    /// Write no `exec_transport` key, for a `WARMPOOL_BENCH_BIN` that predates it.
    legacy_config: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let modes = env_or(
            "WARMPOOL_BENCH_MODES",
            "cold,exec,llm-sandbox,pool-exec,pool-shim,pool-direct,pool-shim-noreset".to_string(),
        );
        Settings {
            n_fast: env_or("WARMPOOL_BENCH_N", 200),
            n_cold: env_or("WARMPOOL_BENCH_N_COLD", 30),
            secs: env_or("WARMPOOL_BENCH_SECS", 5.0),
            clients: env_or("WARMPOOL_BENCH_CLIENTS", 8),
            pool: env_or("WARMPOOL_BENCH_POOL", 4),
            rss_warm: env_or("WARMPOOL_BENCH_RSS_WARM", 20),
            modes: modes.split(',').map(|m| m.trim().to_string()).collect(),
            instance: env_or("WARMPOOL_BENCH_INSTANCE", "bench".to_string()),
            rounds: env_or("WARMPOOL_BENCH_ROUNDS", 1usize).max(1),
            venv: env_or(
                "WARMPOOL_BENCH_VENV",
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-venv")),
            ),
            python: env_or("WARMPOOL_BENCH_PYTHON", "python3".to_string()),
            legacy_config: env_or("WARMPOOL_BENCH_LEGACY_CONFIG", 0u8) == 1,
        }
    }

    fn wants(&self, mode: &str) -> bool {
        self.modes.iter().any(|m| m == mode)
    }
}

/// One mode's figures.
#[derive(Clone)]
struct Row {
    key: &'static str,
    mode: &'static str,
    n: usize,
    p50: f64,
    p99: f64,
    tasks: usize,
    tput: f64,
    errors: usize,
    /// For warmpool modes: the daemon's own `run_ms` and `queued_ms` p50 (sequential phase).
    server: Option<(f64, f64)>,
    /// CPU per task during the concurrent phase.
    cpu: CpuUse,
}

/// What a concurrent phase did.
struct Phase {
    tasks: usize,
    elapsed: Duration,
    errors: usize,
    cpu: CpuUse,
}

/// `clients` loops running `task(client)` back to back for `secs`; returns tasks done, the
/// wall time until the last one ended, failures, and the CPU the machine's processes used.
async fn concurrent<F, Fut>(clients: usize, secs: f64, ours: &Ours, task: F) -> Phase
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let before = cpu_snapshot(ours);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let task = &task;
    let loops = (0..clients).map(|c| async move {
        let (mut done, mut errors) = (0usize, 0usize);
        while Instant::now() < end {
            match task(c).await {
                Ok(()) => done += 1,
                Err(e) => {
                    if errors < 2 {
                        eprintln!("  client {c}: task failed: {e:#}");
                    }
                    errors += 1;
                }
            }
        }
        (done, errors)
    });
    let results = futures_util::future::join_all(loops).await;
    let elapsed = start.elapsed();
    let after = cpu_snapshot(ours);
    let tasks = results.iter().map(|r| r.0).sum();
    Phase {
        tasks,
        elapsed,
        errors: results.iter().map(|r| r.1).sum(),
        cpu: CpuUse::between(&before, &after, tasks, elapsed),
    }
}

// ---------------------------------------------------------------------------------------
// Where the CPU goes: on a shared 2-core machine, wall-clock figures swing with everyone
// else's load, while the CPU each task costs, per process group, stays put.

/// The processes that are this run's own.
#[derive(Default)]
struct Ours {
    daemon: Option<u32>,
    /// A client process of the run's own (llm-sandbox's Python), counted as the bench client.
    client: Option<u32>,
    /// Full ids of the containers the phase uses.
    containers: Vec<String>,
}

const GROUPS: [&str; 7] = [
    "warmpool daemon",
    "dockerd + containerd (all)",
    "containerd-shims, runc (ours)",
    "fuse-overlayfs (all)",
    "in our containers",
    "bench client",
    "everything else",
];

struct CpuSnap {
    /// pid → (group, utime + stime + cutime + cstime in clock ticks).
    procs: HashMap<u32, (usize, u64)>,
    /// Busy ticks of the whole machine, all CPUs.
    busy: u64,
}

fn cpu_snapshot(ours: &Ours) -> CpuSnap {
    let me = std::process::id();
    let mut procs = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        // After the comm: state ppid ... utime(11) stime(12) cutime(13) cstime(14).
        let f: Vec<u64> = stat[close + 1..]
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 15 {
            continue;
        }
        let ticks = f[11] + f[12] + f[13] + f[14];
        let mentions_ours = |file: &str| {
            std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|text| {
                let text = String::from_utf8_lossy(&text);
                ours.containers.iter().any(|id| text.contains(id.as_str()))
            })
        };
        let group = if pid == me || Some(pid) == ours.client {
            5
        } else if Some(pid) == ours.daemon {
            0
        } else if comm == "dockerd" || comm == "containerd" {
            1
        } else if comm.starts_with("containerd-shim") || comm.starts_with("runc") {
            if mentions_ours("cmdline") {
                2
            } else {
                6
            }
        } else if comm == "fuse-overlayfs" {
            3
        } else if mentions_ours("cgroup") {
            4
        } else {
            6
        };
        procs.insert(pid, (group, ticks));
    }
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
        })
        .unwrap_or(0);
    CpuSnap { procs, busy }
}

/// CPU milliseconds per task, by group, and how busy the machine was.
#[derive(Clone)]
struct CpuUse {
    per_task_ms: [f64; GROUPS.len()],
    machine_busy: f64,
}

impl CpuUse {
    fn between(before: &CpuSnap, after: &CpuSnap, tasks: usize, elapsed: Duration) -> CpuUse {
        // /proc counts in USER_HZ, 100 on Linux.
        const TICK_MS: f64 = 10.0;
        let mut ticks = [0u64; GROUPS.len()];
        for (pid, (group, now)) in &after.procs {
            let then = match before.procs.get(pid) {
                Some((_, then)) if then <= now => *then,
                _ => 0, // new since, or a reused pid
            };
            ticks[*group] += now - then;
        }
        let n = tasks.max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuUse {
            per_task_ms: ticks.map(|t| t as f64 * TICK_MS / n),
            machine_busy: (after.busy.saturating_sub(before.busy)) as f64 * TICK_MS
                / (elapsed.as_secs_f64() * 1e3 * cores),
        }
    }
}

/// Full ids of the containers that carry all these `key=value` labels.
async fn container_ids(docker: &Docker, labels: &[String]) -> Vec<String> {
    let options = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), labels.to_vec())])),
        ..Default::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .map(|list| list.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Engine-side modes (bollard)

/// `docker run --rm busybox true`, step by step through the Engine API.
async fn cold_run(docker: &Docker, instance: &str) -> anyhow::Result<()> {
    run_container(docker, container_body(instance, vec!["true".into()])).await
}
/// Starts `n` long-running containers for the raw exec mode.
async fn exec_targets(docker: &Docker, instance: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for _ in 0..n {
        // The same main process as warmpool's docker-exec pools.
        let cmd = vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done".into(),
        ];
        let created = docker
            .create_container(
                None::<CreateContainerOptions>,
                container_body(instance, cmd),
            )
            .await?;
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await?;
        ids.push(created.id);
    }
    Ok(ids)
}

/// `docker exec <c> true`: create the exec, start it attached, read to end, inspect.
async fn raw_exec(docker: &Docker, container: &str) -> anyhow::Result<()> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions::<String> {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await?;
    match docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await?
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(chunk) = output.next().await {
                chunk?;
            }
        }
        StartExecResults::Detached => anyhow::bail!("exec started detached"),
    }
    let info = docker.inspect_exec(&created.id).await?;
    match info.exit_code {
        Some(0) => Ok(()),
        other => anyhow::bail!("exec exit code {other:?}"),
    }
}

async fn remove_all(docker: &Docker, ids: &[String]) {
    let removals = ids.iter().map(|id| {
        docker.remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
    });
    futures_util::future::join_all(removals).await;
}

// ---------------------------------------------------------------------------------------
// The peer: llm-sandbox (benches/peer_llm_sandbox.py)

const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer_llm_sandbox.py");
const PEER_REQUIREMENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peer_llm_sandbox.requirements.txt"
);

/// Makes (or reuses) the venv with the pinned llm-sandbox; returns its Python. The
/// requirements file is copied into the venv once installed, so a changed pin reinstalls.
fn peer_venv(s: &Settings) -> anyhow::Result<PathBuf> {
    let wanted = std::fs::read_to_string(PEER_REQUIREMENTS)?;
    let stamp = s.venv.join("warmpool-bench-requirements.txt");
    let python = s.venv.join("bin/python");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> anyhow::Result<()> {
        let status = cmd.stdout(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
        Ok(())
    };
    if !python.exists() {
        eprintln!("llm-sandbox: making the venv {}...", s.venv.display());
        run(Command::new(&s.python).args(["-m", "venv"]).arg(&s.venv))?;
    }
    eprintln!("llm-sandbox: installing {PEER_REQUIREMENTS}...");
    run(Command::new(s.venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(PEER_REQUIREMENTS))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// The running peer script: its stdout read line by line on a thread of its own, so that
/// every read has a deadline. Dropping it sends SIGTERM (the script closes its pool, which
/// removes its containers) and, after 60 s, SIGKILL; the bench's label sweep removes what
/// is left even then.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(python: &Path, s: &Settings) -> anyhow::Result<Peer> {
        let mut child = Command::new(python)
            .arg(PEER_SCRIPT)
            .args(["--image", IMAGE])
            .arg("--label")
            .arg(format!("{BENCH_LABEL}={}", s.instance))
            .arg("--pool")
            .arg(s.pool.to_string())
            .arg("--n")
            .arg(s.n_fast.to_string())
            .arg("--clients")
            .arg(s.clients.to_string())
            .arg("--secs")
            .arg(s.secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Peer {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next event line named `name`, within `within`.
    fn event(&self, name: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    anyhow::bail!("llm-sandbox: no {name:?} event within {within:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("llm-sandbox: the script ended before its {name:?} event")
                }
            };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v["event"] == name => return Ok(v),
                _ => eprintln!("  llm-sandbox: {line}"),
            }
        }
    }

    fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin kept until drop");
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("llm-sandbox: the script did not stop within 60 s after SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Figures read from the script's JSON: sorted latencies in ms.
fn ms_list(v: &Value) -> Vec<f64> {
    let mut lat: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    lat
}

/// What the peer mode measured: its row, the p50/p99 of one session held for all tasks, and
/// the llm-sandbox version.
struct PeerResult {
    row: Row,
    held: (f64, f64, usize),
    version: String,
}

fn bench_llm_sandbox(s: &Settings) -> anyhow::Result<PeerResult> {
    let python = peer_venv(s)?;
    let mut peer = Peer::spawn(&python, s)?;
    let ready = peer.event("ready", Duration::from_secs(240))?;
    let version = ready["version"].as_str().unwrap_or("?").to_string();
    let containers: Vec<String> = ready["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "llm-sandbox {version}: pool of {} warm in {:.1} s; {} sequential...",
        containers.len(),
        ready["warm_s"].as_f64().unwrap_or(f64::NAN),
        s.n_fast
    );
    // Two sequential runs of n tasks at ~100 ms each on a busy machine, with room to spare.
    let seq = peer.event(
        "sequential",
        Duration::from_secs_f64(120.0 + s.n_fast as f64 * 2.0),
    )?;
    let lat = ms_list(&seq["per_task_ms"]);
    let held = ms_list(&seq["held_ms"]);
    eprintln!(
        "llm-sandbox: {} clients on {} containers for {} s...",
        s.clients, s.pool, s.secs
    );
    let ours = Ours {
        client: Some(peer.pid()),
        containers,
        ..Default::default()
    };
    let before = cpu_snapshot(&ours);
    peer.go()?;
    let conc = peer.event("concurrent", Duration::from_secs_f64(s.secs * 10.0 + 60.0))?;
    let after = cpu_snapshot(&ours);
    let tasks = conc["tasks"].as_u64().unwrap_or(0) as usize;
    let elapsed = Duration::from_secs_f64(conc["elapsed_s"].as_f64().unwrap_or(f64::NAN));
    let closed = peer.event("closed", Duration::from_secs(120))?;
    eprintln!(
        "llm-sandbox: pool closed in {:.1} s",
        closed["close_s"].as_f64().unwrap_or(f64::NAN)
    );
    drop(peer);
    let errors = seq["errors"].as_u64().unwrap_or(0) + conc["errors"].as_u64().unwrap_or(0);
    Ok(PeerResult {
        row: Row {
            key: "llm-sandbox",
            mode: "llm-sandbox, pooled session per task (`execute_command`)",
            n: lat.len(),
            p50: percentile(&lat, 50.0),
            p99: percentile(&lat, 99.0),
            tasks,
            tput: tasks as f64 / elapsed.as_secs_f64(),
            errors: errors as usize,
            server: None,
            cpu: CpuUse::between(&before, &after, tasks, elapsed),
        },
        held: (percentile(&held, 50.0), percentile(&held, 99.0), held.len()),
        version,
    })
}

/// A pool of the bench; `transport` `None` writes no `exec_transport` key (for a daemon that
/// predates it).
fn pool_toml(
    name: &str,
    exec: &str,
    size: usize,
    reset_workdir: bool,
    transport: Option<&str>,
) -> String {
    // Fixed size, and no replacement by uses or age during the run: the bench measures the
    // warm path, not container churn (with the default max_uses = 100 every container would
    // be recreated many times per second of load).
    let transport = transport.map_or(String::new(), |t| format!("exec_transport = \"{t}\"\n"));
    format!(
        "[pools.{name}]\nimage = \"{IMAGE}\"\nexec = \"{exec}\"\nmin = {size}\nwarm = {size}\n\
         max = {size}\nmax_uses = 100000000\nmax_age = \"24h\"\nidle_timeout = \"1h\"\n\
         reset_workdir = {reset_workdir}\n{transport}\n"
    )
}

const TASK_BODY: &[u8] = br#"{"cmd":["true"]}"#;

/// One task through the HTTP API; returns the daemon's own (run_ms, queued_ms).
async fn http_task(client: &warmpool::client::Client, pool: &str) -> anyhow::Result<(f64, f64)> {
    let resp = client
        .request(
            "POST",
            &format!("/v1/pools/{pool}/tasks"),
            Some(TASK_BODY.to_vec()),
        )
        .await?;
    let status = resp.status;
    let body = resp.bytes().await?;
    if status != 200 {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let v: Value = serde_json::from_slice(&body)?;
    if v["exit_code"] != 0 {
        anyhow::bail!("unexpected answer: {v}");
    }
    Ok((
        v["run_ms"].as_f64().unwrap_or(f64::NAN),
        v["queued_ms"].as_f64().unwrap_or(f64::NAN),
    ))
}

/// A warmpool pool to measure.
struct PoolMode {
    key: &'static str,
    label: &'static str,
    pool: &'static str,
    exec: &'static str,
    reset_workdir: bool,
    transport: &'static str,
}

const POOL_MODES: [PoolMode; 4] = [
    PoolMode {
        key: "pool-exec",
        label: "warmpool, `exec = \"docker-exec\"`",
        pool: "dexec",
        exec: "docker-exec",
        reset_workdir: true,
        transport: "attach",
    },
    PoolMode {
        key: "pool-shim",
        label: "warmpool attach (shim, `exec_transport = \"attach\"`)",
        pool: "shim",
        exec: "shim",
        reset_workdir: true,
        transport: "attach",
    },
    PoolMode {
        key: "pool-direct",
        label: "warmpool direct (shim, `exec_transport = \"direct\"`)",
        pool: "direct",
        exec: "shim",
        reset_workdir: true,
        transport: "direct",
    },
    PoolMode {
        key: "pool-shim-noreset",
        label: "warmpool direct, `reset_workdir = false`",
        pool: "shimnoreset",
        exec: "shim",
        reset_workdir: false,
        transport: "direct",
    },
];

/// One row per mode, of the medians over its rounds (the rows of one mode, in order).
fn medians(rounds: &[Row]) -> Row {
    let first = rounds[0].clone();
    let med = |f: &dyn Fn(&Row) -> f64| median(rounds.iter().map(f).collect());
    let mut per_task_ms = first.cpu.per_task_ms;
    for (g, v) in per_task_ms.iter_mut().enumerate() {
        *v = med(&|r| r.cpu.per_task_ms[g]);
    }
    Row {
        n: rounds.iter().map(|r| r.n).sum(),
        p50: med(&|r| r.p50),
        p99: med(&|r| r.p99),
        tasks: rounds.iter().map(|r| r.tasks).sum(),
        tput: med(&|r| r.tput),
        errors: rounds.iter().map(|r| r.errors).sum(),
        server: first.server.map(|_| {
            (
                med(&|r| r.server.map_or(f64::NAN, |s| s.0)),
                med(&|r| r.server.map_or(f64::NAN, |s| s.1)),
            )
        }),
        cpu: CpuUse {
            per_task_ms,
            machine_busy: med(&|r| r.cpu.machine_busy),
        },
        ..first
    }
}

async fn bench_pool(
    s: &Settings,
    client: &warmpool::client::Client,
    m: &PoolMode,
    ours: &Ours,
) -> Row {
    let pool = m.pool;
    let server = std::cell::RefCell::new(Vec::new());
    let (lat, errors) = sequential(s.n_fast, 20, || async {
        let (run, queued) = http_task(client, pool).await?;
        server.borrow_mut().push((run, queued));
        Ok(())
    })
    .await;
    let server = server.into_inner();
    let mut run: Vec<f64> = server.iter().map(|s| s.0).collect();
    let mut queued: Vec<f64> = server.iter().map(|s| s.1).collect();
    run.sort_by(f64::total_cmp);
    queued.sort_by(f64::total_cmp);
    let phase = concurrent(s.clients, s.secs, ours, |_| async {
        http_task(client, pool).await.map(drop)
    })
    .await;
    Row {
        key: m.key,
        mode: m.label,
        n: lat.len(),
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        tasks: phase.tasks,
        tput: phase.tasks as f64 / phase.elapsed.as_secs_f64(),
        errors: errors + phase.errors,
        server: Some((percentile(&run, 50.0), percentile(&queued, 50.0))),
        cpu: phase.cpu,
    }
}

// ---------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(s))
}

async fn run(s: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(s.legacy_config && (s.wants("pool-direct") || s.wants("pool-shim-noreset"))),
        "WARMPOOL_BENCH_LEGACY_CONFIG=1 writes no exec_transport, so pool-direct and \
         pool-shim-noreset would run on attach: leave them out of WARMPOOL_BENCH_MODES"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(format!("{root}/scripts/build-demo-image.sh"))
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(built.success(), "scripts/build-demo-image.sh failed");

    let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
    let version = docker.version().await?;
    let facts = machine_facts(&version);
    eprintln!("warmpool compare bench: {}", facts.join("; "));
    let guard = ContainerGuard {
        instance: s.instance.clone(),
    };
    guard.sweep(); // leftovers of an interrupted run
    let mut rows: Vec<Row> = Vec::new();

    // The daemon first, so its pools warm while nothing else is measured.
    let daemon_modes: Vec<&PoolMode> = POOL_MODES.iter().filter(|m| s.wants(m.key)).collect();
    let mut daemon = None;
    let client;
    if !daemon_modes.is_empty() {
        let mut pools = String::new();
        for m in &daemon_modes {
            let transport = (!s.legacy_config).then_some(m.transport);
            pools += &pool_toml(m.pool, m.exec, s.pool, m.reset_workdir, transport);
        }
        let mut d = Daemon::spawn(&s.instance, &pools)?;
        client = warmpool::client::Client::new(&d.base, None);
        let took = d.wait_ready(&client).await?;
        eprintln!("daemon ready in {:.1} s", took.as_secs_f64());
        daemon = Some(d);
    } else {
        client = warmpool::client::Client::new("http://127.0.0.1:1", None);
    }

    if s.wants("cold") {
        eprintln!("cold docker run: {} sequential...", s.n_cold);
        let (lat, errors) = sequential(s.n_cold, 2, || cold_run(&docker, &s.instance)).await;
        eprintln!("cold docker run: {} clients for {} s...", s.clients, s.secs);
        // Its containers come and go within the phase: their shims count as everything else.
        let ours = Ours::default();
        let phase = concurrent(s.clients, s.secs, &ours, |_| cold_run(&docker, &s.instance)).await;
        rows.push(Row {
            key: "cold",
            mode: "cold `docker run` (create+start+wait+rm)",
            n: lat.len(),
            p50: percentile(&lat, 50.0),
            p99: percentile(&lat, 99.0),
            tasks: phase.tasks,
            tput: phase.tasks as f64 / phase.elapsed.as_secs_f64(),
            errors: errors + phase.errors,
            server: None,
            cpu: phase.cpu,
        });
    }

    if s.wants("exec") {
        let ids = exec_targets(&docker, &s.instance, s.pool).await?;
        eprintln!("raw docker exec: {} sequential...", s.n_fast);
        let (lat, errors) = sequential(s.n_fast, 5, || raw_exec(&docker, &ids[0])).await;
        eprintln!(
            "raw docker exec: {} clients on {} containers for {} s...",
            s.clients, s.pool, s.secs
        );
        let ours = Ours {
            containers: ids.clone(),
            ..Default::default()
        };
        let phase = concurrent(s.clients, s.secs, &ours, |c| {
            raw_exec(&docker, &ids[c % ids.len()])
        })
        .await;
        remove_all(&docker, &ids).await;
        rows.push(Row {
            key: "exec",
            mode: "raw `docker exec` (Engine API)",
            n: lat.len(),
            p50: percentile(&lat, 50.0),
            p99: percentile(&lat, 99.0),
            tasks: phase.tasks,
            tput: phase.tasks as f64 / phase.elapsed.as_secs_f64(),
            errors: errors + phase.errors,
            server: None,
            cpu: phase.cpu,
        });
    }

    let mut peer = None;
    if s.wants("llm-sandbox") {
        let result = bench_llm_sandbox(&s)?;
        rows.push(result.row.clone());
        peer = Some(result);
    }

    // Interleaved rounds: A B C, C B A, A B C, ... so that a drift in the machine's load
    // weighs on every mode alike.
    let mut by_round: Vec<Vec<Row>> = Vec::new();
    for round in 0..s.rounds {
        let mut order = daemon_modes.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this = Vec::new();
        for m in order {
            eprintln!("round {}/{}: {}...", round + 1, s.rounds, m.label);
            let ours = Ours {
                daemon: daemon.as_ref().map(Daemon::pid),
                client: None,
                containers: container_ids(
                    &docker,
                    &[
                        format!("warmpool.instance={}", s.instance),
                        format!("warmpool.pool={}", m.pool),
                    ],
                )
                .await,
            };
            this.push(bench_pool(&s, &client, m, &ours).await);
        }
        by_round.push(this);
    }
    for m in &daemon_modes {
        let of_mode: Vec<Row> = by_round
            .iter()
            .flatten()
            .filter(|r| r.key == m.key)
            .cloned()
            .collect();
        if !of_mode.is_empty() {
            rows.push(medians(&of_mode));
        }
    }
    let main_rss = daemon.as_ref().map(|d| d.rss_kib());
    if let Some(mut d) = daemon.take() {
        if let Some(took) = d.stop() {
            eprintln!("daemon stopped in {:.1} s", took.as_secs_f64());
        }
    }

    // RSS with `rss_warm` warm containers, on a daemon of its own.
    let mut rss = None;
    if s.rss_warm > 0 {
        eprintln!("RSS: a daemon with {} warm shim containers...", s.rss_warm);
        let mut d = Daemon::spawn(
            &s.instance,
            &pool_toml(
                "rss",
                "shim",
                s.rss_warm,
                true,
                (!s.legacy_config).then_some("direct"),
            ),
        )?;
        let c = warmpool::client::Client::new(&d.base, None);
        let took = d.wait_ready(&c).await?;
        // Let the start-up settle (the last attach, the first health checks are 30 s away).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let warm = d.rss_kib();
        let secs = (s.secs / 2.0).max(1.0);
        let ours = Ours {
            daemon: Some(d.pid()),
            ..Default::default()
        };
        let phase = concurrent(s.clients, secs, &ours, |_| async {
            http_task(&c, "rss").await.map(drop)
        })
        .await;
        let tasks = phase.tasks;
        let loaded = d.rss_kib();
        let stopped = d.stop();
        rss = Some((took, warm, loaded, tasks, stopped));
    }
    drop(guard);

    // ------------------------------------------------------------------------------------
    let raw_p50 = rows.iter().find(|r| r.key == "exec").map(|r| r.p50);
    println!();
    println!("## warmpool compare: `true` run one after another, and by concurrent clients");
    println!();
    if s.rounds > 1 {
        println!(
            "warmpool rows: medians over {} interleaved rounds (per round below).",
            s.rounds
        );
        println!();
    }
    // Speed-up columns: against raw exec, and against llm-sandbox when it ran.
    let peer_p50 = peer.as_ref().map(|p| p.row.p50);
    let speedup = |base: Option<f64>, r: &Row| {
        base.map_or("n/a".to_string(), |b| format!("{:.1}×", b / r.p50))
    };
    println!(
        "| mode | p50 ms | p99 ms | tasks/s @{} clients | speed-up vs raw exec (p50) |{}",
        s.clients,
        if peer_p50.is_some() {
            " speed-up vs llm-sandbox (p50) |"
        } else {
            ""
        }
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: |{}",
        if peer_p50.is_some() { " ---: |" } else { "" }
    );
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {} |{}",
            r.mode,
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            r.tput,
            speedup(raw_p50, r),
            peer_p50.map_or(String::new(), |_| format!(" {} |", speedup(peer_p50, r)))
        );
    }
    println!();
    for r in &rows {
        let mut line = format!(
            "- {}: {} sequential, {} concurrent tasks",
            r.mode, r.n, r.tasks
        );
        if let Some((run, queued)) = r.server {
            line += &format!(
                "; daemon-reported p50 run_ms {} and queued_ms {} (the rest is HTTP, JSON and scheduling)",
                fmt_ms(run),
                fmt_ms(queued)
            );
        }
        if r.errors > 0 {
            line += &format!("; **{} failed**", r.errors);
        }
        println!("{line}");
    }
    if let Some(p) = &peer {
        println!(
            "- llm-sandbox {}: one `SandboxSession(pool=...)` per task (acquire a pooled \
             container, `execute_command(\"true\")`, release), as its docs show pooled use; \
             image as above with `skip_environment_setup=True`; with one session held open \
             for all {} tasks instead (no acquire or release): p50 {} ms, p99 {} ms",
            p.version,
            p.held.2,
            fmt_ms(p.held.0),
            fmt_ms(p.held.1)
        );
    }
    println!(
        "- HTTP client: warmpool::client::Client (hyper 1, HTTP/1.1 keep-alive, one connection per \
         concurrent client), task body `{}`, the full JSON answer read and checked.",
        String::from_utf8_lossy(TASK_BODY)
    );
    println!(
        "- concurrent phase: {} clients for {} s on pools of {} containers (raw exec: {} clients \
         on {} containers); pools have min = warm = max, and reset_workdir = true (the default) \
         unless said otherwise.",
        s.clients, s.secs, s.pool, s.clients, s.pool
    );
    if let Some((rss_kib, hwm)) = main_rss {
        println!(
            "- daemon of the table ({} containers) after its load: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            daemon_modes.len() * s.pool,
            rss_kib as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    let mut rss_ok = None;
    if let Some((took, warm, loaded, tasks, _)) = rss {
        println!();
        println!(
            "**RSS** with {} warm shim containers (min = warm = {}): VmRSS {:.1} MiB when ready \
             ({:.1} s to ready), {:.1} MiB after {} tasks from {} clients (VmHWM {:.1} MiB)",
            s.rss_warm,
            s.rss_warm,
            warm.0 as f64 / 1024.0,
            took.as_secs_f64(),
            loaded.0 as f64 / 1024.0,
            tasks,
            s.clients,
            loaded.1 as f64 / 1024.0
        );
        rss_ok = Some(warm.0.max(loaded.0) as f64 / 1024.0);
    }
    println!();
    println!(
        "**CPU per task** during the concurrent phase, in ms, by process group (from /proc; \
         `(all)` groups are shared with everyone else on the engine; processes that ended \
         within the phase count where their parent is)"
    );
    println!();
    println!("| mode | {} | total | machine busy |", GROUPS.join(" | "));
    println!("| --- |{} ---: | ---: |", " ---: |".repeat(GROUPS.len()));
    for r in &rows {
        let cells: Vec<String> = r
            .cpu
            .per_task_ms
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        println!(
            "| {} | {} | {:.2} | {:.0}% |",
            r.mode,
            cells.join(" | "),
            r.cpu.per_task_ms.iter().sum::<f64>(),
            r.cpu.machine_busy * 100.0
        );
    }
    if s.rounds > 1 {
        println!();
        println!("**Rounds** (interleaved; p50 ms / p99 ms / tasks/s / CPU ms per task)");
        println!();
        let keys: Vec<&PoolMode> = daemon_modes.clone();
        println!(
            "| round | {} |",
            keys.iter().map(|m| m.key).collect::<Vec<_>>().join(" | ")
        );
        println!("| --- |{}", " --- |".repeat(keys.len()));
        for (i, round) in by_round.iter().enumerate() {
            let cells: Vec<String> = keys
                .iter()
                .map(|m| {
                    round
                        .iter()
                        .find(|r| r.key == m.key)
                        .map_or("".into(), |r| {
                            format!(
                                "{} / {} / {:.0} / {:.2}",
                                fmt_ms(r.p50),
                                fmt_ms(r.p99),
                                r.tput,
                                r.cpu.per_task_ms.iter().sum::<f64>()
                            )
                        })
                })
                .collect();
            println!("| {} | {} |", i + 1, cells.join(" | "));
        }
        let ratio = |f: &dyn Fn(&Row) -> f64| {
            median(
                by_round
                    .iter()
                    .filter_map(|round| {
                        let a = round.iter().find(|r| r.key == "pool-shim")?;
                        let d = round.iter().find(|r| r.key == "pool-direct")?;
                        Some(f(d) / f(a))
                    })
                    .collect(),
            )
        };
        if keys.iter().any(|m| m.key == "pool-shim") && keys.iter().any(|m| m.key == "pool-direct")
        {
            println!();
            println!(
                "- direct / attach, median of the per-round ratios: p50 {:.2}, p99 {:.2}, tasks/s {:.2}, CPU per task {:.2}",
                ratio(&|r| r.p50),
                ratio(&|r| r.p99),
                ratio(&|r| r.tput),
                ratio(&|r| r.cpu.per_task_ms.iter().sum::<f64>())
            );
        }
    }
    println!();
    println!("**Machine**");
    println!();
    for f in &facts {
        println!("- {f}");
    }
    if let Some(direct) = rows.iter().find(|r| r.key == "pool-direct") {
        println!();
        println!("**Targets** (direct transport, reported, not asserted)");
        println!();
        println!(
            "- end-to-end p50 ≤ 1.0 ms: {} ({} ms)",
            met(direct.p50 <= 1.0),
            fmt_ms(direct.p50)
        );
        println!(
            "- ≥ 1,500 tasks/s @{} clients on {} containers: {} ({:.0})",
            s.clients,
            s.pool,
            met(direct.tput >= 1500.0),
            direct.tput
        );
        if let Some(raw) = raw_p50 {
            println!(
                "- ≥ 50× faster (p50) than raw docker exec: {} ({:.1}×)",
                met(raw / direct.p50 >= 50.0),
                raw / direct.p50
            );
        }
        if let Some(p) = &peer {
            println!(
                "- ≥ 50× faster (p50) than llm-sandbox: {} ({:.1}×; {:.1}× against one held \
                 llm-sandbox session)",
                met(p.row.p50 / direct.p50 >= 50.0),
                p.row.p50 / direct.p50,
                p.held.0 / direct.p50
            );
        }
    }
    if let Some(shim) = rows.iter().find(|r| r.key == "pool-shim") {
        println!();
        println!("**Targets** (attach transport, reported, not asserted)");
        println!();
        println!(
            "- end-to-end p50 ≤ 2 ms: {} ({} ms)",
            met(shim.p50 <= 2.0),
            fmt_ms(shim.p50)
        );
        if let Some(raw) = raw_p50 {
            println!(
                "- ≥ 25× faster than raw docker exec: {} ({:.1}×)",
                met(raw / shim.p50 >= 25.0),
                raw / shim.p50
            );
        }
        println!(
            "- ≥ 500 tasks/s @{} clients: {} ({:.0})",
            s.clients,
            met(shim.tput >= 500.0),
            shim.tput
        );
        if let Some(mib) = rss_ok {
            println!(
                "- RSS ≤ 50 MiB with {} warm: {} ({:.1} MiB)",
                s.rss_warm,
                met(mib <= 50.0),
                mib
            );
        }
    }
    Ok(())
}
