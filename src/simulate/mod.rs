//! `warmpool simulate`: replays a trace of task arrivals against the real supervisor, pools
//! and autoscaler, on a simulated engine ([`engine`]), under paused tokio time on a
//! current-thread runtime, so a day of traffic takes seconds. What it reports per pool, and
//! the oracle it compares with, are defined in docs/scaling.md ("Tuning with the simulator").
//!
//! A trace is JSONL, one task a line: `{"at": 12.5, "pool": "coder", "duration": 0.8}`,
//! seconds from the trace's start, the form `[server] trace_file` records.

pub mod engine;
pub mod record;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ExecMode};
use crate::metrics::Metrics;
use crate::supervisor::{Supervisor, TaskRequest};
pub use engine::{EngineModel, SimEngine};

/// One task of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceTask {
    /// Seconds from the trace's start.
    pub at: f64,
    /// The pool it was submitted to.
    pub pool: String,
    /// Seconds it ran.
    pub duration: f64,
}

/// Why a trace cannot be replayed; each names the file and line, what was there and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the trace {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file} has no task: a trace has one JSON object a line, such as {EXAMPLE}")]
    Empty { file: String },
}

const EXAMPLE: &str = r#"{"at": 12.5, "pool": "coder", "duration": 0.8}"#;

/// A trace's tasks, in order of arrival.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub tasks: Vec<TraceTask>,
    /// The 1-based line of each task, for messages.
    lines: Vec<usize>,
    file: String,
}

impl Trace {
    /// Reads a trace file.
    ///
    /// Errors: the file cannot be read, or see [`Trace::parse`].
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            file: file.clone(),
            source,
        })?;
        Trace::parse(&text, &file)
    }

    /// Parses JSONL; blank lines are skipped. Lines out of order are put in order (a
    /// recorded trace is written as tasks end, so a long task's line comes after the
    /// arrivals of shorter ones).
    ///
    /// Errors: the first malformed line (not JSON, a missing or unknown field, a negative
    /// or non-finite number), naming its line, what was wrong and the expected form.
    pub fn parse(text: &str, file: &str) -> Result<Trace, TraceError> {
        let mut tasks = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let bad = |message: String| TraceError::Line {
                file: file.to_string(),
                line,
                message,
            };
            let task: TraceTask = serde_json::from_str(raw).map_err(|e| {
                let shown: String = raw.chars().take(80).collect();
                bad(format!(
                    "not a task ({e}): {shown}; each line must be an object such as {EXAMPLE} \
                     (at and duration in seconds)"
                ))
            })?;
            for (field, v) in [("at", task.at), ("duration", task.duration)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!(
                        "{field} is {v}: it must be a number of seconds, 0 or more, such as \
                         {EXAMPLE}"
                    )));
                }
            }
            if task.pool.is_empty() {
                return Err(bad(format!(
                    "pool is empty: name the pool of pools.toml the task went to, such as \
                     {EXAMPLE}"
                )));
            }
            tasks.push((line, task));
        }
        if tasks.is_empty() {
            return Err(TraceError::Empty {
                file: file.to_string(),
            });
        }
        tasks.sort_by(|a, b| a.1.at.total_cmp(&b.1.at));
        let (lines, tasks) = tasks.into_iter().unzip();
        Ok(Trace {
            tasks,
            lines,
            file: file.to_string(),
        })
    }

    /// Checks that every pool of the trace is in `config`.
    ///
    /// Errors: the first line whose pool is not, with the pools there are.
    pub fn check_pools(&self, config: &Config, config_file: &str) -> Result<(), TraceError> {
        for (task, line) in self.tasks.iter().zip(&self.lines) {
            if !config.pools.contains_key(&task.pool) {
                let known: Vec<&str> = config.pools.keys().map(String::as_str).collect();
                return Err(TraceError::Line {
                    file: self.file.clone(),
                    line: *line,
                    message: format!(
                        "pool \"{}\" is not in {config_file} (its pools: {}): add [pools.{}] \
                         to the config or replay with the config the trace was recorded with",
                        task.pool,
                        known.join(", "),
                        task.pool
                    ),
                });
            }
        }
        Ok(())
    }

    /// The pools the trace uses, in name order.
    pub fn pools(&self) -> Vec<String> {
        let mut pools: Vec<String> = self.tasks.iter().map(|t| t.pool.clone()).collect();
        pools.sort();
        pools.dedup();
        pools
    }
}

/// How a simulation runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The engine's model (create latency and rate).
    pub engine: EngineModel,
    /// The wall-clock time of the trace's start, for `schedule`.
    pub start: chrono::DateTime<chrono::Utc>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: EngineModel::default(),
            // A Monday, midnight UTC: the shipped diurnal trace starts at midnight.
            start: "2026-01-05T00:00:00Z".parse().expect("valid time"),
        }
    }
}

