//! Operations endpoints: `POST /v1/admin/reload`, `GET /healthz`, `GET /readyz`,
//! `GET /metrics`. The reload
//! itself is the daemon's ([`super::Reload`]); this only answers for it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// `POST /v1/admin/reload`: `{"result": "ok", "changes": ReloadSummary}`, or 400
/// `invalid_config` listing every problem (nothing changed then).
pub(super) async fn admin_reload(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.reloader.reload().await {
        Ok(summary) => Ok(Json(json!({"result": "ok", "changes": summary}))),
        Err(problems) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            format!("the new configuration was refused and the running one stays: {problems}"),
        )),
    }
}

/// `GET /healthz`: liveness, `{"status": "ok"}` while the process serves.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the engine answers and every pool has its `min`, else 503
/// `not_ready` saying why.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match state.supervisor.ready() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.supervisor.metrics.render(),
    )
        .into_response()
}
