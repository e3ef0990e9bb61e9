//! Moving files in and out of a session's container. A read-only root and tmpfs workdir
//! rule out the engine's archive API (it writes below the tmpfs, into the image's layer), so
//! transfers run inside the container through the shim's own file commands, which need
//! nothing from the image. Bodies stream both ways in bounded chunks
//! ([`crate::session::transfer`]): the daemon never holds a whole file.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, Binary, ErrorBody, ErrorCode, Path};
use crate::runtime::RuntimeError;
use crate::session::transfer::{self, Hold, TransferError};
use crate::supervisor::SHIM_IN_CONTAINER;

/// Exit codes of the shim's file commands; `shim/files.rs` uses the same numbers.
pub mod code {
    pub const NOT_FOUND: i32 = 3;
    pub const NOT_WRITABLE: i32 = 4;
    pub const WRONG_KIND: i32 = 5;
    pub const BAD_ARCHIVE: i32 = 6;
    pub const NOT_READABLE: i32 = 7;
    pub const NO_SPACE: i32 = 8;
    pub const INVALID_PATH: i32 = 9;
}

/// The route's `{*path}` as an absolute path. Errors: 400 `invalid_path` for a `..`
/// component, which could leave the directory the caller means, and for a NUL byte, which
/// no file name can hold.
fn absolute(path: &str) -> Result<String, ApiError> {
    let p = format!("/{}", path.trim_start_matches('/'));
    if let Some(at) = p.find('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            format!("path {p:?} has a NUL byte at offset {at}; file names cannot hold one"),
        ));
    }
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
    bytes: u64,
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

/// Holds the session's container for a transfer. Errors: those of the session, and 400
/// `files_unsupported` when its pool does not run the shim.
async fn hold(state: &AppState, id: &str) -> Result<Hold, ApiError> {
    let hold = state.supervisor.sessions.hold(id).await?;
    if !hold.shim {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::FilesUnsupported,
            "this session's pool cannot move files: they need exec = \"shim\"",
        ));
    }
    Ok(hold)
}

/// A failed transfer as a status: the shim's exit codes, an upload over the limit, a broken
/// body, the engine.
fn failure(e: TransferError) -> ApiError {
    match e {
        TransferError::Failed(f) => {
            let msg = f.stderr;
            match f.exit_code.map(|c| c as i32) {
                Some(code::NOT_FOUND) => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NoSuchPath, msg),
                // The shim says "Read-only file system" when that is the cause; a plain
                // permission error must not be blamed on the root.
                Some(code::NOT_WRITABLE) if msg.contains("Read-only file system") => {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        ErrorCode::NotWritable,
                        format!("{msg} (the root is read-only: write under the workdir or /tmp)"),
                    )
                }
                Some(code::NOT_WRITABLE) => {
                    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::NotWritable, msg)
                }
                Some(code::NOT_READABLE) => {
                    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::NotReadable, msg)
                }
                Some(code::NO_SPACE) => ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::NoSpace,
                    format!("{msg} (free space in the container, or write where there is more)"),
                ),
                Some(code::INVALID_PATH) => {
                    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPath, msg)
                }
                Some(code::WRONG_KIND) => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::WrongKind, msg),
                Some(code::BAD_ARCHIVE) => {
                    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadArchive, msg)
                }
                other => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::FileTransferFailed,
                    format!("file transfer failed (exit {other:?}): {msg}"),
                ),
            }
        }
        TransferError::TooLarge(max) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!(
                "the request body is larger than server.max_request_body ({max} bytes); send a Content-Length to be refused before anything is written (without one, what came before the limit was written)"
            ),
        ),
        TransferError::Body(e) => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadBody, e),
        TransferError::Engine(RuntimeError::Unreachable(e)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::EngineUnavailable,
            format!("the container engine is unreachable: {e}"),
        ),
        TransferError::Engine(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ContainerFailed,
            format!("the session's container could not run the transfer: {e}"),
        ),
    }
}

