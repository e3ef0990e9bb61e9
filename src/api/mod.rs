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
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The whole API (see docs/api.md): `/v1/*` behind the token, `/healthz`, `/readyz`,
/// `/metrics` and `/openapi.json` open, request bodies bounded by `state.max_body`.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    let Routes { v1, open } = routes();
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    ));
    let (router, _) = v1.merge(open).split_for_parts();
    router
        // After every route: it applies to the routes present when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Every route the daemon serves, each registered from its handler's `#[utoipa::path]`, so
/// a route is in the OpenAPI document exactly when it is served. This is the one place
/// routes are added: add one here with `routes!`, never with axum's `route` (a unit test checks).
struct Routes {
    /// Behind the bearer token.
    v1: OpenApiRouter<AppState>,
    /// Open.
    open: OpenApiRouter<AppState>,
}

fn routes() -> Routes {
    let v1 = OpenApiRouter::new()
        .routes(routes!(pools::list_pools))
        .routes(routes!(pools::get_pool))
        .routes(routes!(tasks::submit_task))
        .routes(routes!(prewarm::prewarm))
        .routes(routes!(admin::admin_reload))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(workspaces::list_workspaces))
        .routes(routes!(workspaces::delete_workspace))
        .routes(routes!(files::get_file, files::put_file))
        .routes(routes!(files::get_archive, files::put_archive));
    let open = OpenApiRouter::new()
        .routes(routes!(admin::healthz))
        .routes(routes!(admin::readyz))
        .routes(routes!(admin::metrics))
        .routes(routes!(openapi_json));
    Routes { v1, open }
}

/// The document's frame: info, the bearer scheme, tags and the shared schemas; [`routes`]
/// adds the paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "warmpool",
        description = "Warm pools of containers that run tasks in about a millisecond. \
            docs/api.md is the prose contract; this document is generated from the daemon's code. \
            Every error is `{\"error\": {\"code\", \"message\"}}` with a code of `ErrorCode`."
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&BearerScheme),
    tags(
        (name = "tasks", description = "Run one task on a warm container"),
        (name = "pools", description = "What each pool holds"),
        (name = "sessions", description = "A container pinned to one conversation"),
        (name = "files", description = "Files in a session's container"),
        (name = "workspaces", description = "Persistent session workspaces kept on the host"),
        (name = "operations", description = "Reload, health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// Declares `Authorization: Bearer <token>`, which `/v1/*` needs when `server.token_file` is set.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description =
            Some("Needed on /v1/* when server.token_file is set (the file holds the token)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// The OpenAPI 3.1 document of [`router`]: the frame of [`ApiDoc`] plus every route of
/// [`routes`]. axum's catch-all `{*name}` is written `{name}` as OpenAPI spells it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let Routes { v1, open } = routes();
    let mut doc = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1)
        .merge(open)
        .into_openapi();
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    tasks::task_body_rules(&mut doc);
    files::optional_bodies(&mut doc);
    doc
}

/// Raw bytes in a request or response body (a file, a tar): `{"type": "string", "format":
/// "binary"}` in the document.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Raw bytes"))
            .into()
    }
}

impl ToSchema for Binary {}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document, built once.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
async fn openapi_json() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str()).into_response()
}

/// A path no route takes: the error envelope, not axum's empty 404.
async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint; see the API table in the README",
    )
}

/// A known path with a method it does not take: the error envelope instead of axum's empty
/// 405. axum still adds the `Allow` header listing the methods the path takes.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

/// Every error code the API answers with, as it spells them (snake_case). docs/api.md lists
/// each with its status; a unit test checks that every one is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    BadBody,
    InvalidPath,
    WrongKind,
    BadArchive,
    FilesUnsupported,
    InvalidConfig,
    Unauthorized,
    ForbiddenHost,
    NotWritable,
    NotReadable,
    UnknownPool,
    UnknownSession,
    NoSuchPath,
    NotFound,
    MethodNotAllowed,
    SessionPoolMismatch,
    BodyTooLarge,
    QueueFull,
    ContainerFailed,
    NoContainer,
    PoolExhausted,
    EngineUnavailable,
    PoolFailed,
    ShuttingDown,
    Starting,
    NotReady,
    McpUnavailable,
    NoSpace,
    WorkspaceFull,
    Internal,
    FileTransferFailed,
}

/// The body of every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a code for a program, a sentence for a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What was wrong and, where it helps, the fix.
    pub message: String,
}

