//! `cargo bench --bench resume`: issue 12's workspace resume, side by side in one run, one
//! engine, one image (`warmpool/agent:latest`):
//!
//! 1. **warm task**: `POST /v1/pools/warm/tasks` on a plain pool (the same spec, no
//!    workspace), through the HTTP API;
//! 2. **resume**: a task of a session of a `session_workspace = "persistent"` pool whose
//!    workspace holds 5,000 files / 100 MiB and which has gone idle (its container given back,
//!    `"state": "idle"` in `GET /v1/sessions/{id}`): the task claims a warm container, the
//!    daemon brings the workspace into that container's slot (a bind mount as root, else
//!    renames), the task runs;
//! 3. **cold start with a named volume**: `docker run --rm -v <volume>:/workspace` of the same
//!    image, the volume holding the same 5,000 files, through the Engine API (bollard):
//!    create + start + wait + remove.
//!
//! Every one runs `test -f <a file>` (busybox), the resume and cold runs on the workspace's
//! last file, so a task that did not find its files fails. The measurements are interleaved:
//! each round runs the three once (ten warm tasks), in the order warm, resume, cold, then
//! reversed the next round, so a drift in the machine's load weighs on all three alike.
//! Between rounds (not timed) the session goes idle again and the pool refills.
//!
//! The workspace is written on the host straight into the session's store directory
//! (`<workspace_root>/<instance>/store/<id>/`) before the session's first task, as `<dirs>`
//! directories of files (`d<i % dirs>/f<i>`), owned by the task user (1000:1000). The volume
//! gets the same layout from a busybox container once, before the rounds.
//!
//! Knobs (environment): WARMPOOL_BENCH_ROUNDS (20), WARMPOOL_BENCH_WARM_PER_ROUND (10),
//! WARMPOOL_BENCH_FILES (5000), WARMPOOL_BENCH_MIB (100), WARMPOOL_BENCH_DIRS (50; 0 puts
//! every file at the workspace's top level), WARMPOOL_BENCH_INSTANCE (resumebench),
//! WARMPOOL_BENCH_BIN (the daemon to run; default the one cargo built).
//!
//! Targets of issue 12 (reported, never asserted): resume p50 within 50 ms of the warm
//! task's p50, and at least 5x faster than the cold start's p50.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::{Mount, MountType, VolumeCreateRequest};
use bollard::Docker;
use serde_json::{json, Value};

use common::{
    bench_labels, container_body, env_or, fmt_ms, machine_facts, met, ms, percentile,
    run_container, ContainerGuard, Daemon, IMAGE,
};

/// The task user of warmpool's pools by default, and so of the cold runs.
const TASK_USER: &str = "1000:1000";
const SESSION: &str = "resume-bench";

struct Settings {
    rounds: usize,
    warm_per_round: usize,
    files: usize,
    bytes: u64,
    dirs: usize,
    instance: String,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            rounds: env_or("WARMPOOL_BENCH_ROUNDS", 20usize).max(1),
            warm_per_round: env_or("WARMPOOL_BENCH_WARM_PER_ROUND", 10usize).max(1),
            files: env_or("WARMPOOL_BENCH_FILES", 5000usize).max(1),
            bytes: env_or("WARMPOOL_BENCH_MIB", 100u64) << 20,
            dirs: env_or("WARMPOOL_BENCH_DIRS", 50usize),
            instance: env_or("WARMPOOL_BENCH_INSTANCE", "resumebench".to_string()),
        }
    }

    /// The workspace-relative path of file `i`.
    fn file(&self, i: usize) -> String {
        if self.dirs == 0 {
            format!("f{i}")
        } else {
            format!("d{}/f{i}", i % self.dirs)
        }
    }

    /// File `i`'s size: the bytes spread evenly, the remainder over the first files.
    fn size(&self, i: usize) -> u64 {
        let n = self.files as u64;
        self.bytes / n + u64::from((i as u64) < self.bytes % n)
    }
}

