//! The HTTP API: JSON in and out, errors as `{"error": {"code", "message"}}` with a fitting
//! status, a bounded body, and an optional bearer token on `/v1/*`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::exec::{ExecError, TaskEvent};
use crate::pool::AcquireError;
use crate::session::{SessionError, SessionInfo};
use crate::supervisor::{SubmitError, Supervisor, TaskReport, TaskRequest};

#[derive(Clone)]
pub struct AppState {
    pub supervisor: Arc<Supervisor>,
    /// When set, `/v1/*` needs `Authorization: Bearer <token>`; a reload re-reads it.
    pub token: Arc<parking_lot::RwLock<Option<Arc<String>>>>,
    /// The pools.toml a reload reads.
    pub config_path: Option<std::path::PathBuf>,
    /// The server settings in force, to tell what a reload cannot change.
    pub server: Arc<parking_lot::RwLock<crate::config::ServerConfig>>,
    /// `server.max_request_body`, which also bounds files read back.
    pub max_body: usize,
}

pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    let v1 = Router::new()
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{pool}", get(get_pool))
        .route("/v1/pools/{pool}/tasks", post(submit_task))
        .route("/v1/admin/reload", post(admin_reload))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(crate::files::get_file).put(crate::files::put_file),
        )
        .route(
            "/v1/sessions/{id}/archive/{*dir}",
            get(crate::files::get_archive).put(crate::files::put_archive),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(v1)
        .merge(crate::mcp::routes(&state))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the API table in the README",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let msg = e.to_string();
        match e {
            SubmitError::UnknownPool(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_pool", msg)
            }
            SubmitError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", msg)
            }
            SubmitError::Acquire(AcquireError::QueueFull { .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", msg).retry_after(1)
            }
            SubmitError::Acquire(AcquireError::Timeout { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_container", msg).retry_after(5)
            }
            SubmitError::Acquire(AcquireError::Exhausted { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "pool_exhausted", msg).retry_after(1)
            }
            SubmitError::Acquire(AcquireError::Closed(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg).retry_after(5)
            }
            SubmitError::EngineDown(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", msg)
                    .retry_after(5)
            }
            SubmitError::Exec(ExecError::Engine(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", msg)
                    .retry_after(5)
            }
            SubmitError::Exec(_) => ApiError::new(StatusCode::BAD_GATEWAY, "container_failed", msg),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let msg = e.to_string();
        match e {
            SessionError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_session", msg)
            }
            SessionError::PoolMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "session_pool_mismatch", msg)
            }
            SessionError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", msg)
            }
            SessionError::Submit(e) => e.into(),
        }
    }
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.token.read().clone() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is wrong").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this daemon requires \"Authorization: Bearer <token>\" (the token is in the file server.token_file names)",
        )
        .into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// and may be followed by more than one space (RFC 9110, 11.4).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Reads `server.token_file`: the token is its content, trimmed; an empty file is refused
/// so a daemon is never left open by mistake.
pub fn read_token(server: &crate::config::ServerConfig) -> Result<Option<Arc<String>>, String> {
    let Some(path) = &server.token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read server.token_file {}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!(
            "server.token_file {} is empty: put the token in it",
            path.display()
        ));
    }
    Ok(Some(Arc::new(t.to_string())))
}

/// Reloads pools.toml: validated first; a bad file changes nothing and its problems are
/// returned. Shared by SIGHUP and `POST /v1/admin/reload`.
pub async fn reload(state: &AppState) -> Result<crate::supervisor::ReloadSummary, String> {
    use crate::metrics::ReloadResult;
    let sup = &state.supervisor;
    let Some(path) = &state.config_path else {
        return Err("this daemon was not started from a file".into());
    };
    let result = async {
        let config = crate::config::Config::load(path).map_err(|e| e.to_string())?;
        let token = read_token(&config.server)?;
        {
            let old = state.server.read();
            if old.listen != config.server.listen || old.unix_socket != config.server.unix_socket {
                tracing::warn!("server.listen and server.unix_socket apply at the next restart");
            }
        }
        let summary = sup.reload(&config).await?;
        *state.token.write() = token;
        *state.server.write() = config.server.clone();
        Ok::<_, String>(summary)
    }
    .await;
    match &result {
        Ok(summary) => {
            sup.metrics.reloaded(ReloadResult::Ok);
            tracing::info!(?summary, "configuration reloaded");
        }
        Err(problems) => {
            sup.metrics.reloaded(ReloadResult::Error);
            tracing::error!("reload refused, the running configuration stays:\n{problems}");
        }
    }
    result
}

