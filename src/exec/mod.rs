//! How a task runs inside a container: through the in-container shim over one attached
//! stream (about a millisecond, `shim.rs`), or through a per-task `docker exec` (about 50 ms,
//! `docker_exec.rs`) for images where the shim cannot run. Both sit behind [`Conn`], so the
//! pool does not care which.
//!
//! Exec owns every timeout of talking to a container (greeting, probe, wipe, backstop): they
//! are properties of the transport, not of the pool that holds the container.

pub mod direct;
mod docker_exec;
mod shim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::RuntimeError;

pub use docker_exec::DockerExecConn;
pub use shim::ShimConn;

/// How long a fresh shim container may take to greet us before it is given up on.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a workdir reset may take before the container is considered wedged.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a health probe (ping, then `health_cmd`) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an adopted container's shim may take to answer its first ping.
pub const ADOPT_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// One task, as the container will run it.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// The command and its arguments, run without a shell.
    pub argv: Vec<String>,
    /// Added to the container's environment.
    pub env: BTreeMap<String, String>,
    /// Absolute path the task starts in.
    pub workdir: String,
    /// Fed to the task's stdin, then closed.
    pub stdin: Bytes,
    /// The task is killed (its whole process group) after this.
    pub timeout: Duration,
    /// Per stream; the rest is drained and dropped.
    pub max_output: u64,
    /// Directories whose contents the shim wipes before it starts the task (the previous pool
    /// task's files), in the same frame as the task: no round trip of its own. A failed wipe
    /// fails the task with [`ExecError::Dead`] (the container must be replaced). `docker-exec`
    /// ignores it, as it ignores [`Conn::reset`].
    pub reset: Vec<String>,
    /// Fired by the caller to end the task before its timeout, for a limit other than time
    /// (a persistent workspace over `workspace_max_size`). The shim kills the task's process
    /// group with SIGKILL and reports the exit as usual (`signal: 9`). `docker-exec` cannot
    /// kill an exec (the Engine API has no call for it): it stops waiting and answers
    /// `signal: 9`, and the caller must remove the container to end the process.
    pub stop: Option<CancellationToken>,
}

/// Output as it comes.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// A chunk of the task's stdout.
    Stdout(Bytes),
    /// A chunk of the task's stderr.
    Stderr(Bytes),
}

/// How a task ended, when it ran at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskExit {
    /// The exit code; `None` when killed by a signal (shim) or never known.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Stdout went over `max_output`; the rest was dropped.
    pub stdout_truncated: bool,
    /// Stderr went over `max_output`; the rest was dropped.
    pub stderr_truncated: bool,
    /// The command could not be started (no such file, permission denied).
    pub spawn_error: Option<String>,
    /// The kernel's OOM killer killed a process of the task's container while it ran (the
    /// container's memory cgroup counted an OOM kill: see [`crate::runtime::oom_kills`]).
    pub oom_killed: bool,
}

/// Why a task could not be run to its end. Each of these retires the container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("the container's agent stopped answering ({0}); the container is being replaced")]
    /// The channel to the container broke (or a wipe failed): why.
    Dead(String),
    /// The task outlived its timeout by this backstop without the container reporting it.
    #[error("the task did not end {0:?} after its timeout; the container is being replaced")]
    Hung(Duration),
    /// The engine refused an operation (docker-exec); not the container's fault.
    #[error("container engine error: {0}")]
    Engine(String),
}

impl From<RuntimeError> for ExecError {
    fn from(e: RuntimeError) -> Self {
        ExecError::Engine(e.to_string())
    }
}

/// How long past its own timeout a task may take before the daemon stops waiting for the
/// container to report it: the shim kills at the deadline, so this only covers a wedged shim.
const BACKSTOP: Duration = Duration::from_secs(5);

/// The daemon's end of one container's task channel.
#[derive(Clone)]
pub enum Conn {
    /// Frames on the container's attached stream, to its shim.
    Shim(Arc<ShimConn>),
    /// One `docker exec` per task.
    DockerExec(DockerExecConn),
}

impl Conn {
    /// Runs one task, sending its output to `out` as it comes. A closed `out` (the client went
    /// away) does not stop the task: the lease decides what happens to the container.
    pub async fn run(
        &self,
        task: &TaskSpec,
        out: &mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskExit, ExecError> {
        match self {
            Conn::Shim(c) => c.run(task, out).await,
            Conn::DockerExec(c) => c.run(task, out).await,
        }
    }

    /// The health probe: a round trip to the in-container agent, or `cmd` where configured.
    pub async fn probe(&self, cmd: Option<&[String]>, timeout: Duration) -> Result<(), String> {
        if let Conn::Shim(c) = self {
            c.ping(timeout).await.map_err(|e| e.to_string())?;
        }
        let cmd: Vec<String> = match (cmd, self) {
            (Some(cmd), _) => cmd.to_vec(),
            (None, Conn::Shim(_)) => return Ok(()),
            // Without a shim, a trivial exec proves the container can still run processes.
            (None, Conn::DockerExec(_)) => vec!["true".into()],
        };
        let task = TaskSpec {
            argv: cmd,
            workdir: "/".into(),
            timeout,
            max_output: 4096,
            ..Default::default()
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        match tokio::time::timeout(timeout + BACKSTOP, self.run(&task, &tx)).await {
            Err(_) => Err(format!("health probe did not answer within {timeout:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(exit)) if exit.exit_code == Some(0) => Ok(()),
            Ok(Ok(exit)) => Err(format!(
                "health_cmd failed: exit code {:?}, signal {:?}{}",
                exit.exit_code,
                exit.signal,
                exit.spawn_error
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// Wipes the given directories' contents between pool tasks. Only the shim can do it
    /// cheaply; `docker-exec` pools rely on `max_uses` for hygiene.
    pub async fn reset(&self, paths: &[String], timeout: Duration) -> Result<(), ExecError> {
        match self {
            Conn::Shim(c) => c.reset(paths, timeout).await,
            Conn::DockerExec(_) => Ok(()),
        }
    }

    /// Set once the channel is known to be broken; such a container is never handed out.
    pub fn is_dead(&self) -> bool {
        match self {
            Conn::Shim(c) => c.is_dead(),
            Conn::DockerExec(_) => false,
        }
    }
}
