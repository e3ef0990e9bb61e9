//! `cargo bench --bench scale`: one daemon at scale. 1,000 warm containers across 10 pools
//! (the demo image `warmpool/agent:latest`, the shim, the direct transport: the defaults),
//! and what that costs and gives:
//!
//! 1. time to ready: from the daemon's start until `/readyz` answers 200 (every pool has its
//!    `min` up, `min = warm = max`) and `GET /v1/pools` counts every container live;
//! 2. the daemon's RSS with every container warm (target: at most 100 MiB);
//! 3. the daemon's CPU while idle, from `/proc/<pid>/stat` over a while (target: at most 2%
//!    of one core); health probes (every 30 s per container, spread over the interval) run
//!    meanwhile, which is the point;
//! 4. task latency over HTTP, `true` one task after another for a while, each to the next
//!    pool in turn (target: p99 at most 3x p50), so tasks meet health probes; split into
//!    the task's time in the container (the daemon's `run_ms`) and the rest, to say where a
//!    tail comes from; and how busy the whole machine was while the daemon idled;
//! 5. SIGTERM: how long the shutdown takes, and how many of the instance's containers the
//!    engine still has after it (listed by label and found by inspect: a busy dockerd lists
//!    "Removal In Progress" ghosts for a while) (target: 0), with the daemon's last line.
//!
//! Prints a markdown table. Run it under nothing else: the idle CPU is the daemon's alone.
//!
//! Knobs (environment): WARMPOOL_SCALE_CONTAINERS (1000), WARMPOOL_SCALE_POOLS (10; the
//! containers are shared evenly), WARMPOOL_SCALE_IDLE_SECS (60), WARMPOOL_SCALE_TASK_SECS
//! (30: one health interval), WARMPOOL_SCALE_READY_SECS (1800: the give-up bound for the
//! warm-up), WARMPOOL_SCALE_INSTANCE (scale), WARMPOOL_BENCH_BIN (the daemon to run; default
//! the one cargo built). A quick check: `WARMPOOL_SCALE_CONTAINERS=100
//! WARMPOOL_SCALE_IDLE_SECS=10 WARMPOOL_SCALE_TASK_SECS=5 cargo bench --bench scale`.
//!
//! The daemon is `benches/common`'s `Daemon`, logging at info (its last line says what the
//! engine left) and given five minutes to stop.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use common::{env_or, live_containers, met, percentile, Daemon, IMAGE};
use serde_json::Value;

struct Settings {
    containers: usize,
    pools: usize,
    idle_secs: f64,
    task_secs: f64,
    ready_secs: f64,
    instance: String,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            containers: env_or("WARMPOOL_SCALE_CONTAINERS", 1000usize).max(1),
            pools: env_or("WARMPOOL_SCALE_POOLS", 10usize).max(1),
            idle_secs: env_or("WARMPOOL_SCALE_IDLE_SECS", 60.0),
            task_secs: env_or("WARMPOOL_SCALE_TASK_SECS", 30.0),
            ready_secs: env_or("WARMPOOL_SCALE_READY_SECS", 1800.0),
            instance: env_or("WARMPOOL_SCALE_INSTANCE", "scale".to_string()),
        }
    }

    /// Containers of pool `i` (0-based): the total shared evenly, the rest to the first.
    fn size(&self, i: usize) -> usize {
        self.containers / self.pools + usize::from(i < self.containers % self.pools)
    }
}

/// The machine's busy and total CPU time so far, in clock ticks, from the first line of
/// `/proc/stat` (busy: every column but idle and iowait). Two readings give how busy the
/// whole machine was between them: 1,000 containers' engine processes (containerd-shim,
/// fuse-overlayfs) run beside the daemon, and a task's tail waits for them.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cols: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cols.iter().take(8).sum();
    let idle = cols.get(3).copied().unwrap_or(0) + cols.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Every process's own CPU so far (utime + stime, clock ticks; not its children's, which
/// would count a reaped compile whole), by pid, with its command name.
fn ticks_by_pid() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<u64> = stat[close + 1..]
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() > 12 {
            out.insert(pid, (stat[open + 1..close].to_string(), f[11] + f[12]));
        }
    }
    out
}

