//! `GET /v1/pools` and `GET /v1/pools/{pool}`: what each pool holds right now.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody, Path};

/// One pool as `GET /v1/pools` shows it: container counts, sizing from the configuration,
/// utilization (0 to 1, three decimals), tasks waiting, and whether it is failed.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolStatus {
    /// The pool's name in pools.toml.
    name: String,
    /// What the pool is for (`description` in pools.toml), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// The image its containers run.
    image: String,
    /// How tasks reach its containers.
    exec: ExecName,
    /// Containers up (idle + busy).
    live: usize,
    /// Warm and free.
    idle: usize,
    /// Running a task or held by a session.
    busy: usize,
    /// Being created.
    starting: usize,
    /// Being removed because they failed (a probe, a dead agent, a timed-out task).
    unhealthy: usize,
    /// Being removed for any other reason (age, uses, scale-down).
    retiring: usize,
    /// The configured minimum.
    min: usize,
    /// The configured maximum.
    max: usize,
    /// How many the pool aims for now (docs/scaling.md).
    target: usize,
    /// (busy + queued) / live, capped at 1, rounded to 3 decimals.
    #[schema(minimum = 0.0, maximum = 1.0)]
    utilization: f64,
    /// Tasks waiting for a container.
    queue_length: usize,
    /// The pre-warm floor in force, if any.
    prewarm: Option<Prewarm>,
    /// `ok`, or `failed`: the engine refused the pool's last container start for good.
    state: PoolState,
    /// Why the pool is failed; `null` unless `state` is `failed`.
    failure: Option<PoolFailure>,
}

/// Whether a pool can start containers (docs/operations.md, "A failed pool").
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum PoolState {
    /// Nothing stops it from starting containers.
    Ok,
    /// The engine refused its last container start in a way a retry cannot get past; its
    /// tasks answer 503 `pool_failed` while it has no idle container.
    Failed,
}

/// Why a pool is failed, and what to do about it.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolFailure {
    /// The container engine's own words.
    reason: String,
    /// What to do about it.
    hint: String,
    /// When the pool became failed (RFC 3339, seconds).
    #[schema(format = DateTime)]
    since: String,
    /// How often it tries one start again (its `health_check_interval`), in seconds; it
    /// also tries at every reload and when the engine comes back.
    retry_every_seconds: f64,
}

/// A pool's `exec` setting, as pools.toml spells it.
#[derive(Serialize, ToSchema)]
pub(super) enum ExecName {
    #[serde(rename = "shim")]
    Shim,
    #[serde(rename = "docker-exec")]
    DockerExec,
}

/// `GET /v1/pools`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolList {
    /// Every pool, by name.
    pools: Vec<PoolStatus>,
}

/// A pool's pre-warm floor: how many containers, until when (RFC 3339), seconds left.
#[derive(Serialize, ToSchema)]
pub(super) struct Prewarm {
    /// The floor: the pool keeps at least this many containers up.
    containers: usize,
    /// When the floor ends (RFC 3339, seconds).
    #[schema(format = DateTime)]
    until: String,
    /// Seconds left, to a tenth.
    remaining_seconds: f64,
}

pub(super) fn pool_status(pool: &crate::pool::Pool) -> PoolStatus {
    let cfg = &pool.config();
    let c = &pool.counts();
    let failure = pool.failure();
    PoolStatus {
        state: if failure.is_some() {
            PoolState::Failed
        } else {
            PoolState::Ok
        },
        failure: failure.map(|f| PoolFailure {
            reason: f.reason,
            hint: f.hint,
            since: humantime::format_rfc3339_seconds(f.since).to_string(),
            retry_every_seconds: f.retry_every.as_secs_f64(),
        }),
        name: cfg.name.clone(),
        description: cfg.description.clone(),
        image: cfg.image.clone(),
        exec: match cfg.exec {
            crate::config::ExecMode::Shim => ExecName::Shim,
            crate::config::ExecMode::DockerExec => ExecName::DockerExec,
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
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "pools",
    summary = "List the pools",
    responses(
        (status = 200, description = "Every pool", body = PoolList),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn list_pools(State(state): State<AppState>) -> Json<PoolList> {
    let pools: Vec<PoolStatus> = state
        .supervisor
        .pools()
        .iter()
        .map(|p| pool_status(p))
        .collect();
    Json(PoolList { pools })
}

/// `GET /v1/pools/{pool}`: one [`PoolStatus`], or 404 `unknown_pool`.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}",
    tag = "pools",
    summary = "Show one pool",
    params(("pool" = String, Path, description = "The pool's name", example = "coder")),
    responses(
        (status = 200, description = "The pool", body = PoolStatus),
        (status = 400, description = "`invalid_request`: the path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_pool`", body = ErrorBody),
        (status = 503, description = "`starting`: the daemon is still starting; its pools exist once it is done", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn get_pool(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    let pool = super::find_pool(&state, &name)?;
    Ok(Json(pool_status(&pool)))
}
