"""Errors: one class per error code of docs/api.md, all under :class:`WarmpoolError`."""

from __future__ import annotations

from typing import Any


class WarmpoolError(Exception):
    """An error answered by the daemon (or met on the way to it).

    Attributes:
        status: HTTP status (``int``), or ``None`` when no response came (connection
            failures). An error ending a stream that began with 200 gets the status
            docs/api.md gives its code.
        code: the API's snake_case error code (``"unknown_pool"``, ...).
        message: the daemon's human sentence, naming the field and the fix.
        retry_after: seconds to wait before retrying (the ``Retry-After`` header, 429 and
            503), else ``None``.
        retryable: ``True`` when the same request may succeed later unchanged.
    """

    #: The code this class stands for (the base class stands for any unknown code).
    code_name: str | None = None
    #: Whether such an error is worth retrying unchanged.
    default_retryable: bool = False
    #: The status docs/api.md gives this code (used for an error that ends a stream).
    http_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code if code is not None else (self.code_name or "unknown")
        self.retry_after = retry_after
        self.retryable = self.default_retryable or retry_after is not None

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )


class ConnectionFailed(WarmpoolError):
    """The daemon could not be reached (refused, no such socket, DNS, timeout on connect or
    read). ``status`` is ``None``; retryable."""

    code_name = "connection_failed"
    default_retryable = True


class ProtocolError(WarmpoolError):
    """The daemon answered something that is not the documented JSON (``status`` set)."""

    code_name = "protocol_error"


# 400

class InvalidJson(WarmpoolError):
    """400 ``invalid_json``: the body is not valid JSON or has unknown fields."""

    code_name = "invalid_json"
    http_status: int | None = 400


class InvalidRequest(WarmpoolError):
    """400 ``invalid_request``: a field is wrong (the message names it)."""

    code_name = "invalid_request"
    http_status: int | None = 400


class BadBody(WarmpoolError):
    """400 ``bad_body``: the request body could not be read."""

    code_name = "bad_body"
    http_status: int | None = 400


class InvalidPath(WarmpoolError):
    """400 ``invalid_path``: a file path is not acceptable (e.g. has '..')."""

    code_name = "invalid_path"
    http_status: int | None = 400


class WrongKind(WarmpoolError):
    """400 ``wrong_kind``: a directory where a file was expected, or the reverse."""

    code_name = "wrong_kind"
    http_status: int | None = 400


class BadArchive(WarmpoolError):
    """400 ``bad_archive``: the tar body is not a valid or safe archive."""

    code_name = "bad_archive"
    http_status: int | None = 400


class FilesUnsupported(WarmpoolError):
    """400 ``files_unsupported``: the pool cannot move files (needs exec = "shim")."""

    code_name = "files_unsupported"
    http_status: int | None = 400


class InvalidConfig(WarmpoolError):
    """400 ``invalid_config``: a reload was refused; the running configuration stays."""

    code_name = "invalid_config"
    http_status: int | None = 400

# 401, 403

class Unauthorized(WarmpoolError):
    """401 ``unauthorized``: missing or wrong bearer token."""

    code_name = "unauthorized"
    http_status: int | None = 401


class NotReadable(WarmpoolError):
    """403 ``not_readable``: a file read the container's user may not make."""

    code_name = "not_readable"
    http_status: int | None = 403


class ForbiddenHost(WarmpoolError):
    """403 ``forbidden_host``: /mcp without a token answers only to loopback Host names."""

    code_name = "forbidden_host"
    http_status: int | None = 403


class MethodNotAllowed(WarmpoolError):
    """405 ``method_not_allowed``: a known endpoint called with a method it does not take."""

    code_name = "method_not_allowed"
    http_status: int | None = 405


class NotWritable(WarmpoolError):
    """403 ``not_writable``: a file write to the read-only root."""

    code_name = "not_writable"
    http_status: int | None = 403

# 404

class UnknownPool(WarmpoolError):
    """404 ``unknown_pool``: no such pool."""

    code_name = "unknown_pool"
    http_status: int | None = 404


class UnknownSession(WarmpoolError):
    """404 ``unknown_session``: no such (live) session."""

    code_name = "unknown_session"
    http_status: int | None = 404


class NoSuchPath(WarmpoolError):
    """404 ``no_such_path``: no such file or directory in the container."""

    code_name = "no_such_path"
    http_status: int | None = 404


class NotFound(WarmpoolError):
    """404 ``not_found``: no such endpoint."""

    code_name = "not_found"
    http_status: int | None = 404

# 409

class SessionPoolMismatch(WarmpoolError):
    """409 ``session_pool_mismatch``: the session id is live on another pool."""

    code_name = "session_pool_mismatch"
    http_status: int | None = 409

