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
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};

use super::{parse_body, ApiError, AppState, ErrorBody, ErrorCode, Path, Query};
use crate::exec::TaskEvent;
use crate::session::SessionError;
use crate::supervisor::{TaskReport, TaskRequest};

/// The task request body: exactly one of `cmd` and `shell`, at most one of `stdin` and
/// `stdin_base64`. Unknown fields are refused so a typo is not silently ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cmd": ["echo", "hello"], "env": {"K": "V"}, "timeout": "2s"}))]
pub struct TaskBody {
    /// The argv, run without a shell; exactly one of `cmd` and `shell`.
    pub cmd: Option<Vec<String>>,
    /// One string for `/bin/sh -c`.
    pub shell: Option<String>,
    /// Added to the pool's environment; keys may not be empty or contain `=`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute; the pool's `workdir` when absent.
    #[schema(pattern = "^/")]
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
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, m);
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

/// Adds to `TaskBody`'s schema the rules serde does not carry, so the document refuses what
/// the daemon refuses: exactly one of `cmd` (a non-empty argv) and `shell`, and `env` names
/// that are not empty and hold no `=`. (`stdin` and `stdin_base64` together are refused too;
/// the description says so.)
pub(super) fn task_body_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{
        AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
    };
    use utoipa::openapi::RefOr;
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(RefOr::T(Schema::Object(mut body))) = schemas.remove("TaskBody") else {
        panic!("TaskBody's schema is not an object");
    };
    if let Some(RefOr::T(Schema::Object(env))) = body.properties.get_mut("env") {
        env.property_names = Some(Box::new(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^=]+$"))
                .into(),
        ));
    }
    let description = body.description.take();
    // Present means not null: `{"cmd": [...], "shell": null}` is a command.
    let null = || ObjectBuilder::new().schema_type(Type::Null);
    let cmd = ObjectBuilder::new()
        .required("cmd")
        .property(
            "cmd",
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .min_items(Some(1)),
        )
        .property("shell", null());
    let shell = ObjectBuilder::new()
        .required("shell")
        .property("shell", ObjectBuilder::new().schema_type(Type::String))
        .property("cmd", null());
    let rules = AllOfBuilder::new()
        .item(body)
        .item(OneOfBuilder::new().item(cmd).item(shell))
        .description(description);
    schemas.insert("TaskBody".to_string(), rules.into());
}

/// `?stream=true` asks for NDJSON as the task runs.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TaskQuery {
    /// Answer `application/x-ndjson` lines while the task runs instead of one JSON object
    /// at its end.
    #[serde(default)]
    stream: bool,
}

/// How `stdout`/`stderr` text is encoded when it is not plain UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// The bytes were not UTF-8: the text is their standard base64.
    Base64,
}

/// How a task ended, without its output: the streamed `exit` line, and the fields of
/// [`TaskResult`] besides the output.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskReportBody {
    /// `t-<ulid>`, as in the daemon's logs.
    task_id: String,
    /// The pool that ran it.
    pool: String,
    /// The container's id, cut to 12 characters.
    container: String,
    /// `null` when killed by a signal or never started.
    exit_code: Option<i32>,
    /// The signal that ended it (9 after a timeout).
    signal: Option<i32>,
    /// Stdout went over the pool's `max_output`; the rest was dropped.
    stdout_truncated: bool,
    /// Stderr went over the pool's `max_output`; the rest was dropped.
    stderr_truncated: bool,
    /// Killed at its timeout; its container is replaced.
    timed_out: bool,
    /// The kernel's OOM killer killed a process of the task's container while it ran.
    oom_killed: bool,
    /// Only when the command could not be started (e.g. no such file).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// From arrival until the task held a container, in milliseconds (microsecond precision).
    queued_ms: f64,
    /// From spawn to exit, in milliseconds (microsecond precision).
    run_ms: f64,
    /// No warm container was idle: the task waited for one.
    cold_start: bool,
}

/// `POST /v1/pools/{pool}/tasks`'s answer: how the task ended and its output.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResult {
    #[serde(flatten)]
    report: TaskReportBody,
    /// Everything the task wrote to stdout (up to `max_output`).
    stdout: String,
    /// Present (`"base64"`) when stdout was not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout_encoding: Option<OutputEncoding>,
    /// Everything the task wrote to stderr (up to `max_output`).
    stderr: String,
    /// Present (`"base64"`) when stderr was not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr_encoding: Option<OutputEncoding>,
}

/// One line of the `?stream=true` answer: output as it comes, then one `exit` line (or an
/// `error` line when the task failed after output began).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskStreamEvent {
    /// A chunk of stdout.
    Stdout {
        stdout: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<OutputEncoding>,
    },
    /// A chunk of stderr.
    Stderr {
        stderr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<OutputEncoding>,
    },
    /// The last line: how the task ended.
    Exit { exit: TaskReportBody },
    /// The last line instead of `exit`: the task failed after its output began.
    Error(ErrorBody),
}

