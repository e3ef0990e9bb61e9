//! `/v1/sessions`: create, list, show and end sessions. Their tasks go through `tasks.rs`,
//! their files through `files.rs`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{parse_body, ApiError, AppState, ErrorBody, ErrorCode, Path};
use crate::session::{SessionError, SessionInfo, SessionState};

/// `POST /v1/sessions`'s body; unknown fields are refused so a typo is not ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"pool": "coder", "id": "acme-website-john", "idle_timeout": "5m"}))]
pub(super) struct SessionBody {
    /// The pool its container will come from.
    pool: String,
    /// `[A-Za-z0-9][A-Za-z0-9_.-]*`, up to 64 characters; `s-<ulid>` when absent.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    id: Option<String>,
    /// A duration (`"5m"`): it ends after this long idle; the daemon's default when absent.
    idle_timeout: Option<String>,
    /// Claim the container now instead of on the first task.
    #[serde(default)]
    warm: bool,
    /// The session's own memory: a size string (`"2GiB"`) or a whole number of bytes; the
    /// pool's when absent.
    #[schema(schema_with = memory_schema)]
    memory: Option<Value>,
    /// The session's own CPUs; the pool's when absent.
    cpus: Option<f64>,
    /// The session's own pids limit; the pool's when absent.
    pids_limit: Option<i64>,
    /// Tasks of the session that may run at once, at most the pool's; the pool's when absent.
    #[schema(minimum = 0)]
    max_concurrent_tasks: Option<usize>,
}

/// `memory`'s schema: a size string, a whole number of bytes, or null.
fn memory_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .examples(["2GiB"]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0.0)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "A size string (\"2GiB\") or a whole number of bytes; the pool's when absent",
        ))
        .build()
        .into()
}

/// `memory` as a size string or a number of bytes.
fn memory_of(v: Option<Value>) -> Result<Option<u64>, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, m);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => crate::config::parse_size(&s).map(Some).map_err(|e| {
            invalid(format!(
                "memory ({s:?}) is not a size ({e}): write one such as \"2GiB\""
            ))
        }),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            invalid(format!(
                "memory ({n}) must be a whole number of bytes or a size such as \"2GiB\""
            ))
        }),
        Some(other) => Err(invalid(format!(
            "memory ({other}) must be a size such as \"2GiB\""
        ))),
    }
}

/// A session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionView {
    /// The session id.
    id: String,
    /// The pool its container comes from.
    pool: String,
    /// `ended` only in the answer to its DELETE.
    state: SessionStateName,
    /// Its container's id cut to 12 characters; `null` before its first task.
    container: Option<String>,
    /// Tasks run so far.
    tasks: u64,
    /// Seconds since its last task ended, to a tenth; 0 while one runs or waits.
    idle_seconds: f64,
    /// It ends after this long idle (humantime, e.g. `"5m"`).
    idle_timeout: String,
    /// A task runs or waits.
    busy: bool,
    /// Tasks of the session that may run at once.
    max_concurrent_tasks: usize,
    /// The session's own memory in bytes; absent when it uses the pool's.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
    /// The session's own CPUs; absent when it uses the pool's.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<f64>,
    /// The session's own pids limit; absent when it uses the pool's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pids_limit: Option<i64>,
}

/// A session's state as the API spells it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum SessionStateName {
    /// No task ran yet: no container.
    NotStarted,
    /// Holds a container.
    Running,
    /// A persistent session that gave its container back when it went idle: its workspace
    /// waits on the host (or in its engine volume), its next task resumes on a warm
    /// container (with a volume, on one created for it).
    Idle,
    /// Ended by this DELETE.
    Ended,
}

/// `GET /v1/sessions`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionList {
    /// Every live session.
    sessions: Vec<SessionView>,
}

/// A session as the API shows it: the container id cut to 12 characters, `idle_seconds` to
/// a tenth.
fn session_view(info: &SessionInfo) -> SessionView {
    SessionView {
        id: info.id.clone(),
        pool: info.pool.clone(),
        state: match info.state {
            SessionState::NotStarted => SessionStateName::NotStarted,
            SessionState::Running => SessionStateName::Running,
            SessionState::Idle => SessionStateName::Idle,
        },
        container: info
            .container
            .as_ref()
            .map(|c| c.chars().take(12).collect()),
        tasks: info.tasks,
        idle_seconds: (info.idle.as_secs_f64() * 10.0).round() / 10.0,
        idle_timeout: humantime::format_duration(info.idle_timeout).to_string(),
        busy: info.busy,
        max_concurrent_tasks: info.max_concurrent_tasks,
        memory: info.limits.memory_bytes,
        cpus: info.limits.nano_cpus.map(|c| c as f64 / 1e9),
        pids_limit: info.limits.pids_limit,
    }
}

const ID: &str = "The session id";