/// An error as the API answers it: `status` with the body
/// `{"error": {"code": code, "message": message}}`, plus `Retry-After` (seconds) when the
/// same request may succeed later. Codes are snake_case and listed in docs/api.md.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// `message` is a sentence for a person: what was wrong and, where it helps, the fix.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The machine-readable code, e.g. [`ErrorCode::UnknownPool`].
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The body this error answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }

    /// Adds `Retry-After: secs`, for a client that backs off.
    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
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
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownPool, msg)
            }
            SubmitError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, msg)
            }
            SubmitError::Acquire(AcquireError::QueueFull { .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull, msg)
                    .retry_after(1)
            }
            SubmitError::Acquire(AcquireError::Timeout { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoContainer, msg)
                    .retry_after(5)
            }
            SubmitError::Acquire(AcquireError::Exhausted { .. }) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::PoolExhausted,
                msg,
            )
            .retry_after(1),
            SubmitError::Acquire(AcquireError::Closed(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                msg,
            )
            .retry_after(5),
            // Retry-After: when the pool tries a start again; sooner cannot help.
            SubmitError::Acquire(AcquireError::Failed { failure, .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::PoolFailed, msg)
                    .retry_after(failure.retry_every.as_secs().max(1))
            }
            SubmitError::EngineDown(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::EngineUnavailable,
                msg,
            )
            .retry_after(5),
            SubmitError::Exec(ExecError::Engine(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::EngineUnavailable,
                msg,
            )
            .retry_after(5),
            SubmitError::Exec(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::ContainerFailed, msg)
            }
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
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UnknownSession, msg)
            }
            SessionError::PoolMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::SessionPoolMismatch, msg)
            }
            SessionError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, msg)
            }
            SessionError::TaskFailed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::ContainerFailed, msg)
            }
            SessionError::WorkspaceFull(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::WorkspaceFull,
                msg,
            ),
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
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "the bearer token is wrong").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
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

/// The pool named in a path. Before start-up is over (it waits for the engine) no pool
/// exists yet: 503 `starting` with `Retry-After`, not a 404 for a pool the config has;
/// after it, 404 `unknown_pool`.
pub(super) fn find_pool(state: &AppState, name: &str) -> Result<Arc<crate::pool::Pool>, ApiError> {
    if let Some(pool) = state.supervisor.pool(name) {
        return Ok(pool);
    }
    if !state.supervisor.is_started() {
        return Err(starting());
    }
    Err(SubmitError::UnknownPool(name.to_string()).into())
}

/// 503 `starting`: the daemon is still waiting for the engine or building its pools.
pub(super) fn starting() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Starting,
        "the daemon is still starting (waiting for the container engine or warming pools); retry shortly",
    )
    .retry_after(2)
}

/// An extractor's refusal in the envelope; a server-side one (a route wired wrong) stays a 500.
fn rejected(status: StatusCode, message: String) -> ApiError {
    if status.is_client_error() {
        ApiError::new(status, ErrorCode::InvalidRequest, message)
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }
}

/// A raw body, or why there is none: 413 `body_too_large` over `server.max_request_body`,
/// else 400 `bad_body`.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                "the request body is larger than server.max_request_body",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadBody, e.body_text())
        }
    })
}

/// Parses a JSON body into `T`. Errors: those of [`body_bytes`], and 400 `invalid_json` (with
/// serde's reason: the field, the line and column) for a body that is not a `T`.
/// `what` names the body in the message, e.g. "task request".
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            format!("the body is not a valid {what}: {e}"),
        )
    })
}