/// What one pool did over a trace (docs/scaling.md, "Tuning with the simulator").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolReport {
    pub pool: String,
    /// Which policy: "today", "new" or as configured ("config").
    pub policy: String,
    pub tasks: u64,
    /// Tasks that got a container without one being started for them (the pool's own
    /// `warmpool_acquisitions_total{result="warm"}` definition), over all tasks (0..1).
    pub warm_hit_rate: f64,
    /// Tasks that never ran (acquire timeout, queue full).
    pub failed: u64,
    pub p50_queue_wait_ms: f64,
    pub p99_queue_wait_ms: f64,
    pub max_queue_wait_ms: f64,
    /// Seconds of container life summed over the pool's containers, creation included.
    pub container_seconds: f64,
    pub creates: u64,
    /// The oracle's container-seconds (see [`oracle`]).
    pub oracle_container_seconds: f64,
    pub oracle_creates: u64,
}

/// What the pool policies are today (before the predictive policies): the thresholds
/// only. The simulator's baseline.
pub fn todays_policy(config: &Config) -> Config {
    let mut c = config.clone();
    for p in c.pools.values_mut() {
        p.predictive = false;
        p.spare = 0;
        p.schedule.clear();
    }
    c
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    warm: bool,
    ran: bool,
    waited: Duration,
}

/// Replays `trace` against `config` on a fresh paused runtime and returns one report per
/// pool of the trace, labelled `policy`. The trace starts once every pool is up at its
/// initial size (`max(warm, min)`); container-seconds and creates count from then on.
///
/// Errors: the config could not be started (a pool's setup failed), or the runtime could
/// not be built.
pub fn simulate(
    config: &Config,
    trace: &Trace,
    opts: &Options,
    policy: &str,
) -> anyhow::Result<Vec<PoolReport>> {
    let mut config = config.clone();
    for p in config.pools.values_mut() {
        // The simulated engine runs tasks through its shim; a pool's warmth is the same.
        p.exec = ExecMode::Shim;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let (outcomes, usage) = rt.block_on(replay(&config, trace, opts))?;
    let latency = opts.engine.latency.as_secs_f64();
    let mut reports = Vec::new();
    for pool in trace.pools() {
        let mut waits: Vec<f64> = Vec::new();
        let (mut warm, mut failed) = (0u64, 0u64);
        for (task, out) in trace.tasks.iter().zip(&outcomes) {
            if task.pool != pool {
                continue;
            }
            let out = out.expect("every task was replayed");
            warm += u64::from(out.warm && out.ran);
            failed += u64::from(!out.ran);
            waits.push(out.waited.as_secs_f64() * 1e3);
        }
        waits.sort_by(f64::total_cmp);
        let tasks = waits.len() as u64;
        let (oracle_cs, oracle_creates) = oracle(
            trace
                .tasks
                .iter()
                .filter(|t| t.pool == pool)
                .map(|t| (t.at, t.duration)),
            latency,
        );
        let used = usage.get(&pool).copied().unwrap_or_default();
        reports.push(PoolReport {
            pool,
            policy: policy.to_string(),
            tasks,
            warm_hit_rate: if tasks == 0 {
                1.0
            } else {
                warm as f64 / tasks as f64
            },
            failed,
            p50_queue_wait_ms: percentile(&waits, 0.50),
            p99_queue_wait_ms: percentile(&waits, 0.99),
            max_queue_wait_ms: waits.last().copied().unwrap_or(0.0),
            container_seconds: used.container_seconds,
            creates: used.creates,
            oracle_container_seconds: oracle_cs,
            oracle_creates,
        });
    }
    Ok(reports)
}

type Replayed = (Vec<Option<Outcome>>, BTreeMap<String, engine::PoolUsage>);

async fn replay(config: &Config, trace: &Trace, opts: &Options) -> anyhow::Result<Replayed> {
    let engine = SimEngine::new(opts.engine);
    let sup = Supervisor::new(
        engine.clone(),
        Arc::new(Metrics::new()),
        None,
        "simulate",
        config.server.max_sessions,
    );
    sup.start(config).await?;
    // The trace starts on a daemon that is up: every pool at its initial size.
    for _ in 0..100_000 {
        let up = sup.pools().iter().all(|p| {
            let c = p.counts();
            c.up() >= c.target
        });
        if up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.start_counting();
    sup.set_wall_clock(opts.start);
    let t0 = Instant::now();
    let outcomes: Arc<Mutex<Vec<Option<Outcome>>>> =
        Arc::new(Mutex::new(vec![None; trace.tasks.len()]));
    let tracker = TaskTracker::new();
    for (i, task) in trace.tasks.iter().enumerate() {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(task.at)).await;
        let (sup, outcomes, task) = (sup.clone(), outcomes.clone(), task.clone());
        tracker.spawn(async move {
            let arrived = Instant::now();
            let (tx, _rx) = mpsc::unbounded_channel();
            let request = TaskRequest {
                argv: vec!["sleep".into(), format!("{}", task.duration)],
                ..Default::default()
            };
            let out = match sup.submit(&task.pool, request, tx).await {
                Ok(report) => Outcome {
                    warm: !report.cold_start,
                    ran: true,
                    waited: report.queued,
                },
                Err(_) => Outcome {
                    warm: false,
                    ran: false,
                    waited: arrived.elapsed(),
                },
            };
            outcomes.lock()[i] = Some(out);
        });
    }
    tracker.close();
    tracker.wait().await;
    let usage = engine.usage(Instant::now());
    let outcomes = outcomes.lock().clone();
    Ok((outcomes, usage))
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The oracle: the fewest container-seconds with which every task of `tasks` (arrival,
/// duration; in order of arrival) finds a ready container the moment it arrives, when a
/// container takes `latency` seconds from its creation until it is ready. Returns the
/// container-seconds and the creates.
///
/// It knows the future, has no `max`, and ignores the engine's create rate. A container
/// costs from its creation until its last task ends. Before each task, a container either
/// just served another task that ended `gap` seconds earlier and waited (cost `gap`), or is
/// created `latency` before the arrival (cost `latency`, after the old one, if any, was
/// removed the moment its task ended): so each task costs its duration plus
/// `min(gap, latency)`, or `latency` when no container is free. Each task takes the free
/// container that was freed last (the smallest gap): with a cost concave in the gap, the
/// nested matching this gives is the cheapest, so the sum is the minimum.
pub fn oracle(tasks: impl Iterator<Item = (f64, f64)>, latency: f64) -> (f64, u64) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    #[derive(PartialEq, PartialOrd)]
    struct T(f64);
    impl Eq for T {}
    #[allow(clippy::derive_ord_xor_partial_ord)]
    impl Ord for T {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0)
        }
    }
    // Containers running a task, by when it ends (earliest first), and free ones by when
    // they were freed (latest first).
    let mut busy: BinaryHeap<Reverse<T>> = BinaryHeap::new();
    let mut free: BinaryHeap<T> = BinaryHeap::new();
    let (mut cost, mut creates) = (0.0, 0u64);
    for (at, duration) in tasks {
        while busy.peek().is_some_and(|Reverse(T(end))| *end <= at) {
            let Reverse(end) = busy.pop().expect("peeked");
            free.push(end);
        }
        match free.pop() {
            Some(T(freed)) if at - freed < latency => cost += at - freed,
            Some(_) | None => {
                cost += latency;
                creates += 1;
            }
        }
        cost += duration;
        busy.push(Reverse(T(at + duration)));
    }
    (cost, creates)
}

