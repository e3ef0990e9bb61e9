//! The HTTP API (docs/api.md is the contract): JSON in and out, every error as
//! `{"error": {"code", "message"}}` with a fitting status, a bounded body, and an optional
//! bearer token on `/v1/*`.
//!
//! This file holds what all endpoints share (the state, [`ApiError`], the token check, body
//! and path parsing) and the router. Each resource has its own file, which uses this one;
//! this one only names their handlers in the router, so no two files import each other.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
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
mod prewarm;
mod sessions;
mod tasks;
mod workspaces;

/// What every handler gets: the supervisor, plus what the daemon around it provides.
#[derive(Clone)]
pub struct AppState {
    /// The pools and sessions every endpoint works on.
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
    /// A token of its own, not shared with any other `Token` (clone it to share).
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
        .route("/v1/pools/{pool}/prewarm", post(prewarm::prewarm))
        .route("/v1/admin/reload", post(admin::admin_reload))
        .route(
            "/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route("/v1/workspaces", get(workspaces::list_workspaces))
        .route(
            "/v1/workspaces/{id}",
            axum::routing::delete(workspaces::delete_workspace),
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
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        // After every route: it applies to the routes present when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// A path no route takes: the error envelope, not axum's empty 404.
async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see the API table in the README",
    )
}

/// A known path with a method it does not take: the error envelope instead of axum's empty
/// 405. axum still adds the `Allow` header listing the methods the path takes.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

/// An error as the API answers it: `status` with the body
/// `{"error": {"code": code, "message": message}}`, plus `Retry-After` (seconds) when the
/// same request may succeed later. Codes are snake_case and listed in docs/api.md.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// `message` is a sentence for a person: what was wrong and, where it helps, the fix.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The machine-readable code, e.g. `"unknown_pool"`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Adds `Retry-After: secs`, for a client that backs off.
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

/// A refused or failed task: 404 for an unknown pool, 400 for a bad request, 429 or 503
/// (with `Retry-After`) when no container can be had now, 502 when the container failed.
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

/// 404 `unknown_session`, 409 `session_pool_mismatch`, 400 `invalid_request`, or the
/// task's own error.
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
            SessionError::TaskFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "container_failed", msg)
            }
            SessionError::WorkspaceFull(_) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "workspace_full", msg)
            }
            SessionError::Submit(e) => e.into(),
        }
    }
}

/// Lets a `/v1/*` request through when no token is set or its bearer token matches; else 401
/// `unauthorized`, saying whether the token was missing or wrong.
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

/// axum's `Path`, but a path it cannot parse (say, a `%FF` that is not UTF-8) answers in
/// the error envelope: 400 `invalid_request`.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(Path(t)),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// axum's `Query`, but a query string it cannot parse (say, `?stream=maybe`) answers in the
/// error envelope: 400 `invalid_request`.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// An extractor's refusal in the envelope; a server-side one (a route wired wrong) stays a 500.
fn rejected(status: StatusCode, message: String) -> ApiError {
    if status.is_client_error() {
        ApiError::new(status, "invalid_request", message)
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// A raw body, or why there is none: 413 `body_too_large` over `server.max_request_body`,
/// else 400 `bad_body`.
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

/// Parses a JSON body into `T`. Errors: those of [`body_bytes`], and 400 `invalid_json` (with
/// serde's reason: the field, the line and column) for a body that is not a `T`.
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
mod contract_tests;

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

    /// A configuration reload is the daemon's; these tests have none.
    struct NoReload;

    #[async_trait::async_trait]
    impl Reload for NoReload {
        async fn reload(&self) -> Result<ReloadSummary, String> {
            Err("no configuration file in this test".into())
        }
    }

    /// The real router over a supervisor that was never started, on the in-memory engine.
    fn app(token: Option<&str>) -> Router {
        let supervisor = Supervisor::new(
            crate::runtime::fake::FakeRuntime::new(),
            Arc::new(crate::metrics::Metrics::new()),
            None,
            "test",
            10,
        );
        router(AppState {
            supervisor,
            token: Token::new(token.map(|t| Arc::new(t.to_string()))),
            reloader: Arc::new(NoReload),
            max_body: 1 << 20,
        })
    }

    /// Status, `Allow` header and JSON body of one request.
    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        use tower::Service;
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        let resp = app.clone().call(req).await.unwrap();
        let status = resp.status();
        let allow = resp
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: body {body:?} is not JSON: {e}"));
        (status, allow, json)
    }

    #[tokio::test]
    async fn a_wrong_method_answers_405_in_the_error_envelope_with_allow() {
        let app = app(None);
        for (method, path, allowed) in [
            ("POST", "/v1/pools", "GET,HEAD"),
            ("GET", "/v1/pools/coder/tasks", "POST"),
            ("PATCH", "/v1/sessions/s1", "GET,HEAD,DELETE"),
            ("POST", "/v1/sessions/s1/files/work/a.txt", "GET,HEAD,PUT"),
            ("GET", "/v1/admin/reload", "POST"),
            ("DELETE", "/metrics", "GET,HEAD"),
            ("POST", "/healthz", "GET,HEAD"),
        ] {
            let (status, allow, body) = call(&app, method, path, None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}"
            );
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(method) && message.contains(path),
                "{message}"
            );
            let mut allow: Vec<String> = allow.unwrap().split(',').map(str::to_string).collect();
            let mut allowed: Vec<&str> = allowed.split(',').collect();
            allow.sort();
            allowed.sort();
            assert_eq!(allow, allowed, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_readyz_says_why_not() {
        let app = app(Some("s3cret"));
        let (status, _, body) = call(&app, "GET", "/healthz", None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
        let (status, _, body) = call(&app, "GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "not_ready");
    }

    #[tokio::test]
    async fn an_unknown_path_answers_404_not_found_in_the_error_envelope() {
        let app = app(None);
        for (method, path) in [("GET", "/nope"), ("POST", "/v1/pool"), ("GET", "/v2/pools")] {
            let (status, _, body) = call(&app, method, path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(body["error"]["code"], "not_found", "{method} {path}");
        }
    }

    #[tokio::test]
    async fn a_bad_path_or_query_answers_400_in_the_error_envelope() {
        let app = app(None);
        for (method, path) in [
            ("GET", "/v1/pools/%FF"),
            ("POST", "/v1/pools/coder/tasks?stream=maybe"),
        ] {
            let (status, _, body) = call(&app, method, path, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert_eq!(body["error"]["code"], "invalid_request", "{method} {path}");
        }
    }

    #[tokio::test]
    async fn the_token_guards_v1_and_a_wrong_method_stays_405() {
        let app = app(Some("s3cret"));
        let (status, _, body) = call(&app, "GET", "/v1/pools", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _, body) = call(&app, "GET", "/v1/pools", Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"pools": []}));
        // As before the envelope: the method check comes before the token check.
        let (status, _, body) = call(&app, "POST", "/v1/pools", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
}
