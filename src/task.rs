//! Tasks: the request as submitted, its validation against a pool's config, the report the
//! caller gets, and the one run path that pool tasks and session tasks share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::PoolConfig;
use crate::exec::{Conn, ExecError, TaskEvent, TaskExit, TaskSpec};
use crate::metrics::{Metrics, Outcome, RemoveReason};
use crate::pool::{AcquireError, Pool};

/// A task as submitted, before a pool's defaults fill it in.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// The command; `argv[0]` must not be empty.
    pub argv: Vec<String>,
    /// Added to the image's environment; keys may not be empty or contain `=`.
    pub env: BTreeMap<String, String>,
    /// Absolute; the pool's `workdir` when `None`.
    pub workdir: Option<String>,
    pub stdin: Bytes,
    /// More than 0 and at most the pool's `task_timeout`, which is the default.
    pub timeout: Option<Duration>,
}

/// What the caller gets back for a task that ran.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// `t-<ulid>`, in the logs of the task's span too.
    pub task_id: String,
    pub pool: String,
    pub container: String,
    pub exit: TaskExit,
    /// From arrival until the task held a container.
    pub queued: Duration,
    /// From spawn to exit.
    pub run: Duration,
    /// The task waited for a container (docs/scaling.md, "Lazy pools").
    pub cold_start: bool,
}

/// Why a task did not run, or did not run to its end. The API maps each to a status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    /// The request breaks a rule of [`validate`]; the message says which.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    /// The container failed while running the task (or the engine did, for `Engine`).
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("the container engine is unreachable and pool {0} has no idle container; retry when it is back")]
    EngineDown(String),
}

/// Fills a request in from the pool's defaults and checks what the pool cannot know.
///
/// Errors: [`SubmitError::Invalid`] for an empty command, a bad env key, a timeout of 0,
/// below a millisecond ([`crate::config::duration_problem`]) or above `task_timeout`, or a
/// relative workdir.
pub fn validate(cfg: &PoolConfig, req: TaskRequest) -> Result<TaskSpec, SubmitError> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(SubmitError::Invalid(
            "the command is empty: give cmd as a non-empty argv array or shell as a string".into(),
        ));
    }
    // The kernel takes C strings: a NUL would cut the value short, so refuse it by name.
    if let Some((i, _)) = req.argv.iter().enumerate().find(|(_, a)| a.contains('\0')) {
        return Err(SubmitError::Invalid(format!(
            "cmd[{i}] has a NUL byte; arguments cannot hold one (pass binary data through stdin)"
        )));
    }
    if let Some((k, _)) = req
        .env
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(SubmitError::Invalid(format!(
            "env {k:?} has a NUL byte in its name or value; environment strings cannot hold one"
        )));
    }
    if let Some(w) = req.workdir.as_deref().filter(|w| w.contains('\0')) {
        return Err(SubmitError::Invalid(format!(
            "workdir {w:?} has a NUL byte; paths cannot hold one"
        )));
    }
    if let Some(k) = req.env.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(SubmitError::Invalid(format!(
            "env key {k:?} is not a valid variable name (empty or contains '=')"
        )));
    }
    let timeout = match req.timeout {
        Some(t) if t.is_zero() => {
            return Err(SubmitError::Invalid("timeout must be more than 0s".into()))
        }
        Some(t) if crate::config::duration_problem(t).is_some() => {
            return Err(SubmitError::Invalid(format!(
                "timeout {} {}",
                humantime::format_duration(t),
                crate::config::duration_problem(t).unwrap_or_default()
            )))
        }
        Some(t) if t > cfg.task_timeout => {
            return Err(SubmitError::Invalid(format!(
                "timeout {} is longer than the pool's task_timeout {}; ask for less or raise task_timeout",
                humantime::format_duration(t),
                humantime::format_duration(cfg.task_timeout)
            )))
        }
        Some(t) => t,
        None => cfg.task_timeout,
    };
    let workdir = req.workdir.unwrap_or_else(|| cfg.workdir.clone());
    if !workdir.starts_with('/') {
        return Err(SubmitError::Invalid(format!(
            "workdir {workdir:?} must be an absolute path"
        )));
    }
    Ok(TaskSpec {
        argv: req.argv,
        env: req.env,
        workdir,
        stdin: req.stdin,
        timeout,
        max_output: cfg.max_output,
        reset: Vec::new(),
        stop: None,
    })
}

/// A fresh task id.
pub fn new_task_id() -> String {
    format!("t-{}", ulid::Ulid::new())
}

/// How a task that ran is counted.
pub fn outcome_of(exit: &TaskExit) -> Outcome {
    if exit.timed_out {
        Outcome::Timeout
    } else if exit.exit_code == Some(0) {
        Outcome::Ok
    } else if exit.spawn_error.is_some() {
        Outcome::Error
    } else {
        Outcome::NonzeroExit
    }
}

/// A task that ran on a container: how it ended and how long it ran.
pub struct Ran {
    /// How it ended, or why the container could not tell.
    pub result: Result<TaskExit, ExecError>,
    /// From spawn to exit.
    pub run: Duration,
}