#[cfg(test)]
mod contract_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    /// Status, `Allow` header and raw body of one request.
    async fn call_raw(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Option<String>, Bytes) {
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
        (status, allow, body)
    }

    fn spec() -> serde_json::Value {
        serde_json::to_value(openapi()).unwrap()
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_openapi_document_is_structurally_valid_openapi_3_1() {
        let doc = spec();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "warmpool");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["bearer"]["type"], "http");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        let mut ids = std::collections::BTreeSet::new();
        let paths = doc["paths"].as_object().unwrap();
        assert!(!paths.is_empty());
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            assert!(
                !path.contains('*') && !path.contains(':'),
                "{path}: not OpenAPI's template syntax"
            );
            let templated: Vec<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let item = item.as_object().unwrap();
            assert!(!item.is_empty(), "{path} has no operation");
            for (method, op) in item {
                assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
                let at = format!("{method} {path}");
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: operationId"));
                assert!(ids.insert(id.to_string()), "{at}: operationId {id} twice");
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                for p in &params {
                    let loc = p["in"].as_str().unwrap();
                    assert!(["path", "query", "header", "cookie"].contains(&loc), "{at}");
                    assert!(p["schema"].is_object(), "{at}: parameter without schema");
                    if loc == "path" {
                        assert_eq!(p["required"], true, "{at}: path parameters are required");
                    }
                }
                // Each templated name is a path parameter, and each path parameter templated.
                let mut declared: Vec<&str> = params
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                declared.sort();
                let mut expected = templated.clone();
                expected.sort();
                assert_eq!(declared, expected, "{at}: path parameters");
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{at}: no responses");
                for (status, resp) in responses {
                    assert!(
                        status.len() == 3
                            && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)),
                        "{at}: response key {status}"
                    );
                    assert!(
                        resp["description"].is_string(),
                        "{at} {status}: description"
                    );
                    let content = resp["content"].as_object();
                    assert!(
                        content.is_some_and(|c| !c.is_empty()),
                        "{at} {status}: content"
                    );
                    for (media, body) in content.unwrap() {
                        assert!(media.contains('/'), "{at} {status}: media type {media}");
                        assert!(body["schema"].is_object(), "{at} {status} {media}: schema");
                    }
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            resp["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{at} {status}: errors are the envelope"
                        );
                    }
                    if ["429", "503"].contains(&status.as_str()) && id != "readyz" {
                        assert!(
                            resp["headers"]["Retry-After"]["schema"]["type"] == "integer",
                            "{at} {status}: Retry-After"
                        );
                    }
                }
                for req in op["security"].as_array().into_iter().flatten() {
                    for name in req.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(name), "{at}: security scheme {name}");
                    }
                }
                if path.starts_with("/v1/") {
                    assert!(
                        op["security"].is_array(),
                        "{at}: /v1 takes the bearer token"
                    );
                    assert!(responses.contains_key("401"), "{at}: 401 unauthorized");
                }
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("$ref {r} is not to a component schema"));
            assert!(schemas.contains_key(name), "$ref {r} resolves to nothing");
        }
        // The streamed answer says what its lines are.
        let stream = &doc["paths"]["/v1/pools/{pool}/tasks"]["post"]["responses"]["200"]["content"];
        assert_eq!(
            stream["application/x-ndjson"]["schema"]["$ref"],
            "#/components/schemas/TaskStreamEvent"
        );
        assert_eq!(
            stream["application/json"]["schema"]["$ref"],
            "#/components/schemas/TaskResult"
        );
    }

    #[test]
    fn the_task_body_schema_carries_the_rules_serde_does_not() {
        let doc = spec();
        let body = &doc["components"]["schemas"]["TaskBody"];
        let all_of = body["allOf"].as_array().expect("TaskBody is allOf");
        let fields = &all_of[0];
        assert_eq!(fields["additionalProperties"], false, "{body}");
        assert_eq!(
            fields["properties"]["env"]["propertyNames"]["pattern"],
            "^[^=]+$"
        );
        assert_eq!(fields["properties"]["workdir"]["pattern"], "^/");
        let one_of = all_of[1]["oneOf"].as_array().unwrap();
        let required: Vec<&serde_json::Value> = one_of.iter().map(|b| &b["required"]).collect();
        assert_eq!(required, [&json!(["cmd"]), &json!(["shell"])]);
        assert_eq!(one_of[0]["properties"]["cmd"]["minItems"], 1);
        assert_eq!(one_of[0]["properties"]["shell"]["type"], "null");
        assert_eq!(one_of[1]["properties"]["cmd"]["type"], "null");
        assert!(body["description"]
            .as_str()
            .unwrap()
            .contains("exactly one of"));
    }

    #[test]
    fn file_bodies_are_optional_and_binary_and_json_bodies_required() {
        let doc = spec();
        for path in [
            "/v1/sessions/{id}/files/{path}",
            "/v1/sessions/{id}/archive/{dir}",
        ] {
            let body = &doc["paths"][path]["put"]["requestBody"];
            assert_eq!(body["required"], false, "{path}");
            for (_, media) in body["content"].as_object().unwrap() {
                assert_eq!(media["schema"]["$ref"], "#/components/schemas/Binary");
            }
        }
        let binary = &doc["components"]["schemas"]["Binary"];
        assert_eq!(
            (&binary["type"], &binary["format"]),
            (&json!("string"), &json!("binary"))
        );
        for path in ["/v1/pools/{pool}/tasks", "/v1/sessions"] {
            assert_eq!(
                doc["paths"][path]["post"]["requestBody"]["required"], true,
                "{path}"
            );
        }
    }

    /// Routes are only ever added by `routes!` in [`routes`], which takes each path from the
    /// handler's `#[utoipa::path]`: a `.route(...)` anywhere in src/api would serve a path
    /// the document does not list.
    #[test]
    fn routes_are_only_added_through_their_openapi_attribute() {
        for (file, src) in [
            ("mod.rs", include_str!("mod.rs")),
            ("admin.rs", include_str!("admin.rs")),
            ("files.rs", include_str!("files.rs")),
            ("pools.rs", include_str!("pools.rs")),
            ("prewarm.rs", include_str!("prewarm.rs")),
            ("sessions.rs", include_str!("sessions.rs")),
            ("tasks.rs", include_str!("tasks.rs")),
            ("workspaces.rs", include_str!("workspaces.rs")),
        ] {
            let code = src
                .split("#[cfg(test)]")
                .next()
                .unwrap()
                .replace("OpenApiRouter::new()", "");
            for raw in [
                ".route(",
                ".route_service(",
                ".nest(",
                ".nest_service(",
                "Router::new()",
            ] {
                assert!(
                    !code.contains(raw),
                    "src/api/{file} calls {raw}: add routes with .routes(routes!(handler)) in routes(), so the OpenAPI document lists them"
                );
            }
        }
    }

    /// Every (path, method) of the document is served, and every path serves exactly the
    /// methods the document lists (axum's 405 `Allow` tells which it takes).
    #[tokio::test]
    async fn the_document_lists_exactly_the_routes_the_router_serves() {
        let app = app(Some("s3cret"));
        let doc = spec();
        let paths = doc["paths"].as_object().unwrap();
        let expected = [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/admin/reload",
            "/v1/pools",
            "/v1/pools/{pool}",
            "/v1/pools/{pool}/prewarm",
            "/v1/pools/{pool}/tasks",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/archive/{dir}",
            "/v1/sessions/{id}/files/{path}",
            "/v1/workspaces",
            "/v1/workspaces/{id}",
        ];
        assert_eq!(
            paths.keys().map(String::as_str).collect::<Vec<_>>(),
            expected
        );
        for (path, item) in paths {
            let concrete = path
                .replace("{pool}", "nosuchpool")
                .replace("{id}", "nosuchsession")
                .replace("{dir}", "work/d")
                .replace("{path}", "work/a.txt");
            let mut documented: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .map(|m| m.to_uppercase())
                .collect();
            for method in &documented {
                let (status, _, body) = call_raw(&app, method, &concrete, Some("s3cret")).await;
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {concrete}"
                );
                if status == StatusCode::NOT_FOUND {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    // The fallback's answer; `DELETE /v1/workspaces/{id}` answers
                    // `not_found` too, with its own message.
                    assert_ne!(
                        v["error"]["message"], "no such endpoint; see the API table in the README",
                        "{method} {concrete} is not served"
                    );
                }
            }
            if documented.iter().any(|m| m == "GET") {
                documented.push("HEAD".into());
            }
            let (status, allow, _) = call_raw(&app, "PATCH", &concrete, Some("s3cret")).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "PATCH {concrete}");
            let mut allow: Vec<String> = allow.unwrap().split(',').map(str::to_string).collect();
            allow.sort();
            documented.sort();
            assert_eq!(
                allow, documented,
                "{path}: the methods served and documented differ"
            );
        }
    }

    #[tokio::test]
    async fn openapi_json_is_served_without_the_token() {
        let app = app(Some("s3cret"));
        let (status, _, body) = call(&app, "GET", "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, spec());
    }

    /// The codes of `ErrorCode` as the document lists them.
    fn error_codes(doc: &serde_json::Value) -> Vec<String> {
        doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_error_code_is_in_docs_api_md_and_no_other() {
        let doc = spec();
        let codes = error_codes(&doc);
        assert!(codes.len() > 20, "{codes:?}");
        assert_eq!(
            doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
        let api_md = include_str!("../../docs/api.md");
        for code in &codes {
            assert!(
                api_md.contains(&format!("`{code}`")),
                "error code {code} is not in docs/api.md"
            );
        }
        // The docs' error table names no code the daemon lacks.
        let table = api_md
            .split("| status | codes | when |")
            .nth(1)
            .expect("docs/api.md has the error table")
            .split("\n\n")
            .next()
            .unwrap();
        for row in table.lines().skip(2) {
            let cells: Vec<&str> = row.split('|').collect();
            for code in cells[2].split('`').skip(1).step_by(2) {
                if code != "Allow" && code != "Retry-After" {
                    assert!(
                        codes.iter().any(|c| c == code),
                        "docs/api.md lists {code}, which the daemon does not have"
                    );
                }
            }
        }
    }
}