/// `DELETE /v1/sessions/{id}?workspace=`: what becomes of a persistent workspace.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub(super) enum WorkspaceChoice {
    /// Keep it on the host (the default): a session of that id resumes it.
    Keep,
    /// Remove it with the session.
    Delete,
}

/// `POST /v1/sessions`: 201 with the new session, 200 with the live one of that id, 409 if
/// that id is live on another pool, 400 for a bad body or `idle_timeout`.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    summary = "Create a session (or find the live one of that id)",
    request_body(content = SessionBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; it takes a container at its first task", body = SessionView),
        (status = 200, description = "A live session of that id on that pool already exists", body = SessionView),
        (status = 400, description = "`invalid_json`, `invalid_request` or `bad_body`: a bad body, id or `idle_timeout`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_pool`", body = ErrorBody),
        (status = 409, description = "`session_pool_mismatch`: that id is live on another pool", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `server.max_request_body`", body = ErrorBody),
        (status = 429, description = "`queue_full` (with `Retry-After`): with `warm`, the pool's queue is full", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 502, description = "`container_failed`: with `warm`, the container failed while being claimed", body = ErrorBody),
        (status = 503, description = "`no_container`, `pool_exhausted`, `engine_unavailable`, `shutting_down` or `starting`: with `warm`, no container could be claimed", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again (not with `pool_exhausted`)"))),
        (status = 507, description = "`workspace_full`: the session's persistent workspace is over its pool's `workspace_max_size`", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn create_session(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: SessionBody = parse_body(body, "session request")?;
    super::find_pool(&state, &body.pool)?;
    let idle_timeout = body
        .idle_timeout
        .map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("idle_timeout {t:?} is not a duration ({e}); write e.g. \"5m\""),
                )
            })
        })
        .transpose()?;
    let opts = crate::session::SessionOptions {
        memory: memory_of(body.memory)?,
        cpus: body.cpus,
        pids_limit: body.pids_limit,
        max_concurrent_tasks: body.max_concurrent_tasks,
    };
    let (session, created) =
        state
            .supervisor
            .sessions
            .create_with(&body.pool, body.id, idle_timeout, opts)?;
    if body.warm {
        state.supervisor.sessions.warm(&session.id).await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(session_view(&session.info()))).into_response())
}

/// `GET /v1/sessions`: `{"sessions": [...]}`.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    summary = "List the live sessions",
    responses(
        (status = 200, description = "Every live session", body = SessionList),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn list_sessions(State(state): State<AppState>) -> Json<SessionList> {
    let sessions = state
        .supervisor
        .sessions
        .list()
        .iter()
        .map(|s| session_view(&s.info()))
        .collect();
    Json(SessionList { sessions })
}

/// `GET /v1/sessions/{id}`: the session, or 404 `unknown_session`.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "Show one session",
    params(("id" = String, Path, description = ID, example = "acme-website-john")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 400, description = "`invalid_request`: the path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_session`", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let s = state
        .supervisor
        .sessions
        .get(&id)
        .ok_or(SessionError::NotFound(id))?;
    Ok(Json(session_view(&s.info())))
}

/// `DELETE /v1/sessions/{id}`: ends it once its running task is done; answers the session
/// as it ended (`"state": "ended"`), or 404 `unknown_session`, or 503 `engine_unavailable`
/// when a workspace to delete was kept.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "End a session",
    description = "Waits for its running task, runs the pool's `session_end_command` and removes \
        its container; answers the session as it ended.",
    params(
        ("id" = String, Path, description = ID, example = "acme-website-john"),
        ("workspace" = inline(Option<WorkspaceChoice>), Query, description = "`delete` removes a persistent workspace too; `keep` (the default) keeps it"),
    ),
    responses(
        (status = 200, description = "Ended (`state` is `ended`)", body = SessionView),
        (status = 400, description = "`invalid_request`: the path is not valid UTF-8, or an unknown query", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_session`", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: with `workspace=delete`, the session ended but the engine would not remove its workspace's volume, which stays listed", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: axum::extract::RawQuery,
) -> Result<Json<SessionView>, ApiError> {
    // `?workspace=delete` removes a persistent workspace too; `keep` (the default) keeps it.
    let mut workspace = WorkspaceChoice::Keep;
    for pair in query
        .0
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair {
            "workspace=delete" => workspace = WorkspaceChoice::Delete,
            "workspace=keep" => workspace = WorkspaceChoice::Keep,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("unknown query {other:?}: DELETE /v1/sessions/{{id}} takes workspace=keep (the default) or workspace=delete"),
                ))
            }
        }
    }
    let info = state
        .supervisor
        .sessions
        .end_with(&id, matches!(workspace, WorkspaceChoice::Delete))
        .await?;
    let mut v = session_view(&info);
    v.state = SessionStateName::Ended;
    Ok(Json(v))
}
