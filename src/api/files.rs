//! Moving files in and out of a session's container. A read-only root and tmpfs workdir
//! rule out the engine's archive API (it writes below the tmpfs, into the image's layer), so
//! transfers run inside the container through the shim's own file commands, which need
//! nothing from the image.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{body_bytes, ApiError, AppState, Binary, ErrorBody, ErrorCode, Path};
use crate::supervisor::SHIM_IN_CONTAINER;

/// Exit codes of the shim's file commands; `shim/files.rs` uses the same numbers.
pub mod code {
    pub const NOT_FOUND: i32 = 3;
    pub const NOT_WRITABLE: i32 = 4;
    pub const WRONG_KIND: i32 = 5;
    pub const BAD_ARCHIVE: i32 = 6;
}

/// The route's `{*path}` as an absolute path. Errors: 400 `invalid_path` for a `..`
/// component, which could leave the directory the caller means.
fn absolute(path: &str) -> Result<String, ApiError> {
    let p = format!("/{}", path.trim_start_matches('/'));
    if p.split('/').any(|c| c == "..") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            format!("path {p:?} must not contain '..'"),
        ));
    }
    Ok(p)
}

/// `PUT /v1/sessions/{id}/files/{path}`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct FileWritten {
    /// The absolute path written.
    path: String,
    /// How many bytes were written.
    bytes: usize,
}

/// `PUT /v1/sessions/{id}/archive/{dir}`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct ArchiveWritten {
    /// The absolute directory the archive was extracted into.
    dir: String,
}

/// Marks the PUT bodies optional in the document: HTTP cannot tell a missing body from an
/// empty one, and an empty one is valid (an empty file; an archive that only creates its
/// directory). utoipa marks every body it is given a type for as required.
pub(super) fn optional_bodies(doc: &mut utoipa::openapi::OpenApi) {
    for path in [
        "/v1/sessions/{id}/files/{path}",
        "/v1/sessions/{id}/archive/{dir}",
    ] {
        let body = doc
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.put.as_mut())
            .and_then(|op| op.request_body.as_mut())
            .unwrap_or_else(|| panic!("PUT {path} has a request body"));
        body.required = Some(utoipa::openapi::Required::False);
    }
}

/// Runs one shim file command in the session's container and maps its failure to a status.
async fn run(
    state: &AppState,
    id: &str,
    argv: Vec<String>,
    stdin: Bytes,
) -> Result<Vec<u8>, ApiError> {
    let max = state.max_body as u64;
    let (exit, stdout, stderr) = state.supervisor.session_exec(id, argv, stdin, max).await?;
    let msg = String::from_utf8_lossy(&stderr).trim().to_string();
    match (exit.exit_code, &exit.spawn_error) {
        (_, Some(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::FilesUnsupported,
            format!("this session's pool cannot move files (they need exec = \"shim\"): {e}"),
        )),
        (Some(0), None) if exit.stdout_truncated => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("the content is larger than server.max_request_body ({max} bytes)"),
        )),
        (Some(0), None) => Ok(stdout),
        (Some(code::NOT_FOUND), _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoSuchPath,
            msg,
        )),
        (Some(code::NOT_WRITABLE), _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotWritable,
            format!("{msg} (the root is read-only: write under the workdir or /tmp)"),
        )),
        (Some(code::WRONG_KIND), _) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WrongKind,
            msg,
        )),
        (Some(code::BAD_ARCHIVE), _) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadArchive,
            msg,
        )),
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::FileTransferFailed,
            format!(
                "file transfer failed (exit {:?}, signal {:?}): {msg}",
                exit.exit_code, exit.signal
            ),
        )),
    }
}