/// Output as JSON: a string when it is UTF-8, base64 (flagged) when it is not.
fn encode_output(bytes: &[u8]) -> (String, Option<OutputEncoding>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            Some(OutputEncoding::Base64),
        ),
    }
}

fn report_body(report: &TaskReport) -> TaskReportBody {
    let exit = &report.exit;
    TaskReportBody {
        task_id: report.task_id.clone(),
        pool: report.pool.clone(),
        container: report.container.chars().take(12).collect(),
        exit_code: exit.exit_code,
        signal: exit.signal,
        stdout_truncated: exit.stdout_truncated,
        stderr_truncated: exit.stderr_truncated,
        timed_out: exit.timed_out,
        oom_killed: exit.oom_killed,
        error: exit.spawn_error.clone(),
        queued_ms: ms(report.queued),
        run_ms: ms(report.run),
        cold_start: report.cold_start,
    }
}

/// One NDJSON line.
fn ndjson_line(event: &TaskStreamEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).expect("a stream event serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// Milliseconds with microsecond precision, as the report's `queued_ms` and `run_ms`.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `POST /v1/pools/{pool}/tasks[?stream=true]`: 200 with the report (stdout and stderr
/// inside), or NDJSON output lines then an `exit` line. 503 `starting` before start-up is
/// over; otherwise the errors of [`TaskBody::into_request`] and the task's own.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/tasks",
    tag = "tasks",
    summary = "Run one task",
    description = "Runs one task on a warm container of the pool and answers when it ends, or \
        with `?stream=true` streams NDJSON lines (`TaskStreamEvent`) while it runs. A task \
        refused before it starts gets its error status; a failure after output began ends \
        the stream with an `error` line.",
    params(
        ("pool" = String, Path, description = "The pool's name", example = "coder"),
        TaskQuery,
    ),
    request_body(content = TaskBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task ran (whatever its exit code)", content(
            (TaskResult = "application/json"),
            (TaskStreamEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "`invalid_json`, `invalid_request` or `bad_body`: the request is wrong; the message says how", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_pool` or `unknown_session`", body = ErrorBody),
        (status = 409, description = "`session_pool_mismatch`: the session is on another pool", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `server.max_request_body`", body = ErrorBody),
        (status = 429, description = "`queue_full`: the pool's queue is at `max_queue`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 500, description = "`internal`: a real internal fault", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died or hung during the task; it is being replaced", body = ErrorBody),
        (status = 503, description = "`no_container`, `pool_exhausted`, `engine_unavailable`, `shutting_down` or `starting`: no container can be had now", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "`workspace_full`: the session's persistent workspace is over its pool's `workspace_max_size`, or this task took it over and was killed", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn submit_task(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    Query(query): Query<TaskQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::find_pool(&state, &pool)?;
    let (request, session) = parse_body::<TaskBody>(body, "task request")?.into_request()?;
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
                ErrorCode::Internal,
                "the task's worker ended without an answer",
            )
        })??;
        let (stdout, stdout_encoding) = encode_output(&stdout);
        let (stderr, stderr_encoding) = encode_output(&stderr);
        let result = TaskResult {
            report: report_body(&report),
            stdout,
            stdout_encoding,
            stderr,
            stderr_encoding,
        };
        return Ok(Json(result).into_response());
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
                ErrorCode::Internal,
                "the task's worker ended without an answer",
            )
        })?;
        let report = result?;
        let line = ndjson_line(&TaskStreamEvent::Exit {
            exit: report_body(&report),
        });
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
    let (text, encoding) = encode_output(&bytes);
    ndjson_line(&match key {
        "stdout" => TaskStreamEvent::Stdout {
            stdout: text,
            encoding,
        },
        _ => TaskStreamEvent::Stderr {
            stderr: text,
            encoding,
        },
    })
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
        ndjson_line(&match done.await {
            Ok(Ok(report)) => TaskStreamEvent::Exit {
                exit: report_body(&report),
            },
            Ok(Err(e)) => TaskStreamEvent::Error(e.body()),
            Err(_) => TaskStreamEvent::Error(
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the task's worker ended without an answer",
                )
                .body(),
            ),
        })
    });
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
        assert_eq!(
            both.into_request().unwrap_err().code,
            ErrorCode::InvalidRequest
        );
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
        assert_eq!(encode_output(b"hi"), ("hi".to_string(), None));
        assert_eq!(
            encode_output(&[0xff]),
            ("/w==".to_string(), Some(OutputEncoding::Base64))
        );
    }
}
