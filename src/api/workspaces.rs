//! `/v1/workspaces`: the persistent session workspaces (host directories, or engine volumes
//! with a remote engine).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody, ErrorCode, Path};
use crate::session::SessionState;
use crate::workspace::WorkspaceInfo;

/// One persistent workspace.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkspaceView {
    /// The session id it belongs to.
    id: String,
    /// Its pool.
    pool: String,
    /// Bytes of its files; for an engine volume (a remote engine) the engine's disk usage
    /// answer, 0 when it does not say.
    bytes: u64,
    /// Its last use (RFC 3339, seconds).
    #[schema(format = DateTime)]
    last_used: String,
    /// The state of the live session of that id, or `null` when none is live.
    session: Option<LiveSession>,
}

/// The state of a workspace's live session, as the session views spell it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum LiveSession {
    /// No task ran yet.
    NotStarted,
    /// Holds a container.
    Running,
    /// Gave its container back; the workspace waits (on the host, or in its engine volume).
    Idle,
}

/// `GET /v1/workspaces`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkspaceList {
    /// Every persistent workspace.
    workspaces: Vec<WorkspaceView>,
}

/// `DELETE /v1/workspaces/{id}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkspaceDeleted {
    /// The workspace (session) id.
    id: String,
    /// Always `true`.
    deleted: bool,
}

fn workspace_view(w: &WorkspaceInfo, session: Option<LiveSession>) -> WorkspaceView {
    let last_used = std::time::UNIX_EPOCH + std::time::Duration::from_secs(w.last_used);
    WorkspaceView {
        id: w.id.clone(),
        pool: w.pool.clone(),
        bytes: w.bytes,
        last_used: humantime::format_rfc3339_seconds(last_used).to_string(),
        session,
    }
}

/// `GET /v1/workspaces`: `{"workspaces": [{"id", "pool", "bytes", "last_used", "session"}]}`,
/// `session` being the state of the live session of that id (`running`, `idle`), or null.
#[utoipa::path(
    get,
    path = "/v1/workspaces",
    tag = "workspaces",
    summary = "List the persistent workspaces",
    responses(
        (status = 200, description = "Every persistent workspace", body = WorkspaceList),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn list_workspaces(State(state): State<AppState>) -> Json<WorkspaceList> {
    let sessions = &state.supervisor.sessions;
    let workspaces = sessions
        .workspaces()
        .await
        .iter()
        .map(|w| {
            let live = sessions.get(&w.id).map(|s| match s.info().state {
                SessionState::NotStarted => LiveSession::NotStarted,
                SessionState::Running => LiveSession::Running,
                SessionState::Idle => LiveSession::Idle,
            });
            workspace_view(w, live)
        })
        .collect::<Vec<_>>();
    Json(WorkspaceList { workspaces })
}

/// `DELETE /v1/workspaces/{id}`: removes it, ending its live session if it has one; 404
/// `not_found` when there is none, 400 for an id that could not name one (`..`).
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}",
    tag = "workspaces",
    summary = "Remove a persistent workspace",
    description = "Ends the live session of that id first, if there is one.",
    params(("id" = String, Path, description = "The workspace's session id", example = "acme-website-john")),
    responses(
        (status = 200, description = "Removed", body = WorkspaceDeleted),
        (status = 400, description = "`invalid_path`: not a session id, or it contains `..`; `invalid_request`: the path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`: no workspace of that id", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine would not remove the workspace's volume (a remote engine's workspace); it stays listed", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn delete_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkspaceDeleted>, ApiError> {
    crate::workspace::check_id(&id)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPath, m))?;
    if state.supervisor.sessions.delete_workspace(&id).await? {
        Ok(Json(WorkspaceDeleted { id, deleted: true }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no workspace {id:?}; GET /v1/workspaces lists them"),
        ))
    }
}
