//! How a task runs inside a container: through the in-container shim over one attached
//! stream (about a millisecond), or through a per-task `docker exec` (about 50 ms) for images
//! where the shim cannot run. Both sit behind [`Conn`], so the pool does not care which.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{Attached, ExecChunk, ExecSpec, Runtime, RuntimeError};
use crate::shim_proto::{Event, Request, Spawn};

/// One task, as the container will run it.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub stdin: Bytes,
    pub timeout: Duration,
    /// Per stream; the rest is drained and dropped.
    pub max_output: u64,
    /// Directories whose contents the shim wipes before it starts the task (the previous pool
    /// task's files), in the same frame as the task: no round trip of its own. A failed wipe
    /// fails the task with [`ExecError::Dead`] (the container must be replaced). `docker-exec`
    /// ignores it, as it ignores [`Conn::reset`].
    pub reset: Vec<String>,
}

/// Output as it comes.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// How a task ended, when it ran at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The command could not be started (no such file, permission denied).
    pub spawn_error: Option<String>,
}

/// Why a task could not be run to its end. Each of these retires the container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("the container's agent stopped answering ({0}); the container is being replaced")]
    Dead(String),
    #[error("the task did not end {0:?} after its timeout; the container is being replaced")]
    Hung(Duration),
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
    Shim(Arc<ShimConn>),
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
            Conn::Shim(c) => c.dead.load(Ordering::Acquire),
            Conn::DockerExec(_) => false,
        }
    }
}

/// What the reader task routes incoming shim events to.
#[derive(Default)]
struct Routes {
    task: Option<(u64, mpsc::UnboundedSender<Event>)>,
    pongs: HashMap<u64, oneshot::Sender<bool>>,
    reset: Option<oneshot::Sender<Option<String>>>,
    hello: Option<oneshot::Sender<u32>>,
}

/// A container's shim, attached once; tasks are frames on that one stream.
pub struct ShimConn {
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    routes: Arc<Mutex<Routes>>,
    dead: Arc<AtomicBool>,
    death: Arc<Mutex<Option<String>>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for ShimConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ShimConn {
    /// Takes over an attached stream and, when `wait_hello` is set (a fresh container),
    /// waits for the shim's greeting; an adopted container is checked by a ping instead.
    pub async fn connect(
        attached: Attached,
        wait_hello: Option<Duration>,
    ) -> Result<Arc<ShimConn>, ExecError> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let dead = Arc::new(AtomicBool::new(false));
        let death = Arc::new(Mutex::new(None));
        let (hello_tx, hello_rx) = oneshot::channel();
        routes.lock().hello = Some(hello_tx);
        let reader = tokio::spawn(read_events(
            attached.stdout,
            routes.clone(),
            dead.clone(),
            death.clone(),
        ));
        let conn = Arc::new(ShimConn {
            stdin: tokio::sync::Mutex::new(attached.stdin),
            routes,
            dead,
            death,
            next_id: AtomicU64::new(1),
            reader,
        });
        if let Some(limit) = wait_hello {
            match tokio::time::timeout(limit, hello_rx).await {
                Ok(Ok(version)) if version == crate::shim_proto::PROTOCOL_VERSION => {}
                Ok(Ok(version)) => {
                    return Err(ExecError::Dead(format!(
                        "shim speaks protocol {version}, this daemon {}",
                        crate::shim_proto::PROTOCOL_VERSION
                    )))
                }
                Ok(Err(_)) => return Err(ExecError::Dead(conn.death_reason())),
                Err(_) => {
                    return Err(ExecError::Dead(format!(
                        "no greeting from the shim within {limit:?}"
                    )))
                }
            }
        }
        Ok(conn)
    }

    fn death_reason(&self) -> String {
        self.death
            .lock()
            .clone()
            .unwrap_or_else(|| "stream closed".into())
    }

    async fn send(&self, request: &Request) -> Result<(), ExecError> {
        let mut frame = Vec::new();
        request.encode(&mut frame);
        let mut stdin = self.stdin.lock().await;
        let write = async {
            stdin.write_all(&frame).await?;
            stdin.flush().await
        };
        write.await.map_err(|e| {
            self.dead.store(true, Ordering::Release);
            ExecError::Dead(format!("writing to the shim failed: {e}"))
        })
    }

