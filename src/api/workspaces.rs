//! `/v1/workspaces`: the persistent session workspaces kept on the host.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState, Path};
use crate::workspace::WorkspaceInfo;

fn workspace_json(w: &WorkspaceInfo, session: Option<&str>) -> Value {
    let last_used = std::time::UNIX_EPOCH + std::time::Duration::from_secs(w.last_used);
    json!({
        "id": w.id,
        "pool": w.pool,
        "bytes": w.bytes,
        "last_used": humantime::format_rfc3339_seconds(last_used).to_string(),
        "session": session,
    })
}

/// `GET /v1/workspaces`: `{"workspaces": [{"id", "pool", "bytes", "last_used", "session"}]}`,
/// `session` being the state of the live session of that id (`running`, `idle`), or null.
pub(super) async fn list_workspaces(State(state): State<AppState>) -> Json<Value> {
    let sessions = state.supervisor.sessions.clone();
    let list = tokio::task::spawn_blocking(move || {
        sessions
            .workspaces()
            .iter()
            .map(|w| {
                let live = sessions.get(&w.id).map(|s| s.info().state.as_str());
                workspace_json(w, live)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Json(json!({ "workspaces": list }))
}

/// `DELETE /v1/workspaces/{id}`: removes it, ending its live session if it has one; 404
/// `not_found` when there is none, 400 for an id that could not name one (`..`).
pub(super) async fn delete_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::workspace::check_id(&id)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", m))?;
    if state.supervisor.sessions.delete_workspace(&id).await {
        Ok(Json(json!({"id": id, "deleted": true})))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no workspace {id:?}; GET /v1/workspaces lists them"),
        ))
    }
}
