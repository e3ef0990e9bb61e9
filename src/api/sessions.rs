//! `/v1/sessions`: create, list, show and end sessions. Their tasks go through `tasks.rs`,
//! their files through `files.rs`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, ApiError, AppState, Path};
use crate::session::{SessionError, SessionInfo};

/// `POST /v1/sessions`'s body; unknown fields are refused so a typo is not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    pool: String,
    id: Option<String>,
    idle_timeout: Option<String>,
    /// Claim the container now instead of on the first task.
    #[serde(default)]
    warm: bool,
    /// The session's own memory: a size string ("2GiB") or bytes.
    memory: Option<Value>,
    /// The session's own CPUs.
    cpus: Option<f64>,
    /// The session's own pids limit.
    pids_limit: Option<i64>,
    /// Tasks of the session that may run at once, at most the pool's.
    max_concurrent_tasks: Option<usize>,
}

/// `memory` as a size string or a number of bytes.
fn memory_of(v: Option<Value>) -> Result<Option<u64>, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
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

/// A session as the API shows it: the container id cut to 12 characters, `idle_seconds` to
/// a tenth.
fn session_json(info: &SessionInfo) -> Value {
    let mut v = json!({
        "id": info.id,
        "pool": info.pool,
        "state": info.state.as_str(),
        "container": info.container.as_ref().map(|c| c.chars().take(12).collect::<String>()),
        "tasks": info.tasks,
        "idle_seconds": (info.idle.as_secs_f64() * 10.0).round() / 10.0,
        "idle_timeout": humantime::format_duration(info.idle_timeout).to_string(),
        "busy": info.busy,
        "max_concurrent_tasks": info.max_concurrent_tasks,
    });
    // The session's own size, when it asked for one.
    if let Some(m) = info.limits.memory_bytes {
        v["memory"] = json!(m);
    }
    if let Some(c) = info.limits.nano_cpus {
        v["cpus"] = json!(c as f64 / 1e9);
    }
    if let Some(p) = info.limits.pids_limit {
        v["pids_limit"] = json!(p);
    }
    v
}

/// `POST /v1/sessions`: 201 with the new session, 200 with the live one of that id, 409 if
/// that id is live on another pool, 400 for a bad body or `idle_timeout`.
pub(super) async fn create_session(
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
    Ok((status, Json(session_json(&session.info()))).into_response())
}

/// `GET /v1/sessions`: `{"sessions": [...]}`.
pub(super) async fn list_sessions(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .supervisor
        .sessions
        .list()
        .iter()
        .map(|s| session_json(&s.info()))
        .collect();
    Json(json!({ "sessions": list }))
}

/// `GET /v1/sessions/{id}`: the session, or 404 `unknown_session`.
pub(super) async fn get_session(
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

/// `DELETE /v1/sessions/{id}`: ends it once its running task is done; answers the session
/// as it ended (`"state": "ended"`), or 404 `unknown_session`.
pub(super) async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    // `?workspace=delete` removes a persistent workspace too; `keep` (the default) keeps it.
    let mut delete_workspace = false;
    for pair in query
        .0
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair {
            "workspace=delete" => delete_workspace = true,
            "workspace=keep" => delete_workspace = false,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("unknown query {other:?}: DELETE /v1/sessions/{{id}} takes workspace=keep (the default) or workspace=delete"),
                ))
            }
        }
    }
    let info = state
        .supervisor
        .sessions
        .end_with(&id, delete_workspace)
        .await?;
    let mut v = session_json(&info);
    v["state"] = json!("ended");
    Ok(Json(v))
}
