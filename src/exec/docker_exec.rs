//! The `docker exec` transport: one engine exec per task, for images the shim cannot run in.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{ExecError, TaskEvent, TaskExit, TaskSpec};
use crate::runtime::{ExecChunk, ExecSpec, Runtime, RuntimeError};

/// Per-task `docker exec`. Completion is the exec's exit as the engine reports it, not EOF of
/// its output, which a background child holding stdout would keep open forever.
#[derive(Clone)]
pub struct DockerExecConn {
    /// The engine the execs run on.
    pub runtime: Arc<dyn Runtime>,
    /// The container's id.
    pub container: String,
}

/// How often a running exec's state is polled; an exec costs ~50 ms anyway.
const EXEC_POLL: Duration = Duration::from_millis(20);
/// After the exec ended, how long output already in flight may still arrive.
const EXEC_DRAIN: Duration = Duration::from_millis(100);

impl DockerExecConn {
    pub(super) async fn run(
        &self,
        task: &TaskSpec,
        out: &mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskExit, ExecError> {
        let spec = ExecSpec {
            argv: task.argv.clone(),
            env: task.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: Some(task.workdir.clone()),
            with_stdin: true,
        };
        let started = match self.runtime.exec_start(&self.container, &spec).await {
            Ok(started) => started,
            Err(e) => return Err(self.dead_or(e).await),
        };
        let stdin_data = task.stdin.clone();
        let mut stdin = started.stdin;
        tokio::spawn(async move {
            let _ = stdin.write_all(&stdin_data).await;
            let _ = stdin.shutdown().await;
        });
        let mut output = started.output;
        let mut caps = [
            OutputCap::new(task.max_output),
            OutputCap::new(task.max_output),
        ];
        let now = tokio::time::Instant::now();
        let deadline = now + task.timeout;
        // The first look is one period in: a task that ends sooner is noticed by its EOF.
        let mut poll = tokio::time::interval_at(now + EXEC_POLL, EXEC_POLL);
        let mut exit_code = None;
        let mut eof = false;
        let mut drain_until = None;
        let mut timed_out = false;
        let stopped = async {
            match &task.stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        // The start of stdout, where the engine reports a command it could not start.
        let mut head = Vec::new();
        loop {
            let drain_deadline = drain_until.unwrap_or(deadline);
            tokio::select! {
                chunk = output.next(), if !eof => match chunk {
                    Some(Ok(ExecChunk::Stdout(b))) => {
                        let room = EXEC_FAILED_HEAD.saturating_sub(head.len());
                        head.extend_from_slice(&b[..b.len().min(room)]);
                        caps[0].forward(b, out, TaskEvent::Stdout)
                    }
                    Some(Ok(ExecChunk::Stderr(b))) => caps[1].forward(b, out, TaskEvent::Stderr),
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        if exit_code.is_some() { break; }
                        // EOF before the exit is known: the output is complete and the exec
                        // has most likely ended, so ask now rather than at the next tick.
                        eof = true;
                        poll.reset_immediately();
                    }
                },
                _ = poll.tick(), if exit_code.is_none() => {
                    if let Some(code) = self.runtime.exec_exit_code(&started.exec_id).await? {
                        exit_code = Some(code);
                        if eof {
                            // All output is in already: nothing to drain.
                            break;
                        }
                        drain_until = Some(tokio::time::Instant::now() + EXEC_DRAIN);
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline) => {
                    if exit_code.is_none() { timed_out = true; }
                    break;
                }
                // The exec cannot be killed: the caller removes the container.
                () = &mut stopped, if exit_code.is_none() => break,
            }
        }
        // Killed with its container (`docker kill`, the engine's OOM kill of the init process):
        // the task did not end on its own, and the container must not serve again.
        if exit_code.is_some_and(|c| c > 128) && self.container_stopped().await {
            return Err(ExecError::Dead(
                "the container stopped while the task ran".to_string(),
            ));
        }
        // The Engine API cannot kill an exec: the caller retires a timed-out container (and
        // removing it kills the task with SIGKILL). Otherwise the engine gives an exit code
        // only: death by signal N and `exit 128+N` look the same, so no signal is invented.
        let (exit_code, signal) = match exit_code {
            Some(code) => (Some(code as i32), None),
            None => (None, Some(9)),
        };
        let spawn_error = exit_code.and_then(|code| exec_start_failure(code, &head));
        Ok(TaskExit {
            exit_code,
            signal,
            timed_out,
            stdout_truncated: caps[0].truncated,
            stderr_truncated: caps[1].truncated,
            spawn_error,
            oom_killed: false,
        })
    }
}

/// How much of an exec's stdout is kept to recognise the engine's own failure message.
const EXEC_FAILED_HEAD: usize = 1024;

/// When `docker exec` cannot start the command (no such file, permission denied), the engine
/// answers exit code 126 or 127 and writes its own message on the exec's stdout, where the
/// shim reports a spawn error instead. Recognising it makes a missing command an `error`
/// outcome in both exec modes, rather than a `nonzero_exit` in this one.
fn exec_start_failure(exit_code: i32, stdout_head: &[u8]) -> Option<String> {
    const MARK: &[u8] = b"OCI runtime exec failed";
    if !(exit_code == 126 || exit_code == 127) || !stdout_head.starts_with(MARK) {
        return None;
    }
    Some(String::from_utf8_lossy(stdout_head).trim_end().to_string())
}

impl DockerExecConn {
    /// Whether the container has stopped. The engine may report an exec killed with its
    /// container a moment before the container itself, so "running" is only believed once it
    /// is still the answer after [`EXEC_DRAIN`]. Only tasks that died by a signal ask. A
    /// container already gone has stopped too.
    async fn container_stopped(&self) -> bool {
        let until = tokio::time::Instant::now() + EXEC_DRAIN;
        loop {
            match self.runtime.is_running(&self.container).await {
                Ok(false) | Err(RuntimeError::NotFound(_)) => return true,
                Err(_) => return false,
                Ok(true) if tokio::time::Instant::now() >= until => return false,
                Ok(true) => tokio::time::sleep(EXEC_POLL).await,
            }
        }
    }

    /// An engine error of a task's exec, told apart from the container being gone: that one
    /// means the container must be replaced, not that the engine is unavailable.
    async fn dead_or(&self, e: RuntimeError) -> ExecError {
        match self.runtime.is_running(&self.container).await {
            Ok(false) | Err(RuntimeError::NotFound(_)) => {
                ExecError::Dead(format!("the container is not running ({e})"))
            }
            _ => e.into(),
        }
    }
}

/// Forwards output up to a cap, then drops the rest (still reading it, so the process is
/// never blocked on a full pipe) and remembers that it did.
struct OutputCap {
    left: u64,
    truncated: bool,
}

impl OutputCap {
    fn new(max: u64) -> Self {
        OutputCap {
            left: max,
            truncated: false,
        }
    }

    fn forward(
        &mut self,
        mut bytes: Bytes,
        out: &mpsc::UnboundedSender<TaskEvent>,
        wrap: fn(Bytes) -> TaskEvent,
    ) {
        if bytes.len() as u64 > self.left {
            bytes.truncate(self.left as usize);
            self.truncated = true;
        }
        self.left -= bytes.len() as u64;
        if !bytes.is_empty() {
            let _ = out.send(wrap(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exec_start_failure;

    #[test]
    fn the_engines_exec_failure_is_a_spawn_error() {
        let msg = b"OCI runtime exec failed: exec failed: unable to start container process: exec: \"/no/such\": stat /no/such: no such file or directory: unknown\r\n";
        let e = exec_start_failure(126, msg).expect("recognised");
        assert!(e.ends_with("no such file or directory: unknown"), "{e}");
        assert!(exec_start_failure(127, msg).is_some());
        // a command that ran and exited 126 itself, or printed the words later, is not
        assert_eq!(exec_start_failure(126, b""), None);
        assert_eq!(exec_start_failure(1, msg), None);
        assert_eq!(
            exec_start_failure(126, b"hello OCI runtime exec failed"),
            None
        );
    }
}