/// The one run path: runs `task` on `conn` (the channel of `container`), streaming its
/// output to `out`, and counts it in `warmpool_tasks_total` and
/// `warmpool_task_duration_seconds` of `pool`. A task that died by a signal (or, in
/// docker-exec, with an exit code above 128) is `oom_killed` when the container's OOM kill
/// counter moved while it ran ([`crate::runtime::oom_kills`]).
pub async fn execute(
    metrics: &Metrics,
    pool: &str,
    container: &str,
    conn: &Conn,
    task: &TaskSpec,
    out: &mpsc::UnboundedSender<TaskEvent>,
) -> Ran {
    let oom_before = crate::runtime::oom_kills(container);
    let began = Instant::now();
    let mut result = conn.run(task, out).await;
    let run = began.elapsed();
    if let (Ok(exit), Some(before)) = (&mut result, oom_before) {
        let killed = exit.signal.is_some() || exit.exit_code.is_some_and(|c| c > 128);
        if killed && crate::runtime::oom_kills(container).is_some_and(|after| after > before) {
            exit.oom_killed = true;
        }
    }
    let outcome = match &result {
        Ok(exit) => outcome_of(exit),
        Err(_) => Outcome::Error,
    };
    metrics.task_done(pool, outcome, run.as_secs_f64());
    Ran { result, run }
}

/// Runs one task on a pool: queue, claim, run, and give the container back or retire it.
/// `engine_up: false` refuses at once when no container is idle: none could start.
///
/// Errors: see [`SubmitError`]; a refused task is counted as `rejected`.
pub async fn submit(
    metrics: &Metrics,
    pool: Arc<Pool>,
    engine_up: bool,
    request: TaskRequest,
    out: mpsc::UnboundedSender<TaskEvent>,
) -> Result<TaskReport, SubmitError> {
    let cfg = pool.config();
    let task = validate(&cfg, request)?;
    let task_id = new_task_id();
    // Never the env, the argv or the stdin: they may hold secrets.
    let span = tracing::info_span!("task", pool = %pool.name, task_id = %task_id, container = tracing::field::Empty);
    run_pooled(metrics, pool, engine_up, task, task_id, span.clone(), out)
        .instrument(span)
        .await
}

/// The rest of [`submit`], inside the task's span: every line logged on the way (the
/// container retired after a timeout, ...) names the pool, task and container.
async fn run_pooled(
    metrics: &Metrics,
    pool: Arc<Pool>,
    engine_up: bool,
    mut task: TaskSpec,
    task_id: String,
    span: tracing::Span,
    out: mpsc::UnboundedSender<TaskEvent>,
) -> Result<TaskReport, SubmitError> {
    let queued_at = Instant::now();
    // With the engine down no container can start: waiting would only delay the answer.
    if !engine_up && pool.counts().idle == 0 {
        metrics.task_rejected(&pool.name);
        return Err(SubmitError::EngineDown(pool.name.clone()));
    }
    let mut lease = match pool.acquire().await {
        Ok(lease) => lease,
        Err(e) => {
            metrics.task_rejected(&pool.name);
            tracing::debug!(error = %e, "task refused");
            return Err(e.into());
        }
    };
    let queued = queued_at.elapsed();
    metrics.queue_waited(&pool.name, queued.as_secs_f64());
    span.record("container", short(&lease.container));
    lease.begin();
    if lease.dirty {
        // The previous task's files go first, wiped by the shim in the same frame as this
        // task: a separate Reset would cost a round trip through the engine per task. A
        // failed wipe fails this task, and its container is replaced (the Err arm).
        task.reset = vec![pool.config().workdir.clone(), "/tmp".to_string()];
        // A persistent pool's container has a /workspace of its own: a pool task's files
        // there go too, so the next task (or a session claiming it) never sees them.
        if pool.spec().has_slot() {
            task.reset
                .push(crate::workspace::WORKSPACE_PATH.to_string());
        }
        lease.dirty = false;
    }
    let ran = execute(
        metrics,
        &pool.name,
        &lease.container,
        &lease.conn,
        &task,
        &out,
    )
    .await;
    let container = lease.container.clone();
    let cold_start = lease.cold;
    match ran.result {
        Ok(exit) => {
            if exit.timed_out {
                // The process group was killed, but a timed-out container is never
                // trusted again: whatever it was doing may have left it in a bad state.
                lease.retire(RemoveReason::Unhealthy);
            } else {
                lease.finish();
            }
            tracing::debug!(exit_code = ?exit.exit_code, timed_out = exit.timed_out, run_ms = ran.run.as_secs_f64() * 1e3, "task done");
            Ok(TaskReport {
                task_id,
                pool: pool.name.clone(),
                container,
                exit,
                queued,
                run: ran.run,
                cold_start,
            })
        }
        Err(e) => {
            // Retiring wakes the pool's loop, which starts the replacement.
            lease.retire(RemoveReason::Unhealthy);
            tracing::warn!(error = %e, "task failed");
            Err(e.into())
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}
