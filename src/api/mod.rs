//! The HTTP API: JSON in and out, errors as `{"error": {"code", "message"}}` with a fitting
//! status, a bounded body, and an optional bearer token on `/v1/*`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::exec::ExecError;
use crate::pool::AcquireError;
use crate::session::SessionError;
use crate::supervisor::{ReloadSummary, SubmitError, Supervisor};

mod admin;
mod files;
mod pools;
mod sessions;
mod tasks;

/// What every handler gets: the supervisor, plus what the daemon around it provides.
#[derive(Clone)]
pub struct AppState {
    pub supervisor: Arc<Supervisor>,
    /// When set, `/v1/*` needs `Authorization: Bearer <token>`.
    pub token: Token,
    /// Runs `POST /v1/admin/reload`; the daemon owns the file and the settings in force.
    pub reloader: Arc<dyn Reload>,
    /// `server.max_request_body` in bytes; it also bounds files read back.
    pub max_body: usize,
}

/// The bearer token `/v1/*` asks for (`None`: no token needed). Clones share one value, so
/// the daemon can swap it on a reload while the API checks it.
#[derive(Clone, Default)]
pub struct Token(Arc<parking_lot::RwLock<Option<Arc<String>>>>);

impl Token {
    pub fn new(token: Option<Arc<String>>) -> Self {
        Token(Arc::new(parking_lot::RwLock::new(token)))
    }

    /// The token in force now.
    pub fn get(&self) -> Option<Arc<String>> {
        self.0.read().clone()
    }

    /// Puts `token` in force for every request checked from now on.
    pub fn set(&self, token: Option<Arc<String>>) {
        *self.0.write() = token;
    }
}

/// Reloading the configuration. The daemon implements it (it knows the file and the
/// settings in force), so the HTTP layer never reads configuration itself.
#[async_trait::async_trait]
pub trait Reload: Send + Sync {
    /// Applies the configuration file anew. Errors: every problem found, as text; then
    /// nothing changed and the running configuration stays.
    async fn reload(&self) -> Result<ReloadSummary, String>;
}

/// The whole API (see docs/api.md): `/v1/*` behind the token, `/healthz`, `/readyz` and
/// `/metrics` open, request bodies bounded by `state.max_body`.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    let v1 = Router::new()
        .route("/v1/pools", get(pools::list_pools))
        .route("/v1/pools/{pool}", get(pools::get_pool))
        .route("/v1/pools/{pool}/tasks", post(tasks::submit_task))
        .route("/v1/admin/reload", post(admin::admin_reload))
        .route(
            "/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(files::get_file).put(files::put_file),
        )
        .route(
            "/v1/sessions/{id}/archive/{*dir}",
            get(files::get_archive).put(files::put_archive),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
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
    let Some(expected) = state.token.get() else {
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
}
