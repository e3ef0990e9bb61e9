//! What the benches share: the daemon they start and stop, the containers they create and
//! sweep, percentiles and the machine's facts. Each bench target compiles this module on its
//! own and uses a part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

pub const IMAGE: &str = "warmpool/agent:latest";
pub const BENCH_LABEL: &str = "warmpool.bench";

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `task` `n` times one after another (after `warmup` unmeasured runs); returns the
/// sorted latencies in ms and the number of failures.
pub async fn sequential<F, Fut>(n: usize, warmup: usize, mut task: F) -> (Vec<f64>, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut errors = 0;
    for _ in 0..warmup {
        if let Err(e) = task().await {
            eprintln!("  warm-up task failed: {e:#}");
        }
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match task().await {
            Ok(()) => lat.push(ms(t.elapsed())),
            Err(e) => {
                if errors < 3 {
                    eprintln!("  task failed: {e:#}");
                }
                errors += 1;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, errors)
}

pub fn bench_labels(instance: &str) -> HashMap<String, String> {
    HashMap::from([(BENCH_LABEL.to_string(), instance.to_string())])
}

/// Removes the containers the bench created itself, on every path (panic included).
pub struct ContainerGuard {
    pub instance: String,
}

impl ContainerGuard {
    pub fn sweep(&self) {
        let filter = format!("label={BENCH_LABEL}={}", self.instance);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        self.sweep();
    }
}

pub fn container_body(instance: &str, cmd: Vec<String>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(cmd),
        labels: Some(bench_labels(instance)),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            // Same as warmpool's containers: no log files.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `docker run --rm` of `body`, step by step through the Engine API: create, start, wait
/// (exit code 0 expected), remove.
pub async fn run_container(docker: &Docker, body: ContainerCreateBody) -> anyhow::Result<()> {
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await?;
    let result = async {
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await?;
        let mut wait = docker.wait_container(&created.id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) if r.status_code == 0 => Ok(()),
            Some(Ok(r)) => anyhow::bail!("exit code {}", r.status_code),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("wait ended without a status"),
        }
    }
    .await;
    docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await?;
    result
}

// ---------------------------------------------------------------------------------------
// The daemon

/// A `warmpool serve` process; dropping it sends SIGTERM and waits (see
/// [`Daemon::stop_limit`]), and as a last resort kills it and removes its instance's
/// containers.
pub struct Daemon {
    child: Option<Child>,
    pub instance: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// How long [`Daemon::stop`] (and dropping) waits after SIGTERM before it kills: 60 s
    /// unless set; a daemon with a thousand containers takes longer.
    pub stop_limit: Duration,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon (`WARMPOOL_BENCH_BIN`, else the one cargo built) with `pools` after
    /// a `[server]` on a free loopback port, logging warnings only.
    pub fn spawn(instance: &str, pools: &str) -> anyhow::Result<Daemon> {
        Self::spawn_logging(instance, pools, "warmpool=warn")
    }

    /// [`Daemon::spawn`] with `rust_log` as the daemon's `RUST_LOG`.
    pub fn spawn_logging(instance: &str, pools: &str, rust_log: &str) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config =
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n\n{pools}");
        let config_path = dir.path().join("pools.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log)?;
        let bin = std::env::var_os("WARMPOOL_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_warmpool").into());
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("WARMPOOL_INSTANCE", instance)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        Ok(Daemon {
            child: Some(child),
            instance: instance.to_string(),
            base: format!("http://127.0.0.1:{port}"),
            stop_limit: Duration::from_secs(60),
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for `/readyz` 200, at most 180 s; returns how long it took.
    pub async fn wait_ready(
        &mut self,
        client: &warmpool::client::Client,
    ) -> anyhow::Result<Duration> {
        self.wait_ready_within(client, Duration::from_secs(180), false)
            .await
    }

    /// Waits for `/readyz` 200, at most `limit`; returns how long it took. With `progress`,
    /// says on stderr every 30 s how many containers are live (a warm-up of minutes).
    pub async fn wait_ready_within(
        &mut self,
        client: &warmpool::client::Client,
        limit: Duration,
        progress: bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last_report = Instant::now();
        loop {
            if let Ok(resp) = client.request("GET", "/readyz", None).await {
                let status = resp.status;
                let _ = resp.bytes().await;
                if status == 200 {
                    return Ok(start.elapsed());
                }
            }
            if let Some(status) = self.child.as_mut().expect("running").try_wait()? {
                anyhow::bail!("daemon exited early ({status}):\n{}", self.log_tail(40));
            }
            if start.elapsed() > limit {
                anyhow::bail!("daemon not ready in {limit:?}:\n{}", self.log_tail(40));
            }
            if progress && last_report.elapsed() > Duration::from_secs(30) {
                let live = live_containers(client).await.unwrap_or(0);
                eprintln!(
                    "  {:.0} s: {live} containers live",
                    start.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            // A warm-up of minutes is asked about twice a second, a quick start more often.
            let pause = if progress { 500 } else { 50 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// VmRSS and VmHWM in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// utime + stime of the daemon, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        // `after` starts at field 3 (state), so field 14 is index 11.
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }

    /// SIGTERM and wait, at most [`Daemon::stop_limit`]; returns how long the shutdown took,
    /// `None` when it had to be killed (its containers are then removed here).
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let limit = self.stop_limit;
        let start = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warmpool did not stop within {limit:?} after SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
        let filter = format!("label=warmpool.instance={}", self.instance);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(ids)
                    .status();
            }
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of `live` over `GET /v1/pools`.
pub async fn live_containers(client: &warmpool::client::Client) -> anyhow::Result<u64> {
    let resp = client.request("GET", "/v1/pools", None).await?;
    let body = resp.bytes().await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let pools = v["pools"]
        .as_array()
        .cloned()
        .or_else(|| v.as_array().cloned())
        .unwrap_or_default();
    Ok(pools.iter().filter_map(|p| p["live"].as_u64()).sum())
}

/// The median of some figures (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

pub fn machine_facts(version: &bollard::models::SystemVersion) -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1048576.0))
        .unwrap_or_default();
    vec![
        format!(
            "nproc: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        format!("cpu: {cpu}"),
        format!("memory: {mem}"),
        format!("load average at start: {load}"),
        format!(
            "docker: {} (API {}), {} {}, kernel {}",
            version.version.as_deref().unwrap_or("?"),
            version.api_version.as_deref().unwrap_or("?"),
            version.os.as_deref().unwrap_or("?"),
            version.arch.as_deref().unwrap_or("?"),
            version.kernel_version.as_deref().unwrap_or("?")
        ),
    ]
}

pub fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