/// Writes the workspace's files under `dir` (pseudo-random bytes, so no filesystem can
/// make them cheap), owned by the task user.
fn populate_host(s: &Settings, dir: &Path) -> anyhow::Result<()> {
    let (uid, gid) = (1000, 1000);
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    let max = s.size(0) as usize;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let buf: Vec<u8> = (0..max)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for i in 0..s.files {
        let path = dir.join(s.file(i));
        let parent = path.parent().expect("a file has a parent");
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
            std::os::unix::fs::chown(parent, Some(uid), Some(gid))?;
        }
        let mut f = std::fs::File::create(&path)?;
        // Each file differs from the others in its first bytes.
        f.write_all(&(i as u64).to_le_bytes())?;
        f.write_all(&buf[8..s.size(i) as usize])?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The same files in the named volume, written by a busybox container.
async fn populate_volume(s: &Settings, docker: &Docker, volume: &str) -> anyhow::Result<()> {
    let script = format!(
        "set -e; i=0; while [ $i -lt {files} ]; do \
           if [ {dirs} -gt 0 ]; then p=/workspace/d$((i % {dirs})); mkdir -p $p; else p=/workspace; fi; \
           n={base}; if [ $i -lt {rem} ]; then n=$((n + 1)); fi; \
           head -c $n /dev/urandom > $p/f$i; i=$((i + 1)); \
         done; chown -R {TASK_USER} /workspace",
        files = s.files,
        dirs = s.dirs,
        base = s.bytes / s.files as u64,
        rem = s.bytes % s.files as u64,
    );
    let mut body = cold_body(
        &s.instance,
        volume,
        vec!["/bin/sh".into(), "-c".into(), script],
    );
    body.user = Some("0:0".into());
    run_container(docker, body).await
}

/// A container of the bench's image with `volume` at /workspace, run as the task user.
fn cold_body(
    instance: &str,
    volume: &str,
    cmd: Vec<String>,
) -> bollard::models::ContainerCreateBody {
    let mut body = container_body(instance, cmd);
    body.user = Some(TASK_USER.into());
    if let Some(hc) = body.host_config.as_mut() {
        hc.mounts = Some(vec![Mount {
            typ: Some(MountType::VOLUME),
            source: Some(volume.into()),
            target: Some("/workspace".into()),
            ..Default::default()
        }]);
    }
    body
}

/// Removes the bench's named volume on every path (after its containers are gone).
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One HTTP call; the status and the JSON answer (`null` for an empty or non-JSON body).
async fn call(
    client: &warmpool::client::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let resp = client
        .request(method, path, body.map(|b| b.to_string().into_bytes()))
        .await?;
    let status = resp.status;
    let bytes = resp.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// What the daemon said about one task.
struct Ran {
    queued_ms: f64,
    run_ms: f64,
    cold_start: bool,
}

/// Runs a task, checks it exited 0.
async fn task(client: &warmpool::client::Client, pool: &str, body: Value) -> anyhow::Result<Ran> {
    let (status, v) = call(
        client,
        "POST",
        &format!("/v1/pools/{pool}/tasks"),
        Some(body),
    )
    .await?;
    if status != 200 || v["exit_code"] != 0 {
        anyhow::bail!("HTTP {status}: {v}");
    }
    Ok(Ran {
        queued_ms: v["queued_ms"].as_f64().unwrap_or(f64::NAN),
        run_ms: v["run_ms"].as_f64().unwrap_or(f64::NAN),
        cold_start: v["cold_start"].as_bool().unwrap_or(false),
    })
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            anyhow::bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the session is idle (container given back, workspace in its store) and the
/// persistent pool has its warm containers idle again: the state a resume starts from.
async fn settle(client: &warmpool::client::Client, warm: u64) -> anyhow::Result<()> {
    wait_until(
        "the session to go idle",
        Duration::from_secs(60),
        || async {
            let (_, v) = call(client, "GET", &format!("/v1/sessions/{SESSION}"), None).await?;
            Ok(v["state"] == "idle")
        },
    )
    .await?;
    wait_until("the pool to refill", Duration::from_secs(120), || async {
        let (_, v) = call(client, "GET", "/v1/pools/ws", None).await?;
        Ok(v["idle"].as_u64().unwrap_or(0) >= warm)
    })
    .await?;
    Ok(())
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() -> anyhow::Result<()> {
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(s))
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(format!("{root}/scripts/build-demo-image.sh"))
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(built.success(), "scripts/build-demo-image.sh failed");
    let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
    let facts = machine_facts(&docker.version().await?);
    eprintln!("warmpool resume bench: {}", facts.join("; "));
    // The volume's guard first, so that it is dropped after the containers' (the volume
    // cannot go while a container uses it).
    let volume = format!("warmpool-bench-{}", s.instance);
    let _volume_guard = VolumeGuard(volume.clone());
    let guard = ContainerGuard {
        instance: s.instance.clone(),
    };
    guard.sweep(); // leftovers of an interrupted run

    // The workspace root: a directory of the run's own, readable by the task user.
    let ws_root = tempfile::tempdir()?;
    std::fs::set_permissions(ws_root.path(), std::fs::Permissions::from_mode(0o755))?;
    let store = ws_root.path().join(&s.instance).join("store").join(SESSION);
    let started = Instant::now();
    populate_host(&s, &store)?;
    eprintln!(
        "workspace: {} files, {} bytes, in {} directories, written in {:.1} s",
        s.files,
        s.bytes,
        s.dirs,
        started.elapsed().as_secs_f64()
    );

    // Same spec for both pools but the workspace; no replacement by uses or age.
    const WARM: u64 = 2;
    let pool = |name: &str, extra: &str| {
        format!(
            "[pools.{name}]\nimage = \"{IMAGE}\"\nmin = {WARM}\nwarm = {WARM}\nmax = 4\n\
             max_uses = 100000000\nmax_age = \"24h\"\nidle_timeout = \"1h\"\n{extra}\n"
        )
    };
    let pools = pool("warm", "")
        + &pool(
            "ws",
            &format!(
                "session_workspace = \"persistent\"\nworkspace_root = \"{}\"\n",
                ws_root.path().display()
            ),
        );
    let mut daemon = Daemon::spawn(&s.instance, &pools)?;
    let client = warmpool::client::Client::new(&daemon.base, None);
    let took = daemon.wait_ready(&client).await?;
    eprintln!("daemon ready in {:.1} s", took.as_secs_f64());

    let docker_volume = docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some(bench_labels(&s.instance)),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    populate_volume(&s, &docker, &docker_volume.name).await?;
    eprintln!(
        "volume {}: populated in {:.1} s",
        docker_volume.name,
        started.elapsed().as_secs_f64()
    );

    // The session; idle 300 ms after its last task (the reaper looks every 500 ms).
    let (status, v) = call(
        &client,
        "POST",
        "/v1/sessions",
        Some(json!({"pool": "ws", "id": SESSION, "idle_timeout": "300ms"})),
    )
    .await?;
    anyhow::ensure!(status == 201, "create session: HTTP {status}: {v}");
    let last = format!("/workspace/{}", s.file(s.files - 1));
    let resume_body = json!({"cmd": ["test", "-f", last], "session": SESSION});
    let warm_body = json!({"cmd": ["test", "-d", "/tmp"]});
    let cold_cmd = vec!["test".to_string(), "-f".into(), last.clone()];

    // Warm-up, not timed: the session's first task (the workspace moves in from the store),
    // a few warm tasks, one cold run.
    task(&client, "ws", resume_body.clone()).await?;
    for _ in 0..5 {
        task(&client, "warm", warm_body.clone()).await?;
    }
    run_container(&docker, cold_body(&s.instance, &volume, cold_cmd.clone())).await?;

    let (mut warm, mut resume, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let (mut resume_queued, mut resume_run, mut warm_queued, mut warm_run) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut resume_cold_starts = 0;
    let mut settle_ms = Vec::new();
    for round in 0..s.rounds {
        let mut order = ["warm", "resume", "cold"];
        if round % 2 == 1 {
            order.reverse();
        }
        eprintln!("round {}/{}: {}", round + 1, s.rounds, order.join(", "));
        for what in order {
            match what {
                "warm" => {
                    for _ in 0..s.warm_per_round {
                        let t = Instant::now();
                        let r = task(&client, "warm", warm_body.clone()).await?;
                        warm.push(ms(t.elapsed()));
                        warm_queued.push(r.queued_ms);
                        warm_run.push(r.run_ms);
                    }
                }
                "resume" => {
                    let t = Instant::now();
                    settle(&client, WARM).await?;
                    settle_ms.push(ms(t.elapsed()));
                    let t = Instant::now();
                    let r = task(&client, "ws", resume_body.clone()).await?;
                    resume.push(ms(t.elapsed()));
                    resume_queued.push(r.queued_ms);
                    resume_run.push(r.run_ms);
                    resume_cold_starts += usize::from(r.cold_start);
                }
                _ => {
                    let t = Instant::now();
                    run_container(&docker, cold_body(&s.instance, &volume, cold_cmd.clone()))
                        .await?;
                    cold.push(ms(t.elapsed()));
                }
            }
        }
    }

    // The files are all there after every resume.
    let (status, v) = call(
        &client,
        "POST",
        "/v1/pools/ws/tasks",
        Some(json!({"shell": "find /workspace -type f | wc -l; du -sk /workspace | cut -f1", "session": SESSION})),
    )
    .await?;
    anyhow::ensure!(status == 200, "check task: HTTP {status}: {v}");
    let check = v["stdout"].as_str().unwrap_or("").to_string();
    let counted: Vec<&str> = check.split_whitespace().collect();
    anyhow::ensure!(
        counted.first() == Some(&s.files.to_string().as_str()),
        "the workspace lost files: {check:?}"
    );
    if let Some(took) = daemon.stop() {
        eprintln!("daemon stopped in {:.1} s", took.as_secs_f64());
    }
    guard.sweep();
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (warm, resume, cold) = (sorted(warm), sorted(resume), sorted(cold));
    let p = |v: &[f64], q| percentile(v, q);
    let dirs = if s.dirs == 0 {
        "all at the top level".to_string()
    } else {
        format!("in {} directories", s.dirs)
    };
    println!(
        "\n## warmpool workspace resume ({} rounds; workspace: {} files, {:.1} MiB, {dirs})\n",
        s.rounds,
        s.files,
        s.bytes as f64 / 1048576.0
    );
    println!("| what | n | p50 ms | p99 ms | daemon queued_ms p50 | daemon run_ms p50 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mid = |v: Vec<f64>| fmt_ms(percentile(&sorted(v), 50.0));
    println!(
        "| warm task (pool without workspace) | {} | {} | {} | {} | {} |",
        warm.len(),
        fmt_ms(p(&warm, 50.0)),
        fmt_ms(p(&warm, 99.0)),
        mid(warm_queued),
        mid(warm_run)
    );
    println!(
        "| resume of an idle session's persistent workspace | {} | {} | {} | {} | {} |",
        resume.len(),
        fmt_ms(p(&resume, 50.0)),
        fmt_ms(p(&resume, 99.0)),
        mid(resume_queued),
        mid(resume_run)
    );
    println!(
        "| cold `docker run` with the named volume (create+start+wait+rm) | {} | {} | {} | | |",
        cold.len(),
        fmt_ms(p(&cold, 50.0)),
        fmt_ms(p(&cold, 99.0))
    );
    let gap = p(&resume, 50.0) - p(&warm, 50.0);
    let speedup = p(&cold, 50.0) / p(&resume, 50.0);
    println!();
    println!(
        "- resume p50 − warm p50: {} ms (target ≤ 50 ms: {})",
        fmt_ms(gap),
        met(gap <= 50.0)
    );
    println!(
        "- cold p50 / resume p50: {speedup:.1}× (target ≥ 5×: {})",
        met(speedup >= 5.0)
    );
    println!(
        "- resumes that got a cold start (no warm container): {resume_cold_starts}; the wait \
         for idle + refill before each resume (not timed): p50 {} ms",
        mid(settle_ms)
    );
    println!("- the workspace after the last resume: {check:?} (files, KiB)");
    println!();
    for f in &facts {
        println!("- {f}");
    }
    println!(
        "- load average at the end: {}",
        load_end
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
