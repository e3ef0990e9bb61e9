//! `GET /v1/pools` and `GET /v1/pools/{pool}`: what each pool holds right now.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Path};
use crate::supervisor::SubmitError;

/// One pool as `GET /v1/pools` shows it: container counts, sizing from the configuration,
/// utilization (0 to 1, three decimals) and tasks waiting.
#[derive(Serialize)]
pub(super) struct PoolStatus {
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
    /// The pre-warm floor in force, if any.
    prewarm: Option<Prewarm>,
}

/// A pool's pre-warm floor: how many containers, until when (RFC 3339), seconds left.
#[derive(Serialize)]
pub(super) struct Prewarm {
    containers: usize,
    until: String,
    remaining_seconds: f64,
}

pub(super) fn pool_status(cfg: &crate::config::PoolConfig, c: &crate::pool::Counts) -> PoolStatus {
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
        prewarm: c.prewarm_until.filter(|_| c.prewarm > 0).and_then(|until| {
            let left = until.checked_duration_since(tokio::time::Instant::now())?;
            Some(Prewarm {
                containers: c.prewarm,
                until: humantime::format_rfc3339_seconds(std::time::SystemTime::now() + left)
                    .to_string(),
                remaining_seconds: (left.as_secs_f64() * 10.0).round() / 10.0,
            })
        }),
    }
}

/// `GET /v1/pools`: `{"pools": [PoolStatus, ...]}`.
pub(super) async fn list_pools(State(state): State<AppState>) -> Json<Value> {
    let pools: Vec<PoolStatus> = state
        .supervisor
        .status()
        .iter()
        .map(|(cfg, c)| pool_status(cfg, c))
        .collect();
    Json(json!({"pools": pools}))
}

/// `GET /v1/pools/{pool}`: one [`PoolStatus`], or 404 `unknown_pool`.
pub(super) async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    let pool = state
        .supervisor
        .pool(&name)
        .ok_or_else(|| SubmitError::UnknownPool(name.clone()))?;
    Ok(Json(pool_status(&pool.config(), &pool.counts())))
}
