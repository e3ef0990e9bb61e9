"""The API's answers as dataclasses (fields named as in docs/api.md)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal, Union


def _decode(text: str, encoding: str | None) -> bytes:
    """Output bytes from the API's JSON string (base64 when flagged, else UTF-8 text)."""
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


@dataclass(frozen=True)
class TaskResult:
    """The result of one task.

    ``exit_code`` is ``None`` when the process was killed by a signal (``signal`` set, 9 on
    timeout) or could not be started (``error`` set, e.g. ``cannot run "foo": No such file
    or directory``). ``stdout``/``stderr`` are text (UTF-8, undecodable bytes replaced);
    ``stdout_bytes``/``stderr_bytes`` are the exact bytes, also when the API sent them
    base64-encoded. Times are in milliseconds.
    """

    task_id: str
    pool: str
    container: str
    exit_code: int | None
    signal: int | None
    stdout_bytes: bytes
    stderr_bytes: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    queued_ms: float
    run_ms: float
    cold_start: bool
    error: str | None = None

    @property
    def stdout(self) -> str:
        """stdout as text (UTF-8; undecodable bytes become U+FFFD)."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """stderr as text (UTF-8; undecodable bytes become U+FFFD)."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """True when the task exited 0 (not timed out, not killed, started)."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(
        cls, d: dict[str, Any], stdout: bytes | None = None, stderr: bytes | None = None
    ) -> TaskResult:
        """From a result object; ``stdout``/``stderr`` override the JSON's (a stream's
        ``exit`` line has none)."""
        if stdout is None:
            stdout = _decode(d.get("stdout", ""), d.get("stdout_encoding"))
        if stderr is None:
            stderr = _decode(d.get("stderr", ""), d.get("stderr_encoding"))
        return cls(
            task_id=d["task_id"],
            pool=d["pool"],
            container=d["container"],
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            stdout_bytes=stdout,
            stderr_bytes=stderr,
            stdout_truncated=bool(d.get("stdout_truncated", False)),
            stderr_truncated=bool(d.get("stderr_truncated", False)),
            timed_out=bool(d.get("timed_out", False)),
            queued_ms=float(d.get("queued_ms", 0.0)),
            run_ms=float(d.get("run_ms", 0.0)),
            cold_start=bool(d.get("cold_start", False)),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class Output:
    """A chunk of output from a streamed task (``stream`` is ``"stdout"`` or ``"stderr"``)."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        """The chunk as text (a multi-byte character may be split across chunks)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Exit:
    """The last event of a streamed task. ``result`` carries the whole output seen."""

    result: TaskResult


#: What :meth:`Client.stream` yields: ``Output`` chunks, then one ``Exit``.
Event = Union[Output, Exit]


@dataclass(frozen=True)
class PoolStatus:
    """One pool's state (``GET /v1/pools/{pool}``). Counts are containers."""

    name: str
    image: str
    exec: str
    live: int
    idle: int
    busy: int
    starting: int
    unhealthy: int
    retiring: int
    min: int
    max: int
    target: int
    utilization: float
    queue_length: int
    #: ``"ok"``, or ``"failed"`` when the engine refuses the pool's containers.
    state: str = "ok"
    #: When failed: ``{"reason", "hint", "since", "retry_every_seconds"}``; else ``None``.
    failure: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoolStatus:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class SessionInfo:
    """A session as the API describes it. ``state`` is ``"not_started"``, ``"running"`` or
    ``"ended"`` (after :meth:`Session.end`); ``idle_timeout`` is a duration string such as
    ``"5m"``; ``idle_seconds`` is seconds since its last use."""

    id: str
    pool: str
    state: str
    container: str | None
    tasks: int
    idle_seconds: float
    idle_timeout: str
    busy: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionInfo:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})
