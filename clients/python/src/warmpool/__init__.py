"""Python client of the warmpool daemon's HTTP API (docs/api.md).

    from warmpool import Client

    with Client() as wp:                      # WARMPOOL_ADDR / WARMPOOL_TOKEN, default 127.0.0.1:7070
        r = wp.run("coder", ["echo", "hello"])
        print(r.exit_code, r.stdout)
"""

from ._client import DEFAULT_ADDR, AsyncClient, AsyncSession, Client, Session
from ._errors import (
    ERRORS,
    BadArchive,
    BadBody,
    BodyTooLarge,
    ConnectionFailed,
    ContainerFailed,
    EngineUnavailable,
    FileTransferFailed,
    ForbiddenHost,
    FilesUnsupported,
    Internal,
    InvalidConfig,
    InvalidJson,
    InvalidPath,
    InvalidRequest,
    McpUnavailable,
    MethodNotAllowed,
    NoContainer,
    NoSpace,
    NoSuchPath,
    NotFound,
    NotReadable,
    NotReady,
    NotWritable,
    PoolExhausted,
    PoolFailed,
    ProtocolError,
    QueueFull,
    SessionPoolMismatch,
    ShuttingDown,
    Starting,
    Unauthorized,
    UnknownPool,
    UnknownSession,
    WarmpoolError,
    WorkspaceFull,
    WrongKind,
)
from ._types import Event, Exit, Output, PoolStatus, SessionInfo, TaskResult

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDR", "AsyncClient", "AsyncSession", "Client", "Session",
    "Event", "Exit", "Output", "PoolStatus", "SessionInfo", "TaskResult",
    "ERRORS", "WarmpoolError", "ConnectionFailed", "ProtocolError",
    "BadArchive", "BadBody", "BodyTooLarge", "ContainerFailed", "EngineUnavailable",
    "FilesUnsupported", "Internal", "InvalidConfig", "InvalidJson", "InvalidPath",
    "InvalidRequest", "NoContainer", "NoSuchPath", "NotFound", "NotReady", "NotWritable",
    "PoolExhausted", "QueueFull", "SessionPoolMismatch", "ShuttingDown", "Starting",
    "Unauthorized", "UnknownPool", "UnknownSession", "WrongKind", "FileTransferFailed",
    "ForbiddenHost", "McpUnavailable", "MethodNotAllowed", "NoSpace", "NotReadable",
    "WorkspaceFull", "PoolFailed",
]