/// The command names that took the most CPU between two [`ticks_by_pid`], as
/// `name xx.x% (n processes)` in percent of one core over `secs`, busiest first.
fn busiest(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    secs: f64,
    top: usize,
) -> String {
    let mut by_comm: HashMap<&str, (u64, usize)> = HashMap::new();
    for (pid, (comm, now)) in after {
        let then = match before.get(pid) {
            Some((c, then)) if c == comm && then <= now => *then,
            _ => 0,
        };
        let e = by_comm.entry(comm.as_str()).or_default();
        e.0 += now - then;
        e.1 += 1;
    }
    let mut v: Vec<_> = by_comm.into_iter().filter(|(_, (t, _))| *t > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
    let tck = clock_ticks_per_second();
    v.iter()
        .take(top)
        .map(|(comm, (t, n))| format!("{comm} {:.1}% ({n})", *t as f64 / tck / secs * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Percent of the machine's CPU (all cores) that was busy between two [`machine_ticks`].
fn machine_busy(from: (u64, u64), to: (u64, u64)) -> f64 {
    let total = to.1.saturating_sub(from.1).max(1);
    to.0.saturating_sub(from.0) as f64 / total as f64 * 100.0
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn pools_toml(s: &Settings) -> String {
    let mut out = String::new();
    for i in 0..s.pools {
        let size = s.size(i);
        // Fixed size, no replacement by uses or age during the run; health checks at their
        // default (every 30 s).
        out += &format!(
            "[pools.p{i:02}]\nimage = \"{IMAGE}\"\nmin = {size}\nwarm = {size}\nmax = {size}\n\
             max_uses = 100000000\nmax_age = \"24h\"\nidle_timeout = \"1h\"\n\n"
        );
    }
    out
}

const TASK_BODY: &[u8] = br#"{"cmd":["true"]}"#;

/// One task through the HTTP API; returns its round trip and the daemon's `run_ms` (the
/// task's time in the container, from the shim's spawn to its exit report), in ms.
async fn http_task(client: &warmpool::client::Client, pool: &str) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let resp = client
        .request(
            "POST",
            &format!("/v1/pools/{pool}/tasks"),
            Some(TASK_BODY.to_vec()),
        )
        .await?;
    let status = resp.status;
    let body = resp.bytes().await?;
    let took = start.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let v: Value = serde_json::from_slice(&body)?;
    if v["exit_code"] != 0 {
        anyhow::bail!("unexpected answer: {v}");
    }
    Ok((took, v["run_ms"].as_f64().unwrap_or(f64::NAN)))
}

/// The instance's containers the engine lists (any state), and how many of them inspect
/// still finds.
async fn engine_left(docker: &Docker, instance: &str) -> (usize, usize) {
    let options = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("warmpool.instance={instance}")],
        )])),
        ..Default::default()
    };
    let listed: Vec<String> = docker
        .list_containers(Some(options))
        .await
        .map(|l| l.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default();
    let mut found = 0;
    for id in &listed {
        if docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .is_ok()
        {
            found += 1;
        }
    }
    (listed.len(), found)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is expected.
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
    let version = docker.version().await?;
    let (listed, _) = engine_left(&docker, &s.instance).await;
    anyhow::ensure!(
        listed == 0,
        "{listed} containers of instance {:?} exist already; remove them or set WARMPOOL_SCALE_INSTANCE",
        s.instance
    );
    eprintln!(
        "warmpool scale bench: {} containers in {} pools; docker {}, {} cores",
        s.containers,
        s.pools,
        version.version.as_deref().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. Time to ready.
    // Info, not debug: the last line says what the engine left; one line per container
    // start is not what is measured.
    let mut daemon = Daemon::spawn_logging(&s.instance, &pools_toml(&s), "warmpool=info")?;
    // A thousand containers take a minute or more to remove.
    daemon.stop_limit = Duration::from_secs(300);
    let client = warmpool::client::Client::new(&daemon.base, None);
    let ready = daemon
        .wait_ready_within(&client, Duration::from_secs_f64(s.ready_secs), true)
        .await?;
    let live = live_containers(&client).await?;
    eprintln!(
        "ready in {:.1} s, {live} containers live",
        ready.as_secs_f64()
    );

    // 2. RSS, all warm.
    let (rss_warm, _) = daemon.rss_kib();

    // 3. Idle CPU.
    let tck = clock_ticks_per_second();
    let t0 = Instant::now();
    let c0 = daemon.cpu_ticks();
    let m0 = machine_ticks();
    let p0 = ticks_by_pid();
    tokio::time::sleep(Duration::from_secs_f64(s.idle_secs)).await;
    let idle_cpu = (daemon.cpu_ticks() - c0) as f64 / tck / t0.elapsed().as_secs_f64() * 100.0;
    let m1 = machine_ticks();
    let idle_machine = machine_busy(m0, m1);
    let idle_busiest = busiest(&p0, &ticks_by_pid(), t0.elapsed().as_secs_f64(), 6);
    eprintln!(
        "idle CPU {idle_cpu:.2}% of a core over {:.0} s (machine {idle_machine:.1}% busy)",
        s.idle_secs
    );

    // 4. Tasks, one after another, each to the next pool.
    let mut lat = Vec::new();
    // The same tasks split: time in the container (run_ms) and the rest (HTTP, daemon, socket).
    let (mut run, mut rest) = (Vec::new(), Vec::new());
    let mut errors = 0usize;
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed().as_secs_f64() < s.task_secs {
        let pool = format!("p{:02}", i % s.pools);
        match http_task(&client, &pool).await {
            Ok((ms, run_ms)) => {
                lat.push(ms);
                run.push(run_ms);
                rest.push(ms - run_ms);
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("task failed: {e}");
                }
            }
        }
        i += 1;
    }
    for v in [&mut lat, &mut run, &mut rest] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    let (rss_after, hwm) = daemon.rss_kib();
    let live_after = live_containers(&client).await?;

    // 5. Shutdown.
    let stopped = daemon.stop();
    let last_line = daemon
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or("(no final line)")
        .to_string();
    let (listed_after, found_after) = engine_left(&docker, &s.instance).await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\n### warmpool at scale: {} warm containers in {} pools (docker {}, {} cores)\n",
        s.containers,
        s.pools,
        version.version.as_deref().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measure | value | target |");
    println!("| --- | --- | --- |");
    println!(
        "| time to ready (all {} warm) | {:.1} s ({:.0} containers/s) | - |",
        s.containers,
        ready.as_secs_f64(),
        s.containers as f64 / ready.as_secs_f64()
    );
    println!(
        "| daemon RSS, all warm | {:.1} MiB | <= 100 MiB: {} |",
        mib(rss_warm),
        met(mib(rss_warm) <= 100.0)
    );
    println!(
        "| daemon RSS after the tasks (peak) | {:.1} MiB ({:.1} MiB) | <= 100 MiB: {} |",
        mib(rss_after),
        mib(hwm),
        met(mib(hwm) <= 100.0)
    );
    println!(
        "| idle daemon CPU over {:.0} s | {idle_cpu:.2}% of a core | <= 2%: {} |",
        s.idle_secs,
        met(idle_cpu <= 2.0)
    );
    println!(
        "| the whole machine over the same {:.0} s (engine, container and other processes) | {idle_machine:.1}% busy | - |",
        s.idle_secs
    );
    println!(
        "| its busiest processes then, by name (% of one core, how many) | {idle_busiest} | - |"
    );
    println!(
        "| tasks over HTTP, sequential across {} pools, {:.0} s | {} tasks, {errors} errors | 0 errors: {} |",
        s.pools,
        s.task_secs,
        lat.len(),
        met(errors == 0)
    );
    println!(
        "| task p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.1} ms (p99 = {:.1}x p50) | p99 <= 3x p50: {} |",
        p99 / p50,
        met(p99 <= 3.0 * p50)
    );
    let split = |v: &[f64]| {
        format!(
            "{:.2} / {:.2} / {:.1}",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(f64::NAN)
        )
    };
    println!(
        "| of which in the container (`run_ms`) / the rest (HTTP, daemon, socket): p50 / p99 / max | {} / {} ms | - |",
        split(&run),
        split(&rest)
    );
    println!(
        "| containers live before SIGTERM | {live_after} | {}: {} |",
        s.containers,
        met(live_after as usize == s.containers)
    );
    match stopped {
        Some(took) => println!(
            "| shutdown (SIGTERM to exit) | {:.1} s | - |",
            took.as_secs_f64()
        ),
        None => println!("| shutdown (SIGTERM to exit) | did not exit in 300 s | - |"),
    }
    println!(
        "| containers left per the engine (inspect finds / listed) | {found_after} / {listed_after} | 0: {} |",
        met(found_after == 0)
    );
    println!("\nThe daemon's last line: `{}`", last_line.trim());
    Ok(())
}
