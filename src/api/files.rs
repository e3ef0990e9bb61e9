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
use serde_json::json;

use super::{body_bytes, ApiError, AppState, Path};
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
            "invalid_path",
            format!("path {p:?} has a NUL byte at offset {at}; file names cannot hold one"),
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path {p:?} must not contain '..'"),
        ));
    }
    Ok(p)
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
            "files_unsupported",
            format!("this session's pool cannot move files (they need exec = \"shim\"): {e}"),
        )),
        (Some(0), None) if exit.stdout_truncated => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the content is larger than server.max_request_body ({max} bytes)"),
        )),
        (Some(0), None) => Ok(stdout),
        (Some(code::NOT_FOUND), _) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_path", msg))
        }
        // The shim says "Read-only file system" when that is the cause; a plain permission
        // error must not be blamed on the root.
        (Some(code::NOT_WRITABLE), _) if msg.contains("Read-only file system") => {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_writable",
                format!("{msg} (the root is read-only: write under the workdir or /tmp)"),
            ))
        }
        (Some(code::NOT_WRITABLE), _) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "not_writable", msg))
        }
        (Some(code::NOT_READABLE), _) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "not_readable", msg))
        }
        (Some(code::NO_SPACE), _) => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "no_space",
            format!("{msg} (free space in the container, or write where there is more)"),
        )),
        (Some(code::INVALID_PATH), _) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", msg))
        }
        (Some(code::WRONG_KIND), _) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "wrong_kind", msg))
        }
        (Some(code::BAD_ARCHIVE), _) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_archive", msg))
        }
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "file_transfer_failed",
            format!(
                "file transfer failed (exit {:?}, signal {:?}): {msg}",
                exit.exit_code, exit.signal
            ),
        )),
    }
}

/// `PUT /v1/sessions/{id}/files/{path}`: writes the raw body; answers `{"path", "bytes"}`.
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
    Ok(Json(json!({"path": path, "bytes": size})).into_response())
}

/// `GET /v1/sessions/{id}/files/{path}`: the file's bytes (`application/octet-stream`).
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
    Ok(Json(json!({"dir": dir})).into_response())
}

/// `GET /v1/sessions/{id}/archive/{dir}`: `dir`'s contents as a tar (`application/x-tar`).
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
