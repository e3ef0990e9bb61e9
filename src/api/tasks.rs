//! `POST /v1/pools/{pool}/tasks`: one task, answered whole as JSON or streamed as NDJSON.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{parse_body, ApiError, AppState, Path, Query};
use crate::exec::TaskEvent;
use crate::session::SessionError;
use crate::supervisor::{SubmitError, TaskReport, TaskRequest};

/// The task request body. Unknown fields are refused so a typo is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// The argv, run without a shell; exactly one of `cmd` and `shell`.
    pub cmd: Option<Vec<String>>,
    /// One string for `/bin/sh -c`.
    pub shell: Option<String>,
    /// Added to the pool's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute; the pool's `workdir` when absent.
    pub workdir: Option<String>,
    /// Text stdin; at most one of `stdin` and `stdin_base64`.
    pub stdin: Option<String>,
    /// Binary-safe stdin, for input that is not UTF-8.
    pub stdin_base64: Option<String>,
    /// A humantime duration (`"30s"`, `"2m"`), capped by the pool's `task_timeout`.
    pub timeout: Option<String>,
    /// Run in this session's container instead of any warm one.
    pub session: Option<String>,
}

impl TaskBody {
    /// The task to run and the session it names, if any. Errors: 400 `invalid_request` for
    /// both or neither of `cmd`/`shell`, both stdins, bad base64, or a timeout that is not
    /// a duration.
    pub fn into_request(self) -> Result<(TaskRequest, Option<String>), ApiError> {
        let session = self.session.clone();
        self.into_task().map(|t| (t, session))
    }

    fn into_task(self) -> Result<TaskRequest, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
        let argv = match (self.cmd, self.shell) {
            (Some(cmd), None) => cmd,
            (None, Some(shell)) => vec!["/bin/sh".into(), "-c".into(), shell],
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give either cmd (an argv array) or shell (one string for /bin/sh -c), not both"
                        .into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "missing command: give cmd (an argv array, e.g. [\"echo\", \"hi\"]) or shell (e.g. \"echo hi\")"
                        .into(),
                ))
            }
        };
        let stdin = match (self.stdin, self.stdin_base64) {
            (Some(_), Some(_)) => return Err(bad("give stdin or stdin_base64, not both".into())),
            (Some(s), None) => Bytes::from(s),
            (None, Some(b)) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| bad(format!("stdin_base64 is not valid base64: {e}")))?,
            ),
            (None, None) => Bytes::new(),
        };
        let timeout = self
            .timeout
            .map(|t| {
                humantime::parse_duration(&t).map_err(|e| {
                    bad(format!(
                        "timeout {t:?} is not a duration ({e}); write e.g. \"30s\" or \"2m\""
                    ))
                })
            })
            .transpose()?;
        Ok(TaskRequest {
            argv,
            env: self.env,
            workdir: self.workdir,
            stdin,
            timeout,
        })
    }
}

/// `?stream=true` asks for NDJSON as the task runs.
#[derive(Deserialize)]
pub(super) struct TaskQuery {
    #[serde(default)]
    stream: bool,
}

/// Output as JSON: a string when it is UTF-8, base64 (flagged) when it is not.
fn encode_output(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            true,
        ),
    }
}

fn report_json(report: &TaskReport) -> serde_json::Map<String, Value> {
    let exit = &report.exit;
    let mut m = serde_json::Map::new();
    m.insert("task_id".into(), json!(report.task_id));
    m.insert("pool".into(), json!(report.pool));
    m.insert(
        "container".into(),
        json!(report.container.chars().take(12).collect::<String>()),
    );
    m.insert("exit_code".into(), json!(exit.exit_code));
    m.insert("signal".into(), json!(exit.signal));
    m.insert("stdout_truncated".into(), json!(exit.stdout_truncated));
    m.insert("stderr_truncated".into(), json!(exit.stderr_truncated));
    m.insert("timed_out".into(), json!(exit.timed_out));
    m.insert("oom_killed".into(), json!(exit.oom_killed));
    if let Some(e) = &exit.spawn_error {
        m.insert("error".into(), json!(e));
    }
    m.insert("queued_ms".into(), json!(ms(report.queued)));
    m.insert("run_ms".into(), json!(ms(report.run)));
    m.insert("cold_start".into(), json!(report.cold_start));
    m
}

