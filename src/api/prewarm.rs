//! `POST /v1/pools/{pool}/prewarm`: raise a pool's floor for a while, ahead of a known burst.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use std::time::Duration;
use utoipa::ToSchema;

use super::pools::{pool_status, PoolStatus};
use super::{parse_body, ApiError, AppState, ErrorBody, ErrorCode, Path};

/// The body: `{"containers": 6, "for": "10m"}`; unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"containers": 6, "for": "10m"}))]
pub(super) struct PrewarmBody {
    /// The floor: keep at least this many containers up, at most the pool's `max`; 0 ends
    /// a pre-warm.
    #[schema(minimum = 0)]
    containers: usize,
    /// How long (a duration such as `"10m"`, longer than zero).
    #[serde(rename = "for")]
    duration: String,
}

/// Sets (or, with `containers: 0`, clears) the floor; a later call replaces an earlier one.
/// Answers the pool's status with the floor in it; 400 above `max` or for a bad duration.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/prewarm",
    tag = "pools",
    summary = "Raise a pool's floor for a while",
    description = "Keeps at least `containers` containers up for `for`, ahead of a known burst; \
        a later call replaces an earlier one, `containers: 0` ends it.",
    params(("pool" = String, Path, description = "The pool's name", example = "coder")),
    request_body(content = PrewarmBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The pool, with the floor in `prewarm`", body = PoolStatus),
        (status = 400, description = "`invalid_json`, `invalid_request` or `bad_body`: a bad body, `containers` above `max`, or a bad `for`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`unknown_pool`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `server.max_request_body`", body = ErrorBody),
        (status = 503, description = "`starting`: the daemon is still starting; its pools exist once it is done", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn prewarm(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PoolStatus>, ApiError> {
    let pool = super::find_pool(&state, &name)?;
    let body: PrewarmBody = parse_body(body, "prewarm request")?;
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, m);
    let duration = prewarm_duration(&body.duration).map_err(invalid)?;
    pool.set_prewarm(body.containers, duration)
        .map_err(invalid)?;
    Ok(Json(pool_status(&pool)))
}

/// The longest `for`: a floor further off would overflow the clock or an RFC 3339 `until`
/// (year 9999), and would panic the pool's status.
const MAX_FOR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `for` as a duration, longer than zero and at most [`MAX_FOR`]. Errors: the message.
fn prewarm_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("for ({text:?}) is not a duration ({e}): write one such as \"10m\"")
    })?;
    if duration.is_zero() {
        return Err(
            "for (\"0s\") must be longer than zero; to end a pre-warm, send containers: 0".into(),
        );
    }
    if duration > MAX_FOR {
        return Err(format!(
            "for ({text:?}) is longer than {}d: ask for less",
            MAX_FOR.as_secs() / 86_400
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::PoolConfig;
    use crate::metrics::Metrics;
    use crate::pool::Pool;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::ContainerSpec;

    #[test]
    fn for_is_a_duration_above_zero_and_at_most_a_century() {
        assert_eq!(
            super::prewarm_duration(" 10m ").unwrap(),
            Duration::from_secs(600)
        );
        assert!(super::prewarm_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(super::prewarm_duration("soon")
            .unwrap_err()
            .contains("not a duration"));
        for huge in ["10000y", "300000000000y"] {
            let e = super::prewarm_duration(huge).unwrap_err();
            assert!(
                e.contains("ask for less") || e.contains("not a duration"),
                "{huge}: {e}"
            );
        }
        super::prewarm_duration("100y").unwrap_err();
        super::prewarm_duration("99y").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_prewarm_replaces_the_earlier_and_above_max_is_refused() {
        let mut cfg = PoolConfig::new("p", "img");
        cfg.max = 4;
        let metrics = Arc::new(Metrics::new());
        let pool = Pool::new(cfg, ContainerSpec::default(), FakeRuntime::new(), metrics);
        let e = pool.set_prewarm(5, Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("containers (5)") && e.contains("max (4)"), "{e}");
        assert_eq!(pool.prewarm_floor().0, 0, "a refused floor changes nothing");
        pool.set_prewarm(3, Duration::from_secs(60)).unwrap();
        pool.set_prewarm(2, Duration::from_secs(10)).unwrap();
        assert_eq!(pool.prewarm_floor().0, 2);
        assert_eq!(pool.counts().prewarm, 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(pool.prewarm_floor(), (0, None), "it ends after `for`");
        assert_eq!(pool.counts().prewarm, 0);
    }
}