async fn admin_reload(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match reload(&state).await {
        Ok(summary) => Ok(Json(json!({"result": "ok", "changes": summary}))),
        Err(problems) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            format!("the new configuration was refused and the running one stays: {problems}"),
        )),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.supervisor.ready() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.supervisor.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct PoolStatus {
    name: String,
    image: String,
    exec: &'static str,
    live: usize,
    idle: usize,
    busy: usize,
    starting: usize,
    unhealthy: usize,
    retiring: usize,
    min: usize,
    max: usize,
    target: usize,
    utilization: f64,
    queue_length: usize,
}

fn pool_status(cfg: &crate::config::PoolConfig, c: &crate::pool::Counts) -> PoolStatus {
    PoolStatus {
        name: cfg.name.clone(),
        image: cfg.image.clone(),
        exec: match cfg.exec {
            crate::config::ExecMode::Shim => "shim",
            crate::config::ExecMode::DockerExec => "docker-exec",
        },
        live: c.live(),
        // a container whose health probe is in flight is idle, as on /metrics
        idle: c.idle + c.probing,
        busy: c.busy,
        starting: c.starting,
        unhealthy: c.unhealthy,
        retiring: c.retiring,
        min: cfg.min,
        max: cfg.max,
        target: c.target,
        utilization: (c.utilization() * 1000.0).round() / 1000.0,
        queue_length: c.queued,
    }
}

async fn list_pools(State(state): State<AppState>) -> Json<Value> {
    let pools: Vec<PoolStatus> = state
        .supervisor
        .status()
        .iter()
        .map(|(cfg, c)| pool_status(cfg, c))
        .collect();
    Json(json!({"pools": pools}))
}

async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    let pool = state
        .supervisor
        .pool(&name)
        .ok_or_else(|| SubmitError::UnknownPool(name.clone()))?;
    Ok(Json(pool_status(&pool.config(), &pool.counts())))
}

/// The task request body. Unknown fields are refused so a typo is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    pub cmd: Option<Vec<String>>,
    pub shell: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub stdin: Option<String>,
    /// Binary-safe stdin, for input that is not UTF-8.
    pub stdin_base64: Option<String>,
    pub timeout: Option<String>,
    pub session: Option<String>,
}

impl TaskBody {
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

/// A raw body, or the reason there is none as a clear 413 or 400.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than server.max_request_body",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })
}

/// Parses a JSON body, turning every way it can be wrong into a clear 400 or 413.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not a valid task request: {e}"),
        )
    })
}

#[derive(Deserialize)]
struct TaskQuery {
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
    if let Some(e) = &exit.spawn_error {
        m.insert("error".into(), json!(e));
    }
    m.insert("queued_ms".into(), json!(ms(report.queued)));
    m.insert("run_ms".into(), json!(ms(report.run)));
    m.insert("cold_start".into(), json!(report.cold_start));
    m
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn submit_task(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    pool: String,
    id: Option<String>,
    idle_timeout: Option<String>,
}

fn session_json(info: &SessionInfo) -> Value {
    json!({
        "id": info.id,
        "pool": info.pool,
        "state": info.state.as_str(),
        "container": info.container.as_ref().map(|c| c.chars().take(12).collect::<String>()),
        "tasks": info.tasks,
        "idle_seconds": (info.idle.as_secs_f64() * 10.0).round() / 10.0,
        "idle_timeout": humantime::format_duration(info.idle_timeout).to_string(),
        "busy": info.busy,
    })
}

async fn create_session(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: SessionBody = parse_body(body)?;
    let idle_timeout = body
        .idle_timeout
        .map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("idle_timeout {t:?} is not a duration ({e}); write e.g. \"5m\""),
                )
            })
        })
        .transpose()?;
    let (session, created) = state
        .supervisor
        .create_session(&body.pool, body.id, idle_timeout)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(session_json(&session.info()))).into_response())
}

async fn list_sessions(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .supervisor
        .sessions
        .list()
        .iter()
        .map(|s| session_json(&s.info()))
        .collect();
    Json(json!({ "sessions": list }))
}

async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .supervisor
        .sessions
        .get(&id)
        .ok_or(SessionError::NotFound(id))?;
    Ok(Json(session_json(&s.info())))
}

async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.supervisor.end_session(&id).await?;
    let mut v = session_json(&info);
    v["state"] = json!("ended");
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }

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