/// `PUT /v1/sessions/{id}/files/{path}`: writes the raw body; answers `{"path", "bytes"}`.
#[utoipa::path(
    put,
    path = "/v1/sessions/{id}/files/{*path}",
    tag = "files",
    summary = "Write a file in the session's container",
    params(
        ("id" = String, Path, description = "The session id (one that has run a task)", example = "demo"),
        ("path" = String, Path, description = "The file's absolute path without its leading slash (`work/out.txt` is `/work/out.txt`)", example = "work/notes.txt"),
    ),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The file's bytes (any Content-Type is taken as raw bytes); none writes an empty file"),
    responses(
        (status = 200, description = "Written", body = FileWritten),
        (status = 400, description = "`invalid_path` (a `..` component), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: the root is read-only; write under the workdir or /tmp", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large` (a body over `server.max_request_body`) or `too_large` (content read back larger than it)", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: the shim's file command failed unexpectedly", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn put_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let path = absolute(&path)?;
    let size = body.len();
    run(
        &state,
        &id,
        vec![SHIM_IN_CONTAINER.into(), "write-file".into(), path.clone()],
        body,
    )
    .await?;
    Ok(Json(FileWritten { path, bytes: size }).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: the file's bytes (`application/octet-stream`).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files/{*path}",
    tag = "files",
    summary = "Read a file from the session's container",
    params(
        ("id" = String, Path, description = "The session id (one that has run a task)", example = "demo"),
        ("path" = String, Path, description = "The file's absolute path without its leading slash (`work/out.txt` is `/work/out.txt`)", example = "work/notes.txt"),
    ),
    responses(
        (status = 200, description = "The file's bytes", body = Binary, content_type = "application/octet-stream"),
        (status = 400, description = "`invalid_path` (a `..` component), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: the root is read-only; write under the workdir or /tmp", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large` (a body over `server.max_request_body`) or `too_large` (content read back larger than it)", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: the shim's file command failed unexpectedly", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn get_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = absolute(&path)?;
    let data = run(
        &state,
        &id,
        vec![SHIM_IN_CONTAINER.into(), "read-file".into(), path],
        Bytes::new(),
    )
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// `PUT /v1/sessions/{id}/archive/{dir}`: extracts the tar body into `dir`; answers `{"dir"}`.
#[utoipa::path(
    put,
    path = "/v1/sessions/{id}/archive/{*dir}",
    tag = "files",
    summary = "Extract a tar into a directory of the session's container",
    params(
        ("id" = String, Path, description = "The session id (one that has run a task)", example = "demo"),
        ("dir" = String, Path, description = "The directory's absolute path without its leading slash; created if missing", example = "work"),
    ),
    request_body(description = "A tar archive (any Content-Type is taken as raw bytes); none (or an empty archive) only creates the directory", content(
        (Binary = "application/x-tar"),
        (Binary = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "Extracted", body = ArchiveWritten),
        (status = 400, description = "`invalid_path` (a `..` component), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: the root is read-only; write under the workdir or /tmp", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large` (a body over `server.max_request_body`) or `too_large` (content read back larger than it)", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: the shim's file command failed unexpectedly", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn put_archive(
    State(state): State<AppState>,
    Path((id, dir)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let dir = absolute(&dir)?;
    run(
        &state,
        &id,
        vec![SHIM_IN_CONTAINER.into(), "untar".into(), dir.clone()],
        body,
    )
    .await?;
    Ok(Json(ArchiveWritten { dir }).into_response())
}

/// `GET /v1/sessions/{id}/archive/{dir}`: `dir`'s contents as a tar (`application/x-tar`).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/archive/{*dir}",
    tag = "files",
    summary = "Read a directory of the session's container as a tar",
    params(
        ("id" = String, Path, description = "The session id (one that has run a task)", example = "demo"),
        ("dir" = String, Path, description = "The directory's absolute path without its leading slash", example = "work"),
    ),
    responses(
        (status = 200, description = "The directory's contents as a tar stream", body = Binary, content_type = "application/x-tar"),
        (status = 400, description = "`invalid_path` (a `..` component), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: the root is read-only; write under the workdir or /tmp", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large` (a body over `server.max_request_body`) or `too_large` (content read back larger than it)", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: the shim's file command failed unexpectedly", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn get_archive(
    State(state): State<AppState>,
    Path((id, dir)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let dir = absolute(&dir)?;
    let data = run(
        &state,
        &id,
        vec![SHIM_IN_CONTAINER.into(), "tar".into(), dir],
        Bytes::new(),
    )
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], data).into_response())
}