/// 413 `body_too_large` at once for a declared length over `max`: nothing is written.
fn declared_length(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!(
                "the request body ({n} bytes) is larger than server.max_request_body ({max} bytes)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Streams the body into the shim file command `command` (`write-file` or `untar`) run on
/// `path` (the raw path of the URL, checked by [`absolute`]); answers the absolute path and
/// the bytes. Every refusal, an invalid path included, reads the body first ([`drain`]).
async fn upload(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    command: &str,
    path: &str,
    body: Body,
) -> Result<(String, u64), ApiError> {
    let max = state.max_body as u64;
    let mut body = body.into_data_stream();
    let path = match absolute(path) {
        Ok(path) => path,
        Err(e) => {
            drain(&mut body).await;
            return Err(e);
        }
    };
    let argv = vec![SHIM_IN_CONTAINER.into(), command.into(), path.clone()];
    if let Err(e) = declared_length(headers, max) {
        drain(&mut body).await;
        return Err(e);
    }
    if let Err(e) = state.supervisor.sessions.upload_room(id).await {
        drain(&mut body).await;
        return Err(e.into());
    }
    let hold = match hold(state, id).await {
        Ok(hold) => hold,
        Err(e) => {
            drain(&mut body).await;
            return Err(e);
        }
    };
    let result = transfer::upload(&state.supervisor.runtime, hold, argv, &mut body, max).await;
    if result.is_err() {
        // Whatever stopped it (too large, the command or the engine failed), the rest of
        // the body is read first: see [`drain`].
        drain(&mut body).await;
    }
    // Whatever was written counts, a failed upload's part too.
    state.supervisor.sessions.after_upload(id).await;
    result.map(|bytes| (path, bytes)).map_err(failure)
}

/// How much of a refused upload is read (and dropped) before the answer. A body left
/// unread makes the server close the connection after answering: a client still sending
/// would see its request fail instead of the error, and one that sends its next request
/// on the kept-alive connection would see that one fail. Every error path of [`upload`]
/// drains.
const DRAIN_AT_MOST: u64 = 256 << 20;

/// Reads what is left of a refused body, dropping it chunk by chunk, up to [`DRAIN_AT_MOST`].
async fn drain(body: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let mut read = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        read += chunk.len() as u64;
        if read > DRAIN_AT_MOST {
            break;
        }
    }
}

/// Streams a shim file command's stdout (`read-file` or `tar`) as the response body.
async fn download(
    state: &AppState,
    id: &str,
    argv: Vec<String>,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let hold = hold(state, id).await?;
    let stream = transfer::download(&state.supervisor.runtime, hold, argv)
        .await
        .map_err(failure)?;
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `PUT /v1/sessions/{id}/files/{path}`: writes the raw body (streamed); answers
/// `{"path", "bytes"}`.
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
        (status = 400, description = "`invalid_path` (a `..` component, a NUL byte, or a path the container refuses), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: a write the container's user may not make (the message says when the root is read-only: write under the workdir or /tmp)", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body over `server.max_request_body`", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: a file command that ended in a way the daemon does not know (the message has its exit and output)", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 507, description = "`no_space`: no space left in the container (a full tmpfs workdir); nothing partial is left. `workspace_full`: the session's persistent workspace is over its pool's `workspace_max_size` (nothing written)", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn put_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (path, bytes) = upload(&state, &id, &headers, "write-file", &path, body).await?;
    Ok(Json(FileWritten { path, bytes }).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: the file's bytes (`application/octet-stream`),
/// streamed.
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
        (status = 400, description = "`invalid_path` (a `..` component, a NUL byte, or a path the container refuses), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_readable`: a read the container's user may not make", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a request body over `server.max_request_body`", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: a file command that ended in a way the daemon does not know (the message has its exit and output)", body = ErrorBody),
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
    let argv = vec![SHIM_IN_CONTAINER.into(), "read-file".into(), path];
    download(&state, &id, argv, "application/octet-stream").await
}

/// `PUT /v1/sessions/{id}/archive/{dir}`: extracts the tar body (streamed) into `dir`;
/// answers `{"dir"}`.
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
        (status = 400, description = "`invalid_path` (a `..` component, a NUL byte, or a path the container refuses), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_writable`: a write the container's user may not make (the message says when the root is read-only: write under the workdir or /tmp)", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body over `server.max_request_body`", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: a file command that ended in a way the daemon does not know (the message has its exit and output)", body = ErrorBody),
        (status = 502, description = "`container_failed`: the container died during the transfer; it is being replaced", body = ErrorBody),
        (status = 507, description = "`no_space`: no space left in the container (a full tmpfs workdir); nothing partial is left. `workspace_full`: the session's persistent workspace is over its pool's `workspace_max_size` (nothing written)", body = ErrorBody),
        (status = 503, description = "`engine_unavailable`: the engine is down", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []), ()),
)]
pub(super) async fn put_archive(
    State(state): State<AppState>,
    Path((id, dir)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (dir, _) = upload(&state, &id, &headers, "untar", &dir, body).await?;
    Ok(Json(ArchiveWritten { dir }).into_response())
}

/// `GET /v1/sessions/{id}/archive/{dir}`: `dir`'s contents as a tar (`application/x-tar`),
/// streamed.
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
        (status = 400, description = "`invalid_path` (a `..` component, a NUL byte, or a path the container refuses), `wrong_kind`, `bad_archive`, `files_unsupported` (the pool is not `exec = \"shim\"`), `invalid_request` (no container yet: run a task first; a path that is not UTF-8) or `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "`not_readable`: a read the container's user may not make", body = ErrorBody),
        (status = 404, description = "`unknown_session`, `unknown_pool` or `no_such_path`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a request body over `server.max_request_body`", body = ErrorBody),
        (status = 500, description = "`file_transfer_failed`: a file command that ended in a way the daemon does not know (the message has its exit and output)", body = ErrorBody),
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
    let argv = vec![SHIM_IN_CONTAINER.into(), "tar".into(), dir];
    download(&state, &id, argv, "application/x-tar").await
}
