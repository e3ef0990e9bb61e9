//! Operations endpoints: `POST /v1/admin/reload`, `GET /healthz`, `GET /readyz`,
//! `GET /metrics`. The reload
//! itself is the daemon's ([`super::Reload`]); this only answers for it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody, ErrorCode};
use crate::supervisor::ReloadSummary;

/// `POST /v1/admin/reload`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct ReloadResult {
    result: ReloadOk,
    changes: ReloadChanges,
}

/// Always `"ok"`: a refused reload answers 400 `invalid_config` instead.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ReloadOk {
    Ok,
}

/// The pools a reload changed, by name.
#[derive(Serialize, ToSchema)]
pub(super) struct ReloadChanges {
    /// New pools, being warmed.
    added: Vec<String>,
    /// Pools gone from the file, being drained.
    removed: Vec<String>,
    /// Container spec changed: containers are being replaced, surge first.
    replaced: Vec<String>,
    /// Sizing or timing only: no container touched.
    retuned: Vec<String>,
}

impl From<ReloadSummary> for ReloadChanges {
    fn from(s: ReloadSummary) -> Self {
        ReloadChanges {
            added: s.added,
            removed: s.removed,
            replaced: s.replaced,
            retuned: s.retuned,
        }
    }
}

/// `GET /healthz`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    status: HealthStatus,
}

/// `"ok"`: the process serves.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum HealthStatus {
    Ok,
}

/// `GET /readyz`'s answer when ready.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    status: ReadyStatus,
}

/// `"ready"`: the engine answers and every pool has its `min`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ReadyStatus {
    Ready,
}

/// `POST /v1/admin/reload`: `{"result": "ok", "changes": ReloadSummary}`, or 400
/// `invalid_config` listing every problem (nothing changed then).
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "operations",
    summary = "Reload pools.toml (as SIGHUP)",
    responses(
        (status = 200, description = "The new configuration is in force", body = ReloadResult),
        (status = 400, description = "`invalid_config`: refused, listing every problem; the running configuration stays", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn admin_reload(
    State(state): State<AppState>,
) -> Result<Json<ReloadResult>, ApiError> {
    match state.reloader.reload().await {
        Ok(summary) => Ok(Json(ReloadResult {
            result: ReloadOk::Ok,
            changes: summary.into(),
        })),
        Err(problems) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidConfig,
            format!("the new configuration was refused and the running one stays: {problems}"),
        )),
    }
}

/// `GET /healthz`: liveness, `{"status": "ok"}` while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process serves", body = Health)),
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// `GET /readyz`: 200 when the engine answers and every pool has its `min`, else 503
/// `not_ready` saying why.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The engine answers and every pool has `min` containers up", body = Readiness),
        (status = 503, description = "`not_ready`: the message says why", body = ErrorBody),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match state.supervisor.ready() {
        Ok(()) => Json(Readiness {
            status: ReadyStatus::Ready,
        })
        .into_response(),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, why).into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "The Prometheus text format; docs/monitoring.md lists the metrics.",
    responses((status = 200, description = "The metrics", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
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