/// Milliseconds with microsecond precision, as the report's `queued_ms` and `run_ms`.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `POST /v1/pools/{pool}/tasks[?stream=true]`: 200 with the report (stdout and stderr
/// inside), or NDJSON output lines then an `exit` line. 503 `starting` before start-up is
/// over; otherwise the errors of [`TaskBody::into_request`] and the task's own.
pub(super) async fn submit_task(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    Query(query): Query<TaskQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if state.supervisor.pool(&pool).is_none() {
        if !state.supervisor.is_started() {
            // Pools appear once start-up is over (it waits for the engine): not a 404 yet.
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the daemon is still starting (waiting for the container engine or warming pools); retry shortly",
            )
            .retry_after(2));
        }
        return Err(SubmitError::UnknownPool(pool).into());
    }
    let (request, session) = parse_body::<TaskBody>(body)?.into_request()?;
    if let Some(id) = &session {
        let s = state
            .supervisor
            .sessions
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.clone()))?;
        if s.pool != pool {
            return Err(SessionError::PoolMismatch {
                id: id.clone(),
                existing: s.pool.clone(),
                asked: pool,
            }
            .into());
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let sup = state.supervisor.clone();
    // The task runs to its end (or timeout) even if the client goes away, so its container
    // comes back clean instead of being retired mid-task.
    tokio::spawn(async move {
        let result = match session {
            Some(id) => sup
                .session_task(&pool, &id, request, tx)
                .await
                .map_err(ApiError::from),
            None => sup.submit(&pool, request, tx).await.map_err(ApiError::from),
        };
        let _ = done_tx.send(result);
    });
    if !query.stream {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                TaskEvent::Stdout(b) => stdout.extend_from_slice(&b),
                TaskEvent::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        let report = done_rx.await.map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the task's worker ended without an answer",
            )
        })??;
        let mut m = report_json(&report);
        for (name, bytes) in [("stdout", &stdout), ("stderr", &stderr)] {
            let (text, b64) = encode_output(bytes);
            m.insert(name.into(), json!(text));
            if b64 {
                m.insert(format!("{name}_encoding"), json!("base64"));
            }
        }
        return Ok(Json(Value::Object(m)).into_response());
    }
    // Streaming: hold the answer until the task either produced output or ended, so a
    // refused task still gets its proper status code.
    let first = tokio::select! {
        ev = rx.recv() => ev,
    };
    let mut done_rx = done_rx;
    if first.is_none() {
        // Channel closed without output: the task ended (or failed) already.
        let result = (&mut done_rx).await.map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the task's worker ended without an answer",
            )
        })?;
        let report = result?;
        let line = json!({"exit": Value::Object(report_json(&report))}).to_string() + "\n";
        return Ok(ndjson(Body::from(line)));
    }
    let stream = async_stream(first, rx, done_rx);
    Ok(ndjson(Body::from_stream(stream)))
}

fn ndjson(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .expect("static response parts")
}

fn event_line(ev: TaskEvent) -> Bytes {
    let (key, bytes) = match ev {
        TaskEvent::Stdout(b) => ("stdout", b),
        TaskEvent::Stderr(b) => ("stderr", b),
    };
    let (text, b64) = encode_output(&bytes);
    let v = if b64 {
        json!({key: text, "encoding": "base64"})
    } else {
        json!({key: text})
    };
    Bytes::from(v.to_string() + "\n")
}

/// The NDJSON body: output events as they come, then one `exit` (or `error`) line.
fn async_stream(
    first: Option<TaskEvent>,
    rx: mpsc::UnboundedReceiver<TaskEvent>,
    done: oneshot::Receiver<Result<TaskReport, ApiError>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    use futures_util::StreamExt;
    let head = futures_util::stream::iter(first.map(event_line));
    let body = tokio_stream_from(rx).map(event_line);
    let tail = futures_util::stream::once(async move {
        match done.await {
            Ok(Ok(report)) => json!({"exit": Value::Object(report_json(&report))}).to_string() + "\n",
            Ok(Err(e)) => {
                json!({"error": {"code": e.code, "message": e.message}}).to_string() + "\n"
            }
            Err(_) => json!({"error": {"code": "internal", "message": "the task's worker ended without an answer"}}).to_string() + "\n",
        }
    })
    .map(Bytes::from);
    head.chain(body).chain(tail).map(Ok)
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<TaskEvent>,
) -> impl futures_util::Stream<Item = TaskEvent> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_body_needs_exactly_one_of_cmd_and_shell() {
        let both: TaskBody = serde_json::from_str(r#"{"cmd": ["true"], "shell": "true"}"#).unwrap();
        assert_eq!(both.into_request().unwrap_err().code, "invalid_request");
        let none: TaskBody = serde_json::from_str(r#"{}"#).unwrap();
        assert!(none
            .into_request()
            .unwrap_err()
            .message
            .contains("missing command"));
        let shell: TaskBody = serde_json::from_str(r#"{"shell": "echo hi"}"#).unwrap();
        assert_eq!(
            shell.into_request().unwrap().0.argv,
            ["/bin/sh", "-c", "echo hi"]
        );
    }

    #[test]
    fn unknown_fields_and_bad_timeouts_are_refused() {
        assert!(serde_json::from_str::<TaskBody>(r#"{"cmd": ["true"], "tiemout": "1s"}"#).is_err());
        let t: TaskBody = serde_json::from_str(r#"{"cmd": ["true"], "timeout": "soon"}"#).unwrap();
        assert!(t.into_request().unwrap_err().message.contains("\"30s\""));
    }

    #[test]
    fn non_utf8_output_is_base64() {
        assert_eq!(encode_output(b"hi"), ("hi".to_string(), false));
        assert_eq!(encode_output(&[0xff]), ("/w==".to_string(), true));
    }
}