    async fn run(
        &self,
        task: &TaskSpec,
        out: &mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskExit, ExecError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(ExecError::Dead(self.death_reason()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.routes.lock().task = Some((id, tx));
        let spawn = Request::Spawn(Spawn {
            id,
            argv: task.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: task
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            workdir: task.workdir.as_bytes().to_vec(),
            stdin: task.stdin.to_vec(),
            timeout_ms: task.timeout.as_millis().min(u64::MAX as u128) as u64,
            max_output: task.max_output,
            reset: task.reset.iter().map(|p| p.as_bytes().to_vec()).collect(),
        });
        self.send(&spawn).await?;
        // The shim's clock for the task starts after the wipe.
        let wipe = if task.reset.is_empty() {
            Duration::ZERO
        } else {
            crate::pool::RESET_TIMEOUT
        };
        let deadline = tokio::time::Instant::now() + wipe + task.timeout + BACKSTOP;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    let _ = self.send(&Request::Kill { id }).await;
                    self.routes.lock().task = None;
                    return Err(ExecError::Hung(BACKSTOP));
                }
                Ok(None) => return Err(ExecError::Dead(self.death_reason())),
                Ok(Some(Event::Stdout { data, .. })) => {
                    let _ = out.send(TaskEvent::Stdout(Bytes::from(data)));
                }
                Ok(Some(Event::Stderr { data, .. })) => {
                    let _ = out.send(TaskEvent::Stderr(Bytes::from(data)));
                }
                Ok(Some(Event::Exit(exit))) => {
                    self.routes.lock().task = None;
                    if let Some(error) = exit.reset_error {
                        return Err(ExecError::Dead(format!("workdir reset failed: {error}")));
                    }
                    return Ok(TaskExit {
                        exit_code: exit.code,
                        signal: exit.signal,
                        timed_out: exit.timed_out,
                        stdout_truncated: exit.stdout_truncated,
                        stderr_truncated: exit.stderr_truncated,
                        spawn_error: exit.spawn_error,
                    });
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// A round trip to the shim; answers `busy` too, which adoption uses.
    pub async fn ping(&self, timeout: Duration) -> Result<bool, ExecError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(ExecError::Dead(self.death_reason()));
        }
        let nonce = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.routes.lock().pongs.insert(nonce, tx);
        self.send(&Request::Ping { nonce }).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(busy)) => Ok(busy),
            Ok(Err(_)) => Err(ExecError::Dead(self.death_reason())),
            Err(_) => {
                self.routes.lock().pongs.remove(&nonce);
                Err(ExecError::Dead(format!(
                    "no answer to a ping within {timeout:?}"
                )))
            }
        }
    }

    async fn reset(&self, paths: &[String], timeout: Duration) -> Result<(), ExecError> {
        let (tx, rx) = oneshot::channel();
        self.routes.lock().reset = Some(tx);
        self.send(&Request::Reset {
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
        })
        .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(error))) => Err(ExecError::Dead(format!("workdir reset failed: {error}"))),
            Ok(Err(_)) => Err(ExecError::Dead(self.death_reason())),
            Err(_) => Err(ExecError::Hung(timeout)),
        }
    }
}

/// Decodes shim events off the attached stdout and routes them. When the stream ends (the
/// shim or its container died), every waiter sees its channel close.
async fn read_events(
    mut stdout: Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    routes: Arc<Mutex<Routes>>,
    dead: Arc<AtomicBool>,
    death: Arc<Mutex<Option<String>>>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = 'outer: loop {
        loop {
            match Event::decode(&buf) {
                Ok(Some((event, used))) => {
                    let _ = buf.split_to(used);
                    route(&routes, event);
                }
                Ok(None) => break,
                Err(e) => break 'outer format!("bad frame from the shim: {e}"),
            }
        }
        match stdout.read_buf(&mut buf).await {
            Ok(0) => break "the container's output stream closed (the shim exited)".to_string(),
            Ok(_) => {}
            Err(e) => break format!("reading from the shim failed: {e}"),
        }
    };
    *death.lock() = Some(reason);
    dead.store(true, Ordering::Release);
    // Dropping the senders wakes every waiter with a closed channel.
    *routes.lock() = Routes::default();
}

fn route(routes: &Mutex<Routes>, event: Event) {
    let mut r = routes.lock();
    match event {
        Event::Hello { version } => {
            if let Some(tx) = r.hello.take() {
                let _ = tx.send(version);
            }
        }
        Event::Pong { nonce, busy } => {
            if let Some(tx) = r.pongs.remove(&nonce) {
                let _ = tx.send(busy);
            }
        }
        Event::ResetDone { error } => {
            if let Some(tx) = r.reset.take() {
                let _ = tx.send(error);
            }
        }
        event @ (Event::Stdout { .. } | Event::Stderr { .. } | Event::Exit(_)) => {
            let id = match &event {
                Event::Stdout { id, .. } | Event::Stderr { id, .. } => *id,
                Event::Exit(e) => e.id,
                _ => unreachable!(),
            };
            if let Some((current, tx)) = &r.task {
                if *current == id {
                    let _ = tx.send(event);
                }
            }
        }
    }
}

/// Per-task `docker exec`. Completion is the exec's exit as the engine reports it, not EOF of
/// its output, which a background child holding stdout would keep open forever.
#[derive(Clone)]
pub struct DockerExecConn {
    pub runtime: Arc<dyn Runtime>,
    pub container: String,
}

/// How often a running exec's state is polled; an exec costs ~50 ms anyway.
const EXEC_POLL: Duration = Duration::from_millis(20);
/// After the exec ended, how long output already in flight may still arrive.
const EXEC_DRAIN: Duration = Duration::from_millis(100);

impl DockerExecConn {
    async fn run(
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
            }
        }
        // Killed with its container (`docker kill`, the engine's OOM kill of the init process):
        // the task did not end on its own, and the container must not serve again.
        if exit_code.is_some_and(|c| c > 128) && self.container_stopped().await {
            return Err(ExecError::Dead(
                "the container stopped while the task ran".to_string(),
            ));
        }
        // The Engine API cannot kill an exec: the caller retires a timed-out container.
        let (exit_code, signal) = match exit_code {
            // The engine reports death by signal N as 128 + N.
            Some(code) if code > 128 && code < 160 => (Some(code as i32), Some(code as i32 - 128)),
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
    /// is still the answer after [`EXEC_DRAIN`]. Only tasks that died by a signal ask.
    async fn container_stopped(&self) -> bool {
        let until = tokio::time::Instant::now() + EXEC_DRAIN;
        loop {
            match self.runtime.is_running(&self.container).await {
                Ok(false) => return true,
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