# 413

class BodyTooLarge(WarmpoolError):
    """413 ``body_too_large``: the request body is over server.max_request_body."""

    code_name = "body_too_large"
    http_status: int | None = 413



# 429

class QueueFull(WarmpoolError):
    """429 ``queue_full``: the pool's queue is at max_queue (see retry_after)."""

    code_name = "queue_full"
    http_status: int | None = 429
    default_retryable = True

# 502

class ContainerFailed(WarmpoolError):
    """502 ``container_failed``: the container died or hung during the task; it is being replaced."""

    code_name = "container_failed"
    http_status: int | None = 502
    default_retryable = True

# 503

class NoContainer(WarmpoolError):
    """503 ``no_container``: no container within acquire_timeout."""

    code_name = "no_container"
    http_status: int | None = 503
    default_retryable = True


class PoolExhausted(WarmpoolError):
    """503 ``pool_exhausted``: the pool is at max with on_exhausted = "fail"."""

    code_name = "pool_exhausted"
    http_status: int | None = 503
    default_retryable = True


class EngineUnavailable(WarmpoolError):
    """503 ``engine_unavailable``: the container engine is down."""

    code_name = "engine_unavailable"
    http_status: int | None = 503
    default_retryable = True


class PoolFailed(WarmpoolError):
    """503 ``pool_failed``: the engine refuses the pool's containers (the message has its
    words and the fix); the pool tries again every health_check_interval and on reload."""

    code_name = "pool_failed"
    http_status: int | None = 503
    default_retryable = False


class ShuttingDown(WarmpoolError):
    """503 ``shutting_down``: the daemon is stopping."""

    code_name = "shutting_down"
    http_status: int | None = 503
    default_retryable = True


class Starting(WarmpoolError):
    """503 ``starting``: the daemon is still starting."""

    code_name = "starting"
    http_status: int | None = 503
    default_retryable = True


class NotReady(WarmpoolError):
    """503 ``not_ready``: /readyz: the engine is down or a pool is below min."""

    code_name = "not_ready"
    http_status: int | None = 503
    default_retryable = True



class McpUnavailable(WarmpoolError):
    """503 ``mcp_unavailable``: /mcp needs server.listen; use ``warmpool mcp`` instead."""

    code_name = "mcp_unavailable"
    http_status: int | None = 503

# 507

class NoSpace(WarmpoolError):
    """507 ``no_space``: a file write found no space left in the container."""

    code_name = "no_space"
    http_status: int | None = 507


class WorkspaceFull(WarmpoolError):
    """507 ``workspace_full``: the session's workspace is over workspace_max_size."""

    code_name = "workspace_full"
    http_status: int | None = 507

# 500

class Internal(WarmpoolError):
    """500 ``internal``: an internal fault of the daemon."""

    code_name = "internal"
    http_status: int | None = 500


class FileTransferFailed(WarmpoolError):
    """500 ``file_transfer_failed``: a file command ended in a way the daemon does not know."""

    code_name = "file_transfer_failed"
    http_status: int | None = 500


#: Every documented code, to its class.
ERRORS: dict[str, type[WarmpoolError]] = {
    str(c.code_name): c
    for c in [
        InvalidJson, InvalidRequest, BadBody, InvalidPath, WrongKind, BadArchive,
        FilesUnsupported, InvalidConfig, Unauthorized, NotReadable, ForbiddenHost,
        MethodNotAllowed, NotWritable, UnknownPool, UnknownSession, NoSuchPath, NotFound,
        SessionPoolMismatch, BodyTooLarge, QueueFull, ContainerFailed, NoContainer,
        PoolExhausted, EngineUnavailable, PoolFailed, ShuttingDown, Starting, NotReady, McpUnavailable,
        NoSpace, WorkspaceFull, Internal, FileTransferFailed,
    ]
}


def error_from(
    status: int | None, code: str, message: str, retry_after: float | None = None
) -> WarmpoolError:
    """The exception for an error code; an unknown code gives the base class. Without a
    status (an ``{"error": ...}`` line ending a stream) the documented one is used."""
    cls = ERRORS.get(code, WarmpoolError)
    return cls(message, status=status if status is not None else cls.http_status, code=code, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the daemon sends whole seconds), ``None`` if absent."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def error_from_body(status: int, body: bytes, retry_after: str | None) -> WarmpoolError:
    """The exception for a non-2xx response body."""
    import json

    try:
        err: Any = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip() or "(empty body)"
        return ProtocolError(
            f"unexpected {status} answer: {text[:500]}",
            status=status,
            retry_after=parse_retry_after(retry_after),
        )
    return error_from(status, code, message, parse_retry_after(retry_after))
