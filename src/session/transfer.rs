//! File transfer in and out of a session's container, streamed: the request body goes to the
//! shim's file command's stdin and its stdout comes back as the response body, chunk by
//! chunk (the engine's exec stream, at most 64 KiB a chunk), so the daemon never holds a
//! whole file. The command runs through an engine exec of the shim binary that every shim
//! container has bind-mounted (the shim's own channel carries a task's stdin in one frame),
//! while the session is held: its tasks wait until the transfer is over.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::runtime::{ExecChunk, ExecSpec, Runtime, RuntimeError};

/// How much of a file command's stderr is kept for its error message.
const STDERR_KEPT: usize = 16 * 1024;
/// How long the engine may take to report the exit of an exec whose output has ended.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A session's container, held for one transfer: the session's tasks (and other transfers)
/// wait until this is dropped.
pub struct Hold {
    /// The container's id.
    pub container: String,
    /// Its pool runs the shim (`exec = "shim"`), whose file commands a transfer needs.
    pub shim: bool,
    pub(super) _release: oneshot::Sender<()>,
}

/// How a file command ended, when it did not succeed.
#[derive(Debug)]
pub struct Failed {
    /// The command's exit code; `None` when the engine never reported one.
    pub exit_code: Option<i64>,
    /// The start of its stderr: the shim's message.
    pub stderr: String,
}

/// Why a transfer did not complete.
#[derive(Debug)]
pub enum TransferError {
    /// The file command ran and failed.
    Failed(Failed),
    /// The upload was larger than allowed (bytes), counted as it streamed.
    TooLarge(u64),
    /// The upload's body broke off.
    Body(String),
    /// The engine refused or failed the exec.
    Engine(RuntimeError),
}

impl From<RuntimeError> for TransferError {
    fn from(e: RuntimeError) -> Self {
        TransferError::Engine(e)
    }
}

/// What a download gives: the command's stdout as it comes. Holds the session until the
/// stream ends or is dropped; a command that fails after its output began ends the stream
/// with an error (the client sees a cut-off body, never a short file taken for whole).
pub type Download = BoxStream<'static, Result<Bytes, std::io::Error>>;

fn exec_spec(argv: Vec<String>, with_stdin: bool) -> ExecSpec {
    ExecSpec {
        argv,
        env: Vec::new(),
        workdir: None,
        with_stdin,
    }
}

/// Polls the exec until the engine reports its exit code.
async fn exit_code(runtime: &Arc<dyn Runtime>, exec_id: &str) -> Option<i64> {
    let until = tokio::time::Instant::now() + EXIT_WAIT;
    loop {
        match runtime.exec_exit_code(exec_id).await {
            Ok(Some(code)) => return Some(code),
            Ok(None) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            _ => return None,
        }
    }
}

fn keep(stderr: &mut Vec<u8>, b: &[u8]) {
    let room = STDERR_KEPT.saturating_sub(stderr.len());
    stderr.extend_from_slice(&b[..b.len().min(room)]);
}

/// Runs `argv` in the held container with `body` streamed to its stdin, at most `max` bytes.
///
/// Returns the bytes sent. Errors: the command failed, the body broke off or was larger than
/// `max` (the command then gets what came before), or the engine failed.
pub async fn upload<E: Display>(
    runtime: &Arc<dyn Runtime>,
    hold: Hold,
    argv: Vec<String>,
    body: impl Stream<Item = Result<Bytes, E>> + Send,
    max: u64,
) -> Result<u64, TransferError> {
    let started = runtime
        .exec_start(&hold.container, &exec_spec(argv, true))
        .await?;
    let mut output = started.output;
    // Drained while the body streams in, so the command never blocks on a full pipe.
    let drain = tokio::spawn(async move {
        let mut stderr = Vec::new();
        while let Some(chunk) = output.next().await {
            if let Ok(ExecChunk::Stderr(b)) = chunk {
                keep(&mut stderr, &b);
            }
        }
        stderr
    });
    let mut stdin = started.stdin;
    let mut sent = 0u64;
    let mut problem = None;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                sent += b.len() as u64;
                if sent > max {
                    problem = Some(TransferError::TooLarge(max));
                    break;
                }
                if let Err(e) = stdin.write_all(&b).await {
                    problem = Some(TransferError::Engine(RuntimeError::Other(format!(
                        "writing to the file command failed: {e}"
                    ))));
                    break;
                }
            }
            Err(e) => {
                problem = Some(TransferError::Body(e.to_string()));
                break;
            }
        }
    }
    let _ = stdin.shutdown().await;
    drop(stdin);
    let stderr = drain.await.unwrap_or_default();
    let code = exit_code(runtime, &started.exec_id).await;
    drop(hold);
    if let Some(problem) = problem {
        return Err(problem);
    }
    match code {
        Some(0) => Ok(sent),
        exit_code => Err(TransferError::Failed(Failed {
            exit_code,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })),
    }
}

/// Runs `argv` in the held container and streams its stdout back. Waits for the first
/// output (or the end) before answering, so that a command that fails at once (no such
/// file) is an error rather than an empty body.
///
/// Errors: the command failed before any output, or the engine failed.
pub async fn download(
    runtime: &Arc<dyn Runtime>,
    hold: Hold,
    argv: Vec<String>,
) -> Result<Download, TransferError> {
    let started = runtime
        .exec_start(&hold.container, &exec_spec(argv, false))
        .await?;
    drop(started.stdin);
    let mut output = started.output;
    let mut stderr = Vec::new();
    let first = loop {
        match output.next().await {
            Some(Ok(ExecChunk::Stdout(b))) if !b.is_empty() => break Some(b),
            Some(Ok(ExecChunk::Stdout(_))) => {}
            Some(Ok(ExecChunk::Stderr(b))) => keep(&mut stderr, &b),
            Some(Err(e)) => return Err(e.into()),
            None => break None,
        }
    };
    let exec_id = started.exec_id;
    let Some(first) = first else {
        let code = exit_code(runtime, &exec_id).await;
        return match code {
            Some(0) => Ok(futures_util::stream::empty().boxed()),
            exit_code => Err(TransferError::Failed(Failed {
                exit_code,
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            })),
        };
    };
    let runtime = runtime.clone();
    let rest =
        futures_util::stream::unfold(Some((output, hold, runtime, exec_id)), |state| async move {
            let (mut output, hold, runtime, exec_id) = state?;
            loop {
                match output.next().await {
                    Some(Ok(ExecChunk::Stdout(b))) => {
                        return Some((Ok(b), Some((output, hold, runtime, exec_id))))
                    }
                    Some(Ok(ExecChunk::Stderr(_))) => {}
                    Some(Err(e)) => return Some((Err(std::io::Error::other(e.to_string())), None)),
                    None => {
                        let code = exit_code(&runtime, &exec_id).await;
                        drop(hold);
                        return match code {
                            Some(0) => None,
                            code => Some((
                                Err(std::io::Error::other(format!(
                                    "the file command failed after its output began (exit {code:?})"
                                ))),
                                None,
                            )),
                        };
                    }
                }
            }
        });
    Ok(futures_util::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed())
}
