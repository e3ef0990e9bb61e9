//! The shim transport: one stream per container (the attached stdio, or the direct socket of
//! `direct.rs`), tasks as frames on it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{ExecError, TaskEvent, TaskExit, TaskSpec, BACKSTOP, RESET_TIMEOUT};
use crate::runtime::Attached;
use crate::shim_proto::{Event, Request, Spawn};

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
    /// The direct transport's host directory, removed with the last handle on the connection.
    _socket_dir: Option<super::direct::SocketDir>,
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
        Self::connect_with(attached, wait_hello, None).await
    }

    /// [`ShimConn::connect`], keeping `socket_dir` (the direct transport's) as long as the
    /// connection lives.
    pub(super) async fn connect_with(
        attached: Attached,
        wait_hello: Option<Duration>,
        socket_dir: Option<super::direct::SocketDir>,
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
            _socket_dir: socket_dir,
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

    /// Set once the stream is known to be broken.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
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

    pub(super) async fn run(
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
            // Rounded up: a fraction of a millisecond must not become 0, "no limit".
            timeout_ms: task
                .timeout
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u64::MAX as u128) as u64,
            max_output: task.max_output,
            reset: task.reset.iter().map(|p| p.as_bytes().to_vec()).collect(),
        });
        self.send(&spawn).await?;
        // The shim's clock for the task starts after the wipe.
        let wipe = if task.reset.is_empty() {
            Duration::ZERO
        } else {
            RESET_TIMEOUT
        };
        let deadline = tokio::time::Instant::now() + wipe + task.timeout + BACKSTOP;
        // Never fires when the caller set no stop; fires once otherwise (then the shim's
        // exit report ends the loop as for any other end).
        let stopped = async {
            match &task.stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        let mut kill_sent = false;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, rx.recv()) => next,
                () = &mut stopped, if !kill_sent => {
                    kill_sent = true;
                    self.send(&Request::Kill { id }).await?;
                    continue;
                }
            };
            match next {
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
                        oom_killed: false,
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

    pub(super) async fn reset(&self, paths: &[String], timeout: Duration) -> Result<(), ExecError> {
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
            Ok(0) => {
                break "the shim's stream closed (the shim or its container exited)".to_string()
            }
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