/// The reports as a table: one line a pool and policy, with the oracle after each pool.
pub fn table(reports: &[PoolReport]) -> String {
    let mut out = format!(
        "{:<12} {:<7} {:>6} {:>9} {:>10} {:>10} {:>12} {:>8} {:>9}\n",
        "POOL",
        "POLICY",
        "TASKS",
        "WARM-HIT",
        "P50 WAIT",
        "P99 WAIT",
        "CONTAINER-S",
        "CREATES",
        "× ORACLE"
    );
    let mut pools: Vec<&str> = reports.iter().map(|r| r.pool.as_str()).collect();
    pools.dedup();
    for pool in pools {
        let mine: Vec<&PoolReport> = reports.iter().filter(|r| r.pool == pool).collect();
        for r in &mine {
            out += &format!(
                "{:<12} {:<7} {:>6} {:>8.2}% {:>7.1} ms {:>7.1} ms {:>12.0} {:>8} {:>8.2}×{}\n",
                r.pool,
                r.policy,
                r.tasks,
                r.warm_hit_rate * 100.0,
                r.p50_queue_wait_ms,
                r.p99_queue_wait_ms,
                r.container_seconds,
                r.creates,
                r.container_seconds / r.oracle_container_seconds.max(1e-9),
                if r.failed > 0 {
                    format!("  ({} failed)", r.failed)
                } else {
                    String::new()
                }
            );
        }
        if let Some(r) = mine.first() {
            out += &format!(
                "{:<12} {:<7} {:>6} {:>8.2}% {:>7.1} ms {:>7.1} ms {:>12.0} {:>8} {:>8.2}×\n",
                r.pool,
                "oracle",
                r.tasks,
                100.0,
                0.0,
                0.0,
                r.oracle_container_seconds,
                r.oracle_creates,
                1.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
