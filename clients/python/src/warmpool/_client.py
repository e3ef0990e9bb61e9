"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), same methods.

Both speak the HTTP API of docs/api.md over httpx, on TCP or a unix socket.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tarfile
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Union
from urllib.parse import quote

import httpx

from ._errors import (
    ConnectionFailed,
    ProtocolError,
    UnknownSession,
    WarmpoolError,
    error_from,
    error_from_body,
)
from ._types import Event, Exit, Output, PoolStatus, SessionInfo, TaskResult, _decode

#: The daemon's default ``server.listen`` (and the CLI's default ``--addr``).
DEFAULT_ADDR = "http://127.0.0.1:7070"
#: Default HTTP read timeout in seconds: longer than the default ``task_timeout`` (5 min).
DEFAULT_TIMEOUT = 600.0

Timeout = Union[float, str, None]


def _address(url: str | None) -> tuple[str, str | None]:
    """(base URL, unix socket path or None) for ``url`` / ``WARMPOOL_ADDR`` / the default.

    Accepts ``http://host:port``, ``https://...``, ``host:port`` and ``unix:///path``.
    """
    addr = url or os.environ.get("WARMPOOL_ADDR") or DEFAULT_ADDR
    if addr.startswith("unix://"):
        return "http://warmpool", addr[len("unix://") :]
    if "://" not in addr:
        addr = "http://" + addr
    return addr.rstrip("/"), None


def _duration(t: Timeout) -> str | None:
    """A task timeout as the API's duration string: seconds (``float``) or as given."""
    if t is None or isinstance(t, str):
        return t
    return f"{max(1, round(float(t) * 1000))}ms"


_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _seconds(t: Timeout) -> float | None:
    """A task timeout in seconds: a number, or a duration string such as ``"1m30s"``
    (``None`` when absent or not in that simple form)."""
    if t is None or isinstance(t, (int, float)):
        return None if t is None else float(t)
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", t)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", t):
        return None
    if any(u not in _UNITS for _, u in parts):
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _task_body(
    cmd: list[str] | None,
    shell: str | None,
    env: Mapping[str, str] | None,
    stdin: str | bytes | None,
    timeout: Timeout,
    session: str | None,
    workdir: str | None,
) -> dict[str, Any]:
    if isinstance(cmd, str):
        raise TypeError(
            f"cmd must be a list of arguments, not a string; use shell={cmd!r} for a shell command"
        )
    body: dict[str, Any] = {}
    if cmd is not None:
        body["cmd"] = list(cmd)
    if shell is not None:
        body["shell"] = shell
    if env:
        body["env"] = dict(env)
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif stdin is not None:
        body["stdin_base64"] = base64.b64encode(stdin).decode("ascii")
    if timeout is not None:
        body["timeout"] = _duration(timeout)
    if session is not None:
        body["session"] = session
    if workdir is not None:
        body["workdir"] = workdir
    return body


def _seg(s: str) -> str:
    return quote(s, safe="")


def _container_path(path: str) -> str:
    """An absolute container path as the URL tail (without its leading slash)."""
    if not path.startswith("/"):
        raise ValueError(f"container paths are absolute (e.g. '/work/{path}'), got {path!r}")
    return quote(path.lstrip("/"), safe="/")


def _check(resp: httpx.Response) -> httpx.Response:
    """``resp`` when 2xx, else the mapped :class:`WarmpoolError` (body must be read)."""
    if resp.is_success:
        return resp
    raise error_from_body(resp.status_code, resp.content, resp.headers.get("retry-after"))


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ProtocolError(
            f"expected JSON, got {resp.text[:200]!r}", status=resp.status_code
        ) from None


@contextmanager
def _transport_errors(base: str) -> Generator[None, None, None]:
    """httpx transport failures (and timeouts) as :class:`ConnectionFailed`."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise ConnectionFailed(
            f"no answer from the warmpool daemon at {base} in time ({type(e).__name__}); "
            "raise the client's timeout= for long tasks"
        ) from e
    except httpx.TransportError as e:
        raise ConnectionFailed(
            f"cannot reach the warmpool daemon at {base} ({type(e).__name__}: {e}); is "
            "`warmpool serve` running? (set url= or WARMPOOL_ADDR)"
        ) from e


class _StreamState:
    """Turns NDJSON lines into events, keeping the output for the final result."""

    def __init__(self) -> None:
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.done = False

    def events(self, line: str) -> list[Event]:
        if not line.strip():
            return []
        try:
            ev = json.loads(line)
        except ValueError:
            raise ProtocolError(f"bad NDJSON line from the daemon: {line[:200]!r}") from None
        if "exit" in ev:
            self.done = True
            res = TaskResult.from_json(
                ev["exit"], bytes(self.out["stdout"]), bytes(self.out["stderr"])
            )
            return [Exit(res)]
        if "error" in ev:
            err = ev["error"]
            raise error_from(None, str(err.get("code")), str(err.get("message")))
        found: list[Event] = []
        for key in ("stdout", "stderr"):
            if key in ev:
                data = _decode(ev[key], ev.get("encoding"))
                self.out[key] += data
                found.append(Output(key, data))
        return found

    def finish(self) -> None:
        if not self.done:
            raise ProtocolError("the task's stream ended without an exit line")


def _tar_dir(local_dir: str | os.PathLike[str]) -> bytes:
    """A tar archive of ``local_dir``'s contents (names relative to it)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return buf.getvalue()


def _untar(data: bytes, local_dir: str | os.PathLike[str]) -> None:
    """Extracts ``data`` into ``local_dir`` (created), refusing entries that leave it."""
    dest = Path(local_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for m in tar.getmembers():  # Pythons without extraction filters
            target = (dest / m.name).resolve()
            if m.name.startswith("/") or (target != root and root not in target.parents):
                raise tarfile.TarError(f"refusing the archive entry {m.name!r}")
            if m.issym() or m.islnk():
                raise tarfile.TarError(f"refusing the link {m.name!r} on this Python")
        tar.extractall(dest)


class _Base:
    def __init__(self, url: str | None, token: str | None, timeout: float | None) -> None:
        self.base_url, self.uds = _address(url)
        self.token = token if token is not None else os.environ.get("WARMPOOL_TOKEN")
        self.timeout = timeout
        self._where = f"unix://{self.uds}" if self.uds else self.base_url

    def _http_args(self) -> dict[str, Any]:
        headers = {"user-agent": "warmpool-python"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout, connect=10.0),
        }

    def _task_timeout(self, timeout: Timeout) -> httpx.Timeout:
        """The read timeout for a task: at least its own timeout plus a margin."""
        secs = self.timeout
        task = _seconds(timeout)
        if task is not None and secs is not None:
            secs = max(secs, task + 30.0)
        elif timeout is not None and task is None:
            secs = None  # a duration we cannot read: let the daemon enforce it
        return httpx.Timeout(secs, connect=10.0)


class Client(_Base):
    """A blocking client of one warmpool daemon.

    Args:
        url: ``http://host:port``, ``host:port`` or ``unix:///path/to/api.sock``; default
            ``WARMPOOL_ADDR``, else ``http://127.0.0.1:7070``.
        token: bearer token for a daemon with ``server.token_file``; default
            ``WARMPOOL_TOKEN``.
        timeout: HTTP read timeout in seconds (``None``: none); a task's own ``timeout``
            (in seconds) raises it for that task. Connecting times out after 10 s.

    Every method raises :class:`WarmpoolError` subclasses: the one named after the API's
    error code, or :class:`ConnectionFailed` when the daemon cannot be reached. Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(url, token, timeout)
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        self._http = httpx.Client(transport=transport, **self._http_args())

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
        params: Mapping[str, str] | None = None, timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One raw API call (``path`` like ``"/v1/pools"``); returns the 2xx response, raises
        the mapped :class:`WarmpoolError` otherwise."""
        with _transport_errors(self._where):
            resp = self._http.request(
                method, path, json=json, content=content, params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        return _check(resp)

    # Tasks

    def run(
        self,
        pool: str,
        cmd: list[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Timeout = None,
        session: str | None = None,
        workdir: str | None = None,
    ) -> TaskResult:
        """Runs one task on ``pool`` and returns its result once it ended.

        Give exactly one of ``cmd`` (argv, no shell) and ``shell`` (one string for
        ``/bin/sh -c``). ``stdin`` is text or bytes. ``timeout`` is seconds (``float``) or a
        duration string (``"30s"``), at most the pool's ``task_timeout`` (its default); a
        task that runs over it returns with ``timed_out=True``. ``workdir`` is absolute.
        A non-zero exit is a result, not an error.

        Raises:
            UnknownPool, UnknownSession, SessionPoolMismatch, InvalidRequest, InvalidJson,
            QueueFull, NoContainer, PoolExhausted, ContainerFailed, EngineUnavailable,
            PoolFailed, ShuttingDown, Starting, Unauthorized, BodyTooLarge, ConnectionFailed.
        """
        body = _task_body(cmd, shell, env, stdin, timeout, session, workdir)
        resp = self.request(
            "POST", f"/v1/pools/{_seg(pool)}/tasks", json=body, timeout=self._task_timeout(timeout)
        )
        return TaskResult.from_json(_json(resp))

    def stream(
        self,
        pool: str,
        cmd: list[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Timeout = None,
        session: str | None = None,
        workdir: str | None = None,
    ) -> Iterator[Event]:
        """Runs one task like :meth:`run`, yielding :class:`Output` chunks as they come and
        then one :class:`Exit` whose ``result`` holds all the output. An error after output
        began (``{"error": ...}`` line) is raised as its :class:`WarmpoolError`. Leaving the
        loop early closes the connection; the task still runs to its end on the daemon."""
        body = _task_body(cmd, shell, env, stdin, timeout, session, workdir)
        state = _StreamState()
        with _transport_errors(self._where):
            with self._http.stream(
                "POST", f"/v1/pools/{_seg(pool)}/tasks", params={"stream": "true"}, json=body,
                timeout=self._task_timeout(timeout),
            ) as resp:
                if not resp.is_success:
                    resp.read()
                    _check(resp)
                for line in resp.iter_lines():
                    yield from state.events(line)
                    if state.done:
                        return
        state.finish()

    # Sessions

    def session(self, pool: str, id: str | None = None, *, idle_timeout: Timeout = None) -> Session:
        """Creates a session on ``pool`` (or joins the live one named ``id``).

        ``id``: ``[A-Za-z0-9][A-Za-z0-9_.-]``, up to 64 characters; the daemon makes one up
        when ``None``. ``idle_timeout``: seconds or a duration string. Use the returned
        :class:`Session` as a context manager to end it on exit.

        Raises:
            UnknownPool, SessionPoolMismatch (``id`` is live on another pool),
            InvalidRequest, Unauthorized, ConnectionFailed.
        """
        body: dict[str, Any] = {"pool": pool}
        if id is not None:
            body["id"] = id
        if idle_timeout is not None:
            body["idle_timeout"] = _duration(idle_timeout)
        resp = self.request("POST", "/v1/sessions", json=body)
        return Session(self, SessionInfo.from_json(_json(resp)), created=resp.status_code == 201)

    def sessions(self) -> list[SessionInfo]:
        """The live sessions."""
        return [SessionInfo.from_json(s) for s in _json(self.request("GET", "/v1/sessions"))["sessions"]]

    def get_session(self, id: str) -> SessionInfo:
        """One live session. Raises :class:`UnknownSession`."""
        return SessionInfo.from_json(_json(self.request("GET", f"/v1/sessions/{_seg(id)}")))

    def end_session(self, id: str) -> SessionInfo:
        """Ends a session (waits for its running task; its container is removed).
        Raises :class:`UnknownSession`."""
        return SessionInfo.from_json(_json(self.request("DELETE", f"/v1/sessions/{_seg(id)}")))

    # Pools and operations

    def pools(self) -> list[PoolStatus]:
        """Every pool's state."""
        return [PoolStatus.from_json(p) for p in _json(self.request("GET", "/v1/pools"))["pools"]]

    def pool(self, name: str) -> PoolStatus:
        """One pool's state. Raises :class:`UnknownPool`."""
        return PoolStatus.from_json(_json(self.request("GET", f"/v1/pools/{_seg(name)}")))

    def health(self) -> bool:
        """``True`` while the daemon serves (``/healthz``); raises :class:`ConnectionFailed`
        when it cannot be reached."""
        with _transport_errors(self._where):
            return self._http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        """``True`` when the engine answers and every pool has ``min`` containers up
        (``/readyz``). ``request("GET", "/readyz")`` raises :class:`NotReady` saying why."""
        with _transport_errors(self._where):
            return self._http.get("/readyz").status_code == 200

    def reload(self) -> dict[str, Any]:
        """Reloads pools.toml (``{"result": "ok", "changes": {...}}``).
        Raises :class:`InvalidConfig` listing every problem."""
        result: dict[str, Any] = _json(self.request("POST", "/v1/admin/reload"))
        return result


class Session:
    """A session: one container pinned to a conversation, files kept between tasks.

    ``info`` is the state as last seen; ``created`` is ``False`` when an existing session
    was joined. Used as a context manager, it is ended on exit.
    """

    def __init__(self, client: Client, info: SessionInfo, created: bool) -> None:
        self.client = client
        self.info = info
        self.created = created
        self._started = info.state == "running"

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def pool(self) -> str:
        return self.info.pool

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(missing_ok=True)

    def run(self, cmd: list[str] | None = None, **kw: Any) -> TaskResult:
        """:meth:`Client.run` in this session (same arguments but ``pool``/``session``)."""
        result = self.client.run(self.pool, cmd, session=self.id, **kw)
        self._started = True
        return result

    def stream(self, cmd: list[str] | None = None, **kw: Any) -> Iterator[Event]:
        """:meth:`Client.stream` in this session."""
        for ev in self.client.stream(self.pool, cmd, session=self.id, **kw):
            self._started = True
            yield ev

    def _ensure_started(self) -> None:
        # Files need the session's container, which its first task takes from the pool.
        if not self._started:
            self.run(["true"])

    def read_file(self, path: str) -> bytes:
        """The bytes of the file at absolute ``path`` in the container.

        Raises:
            NoSuchPath, WrongKind (a directory), NotReadable,
            FilesUnsupported (pool with ``exec = "docker-exec"``), InvalidPath,
            UnknownSession.
        """
        self._ensure_started()
        return self.client.request("GET", f"/v1/sessions/{_seg(self.id)}/files/{_container_path(path)}").content

    def write_file(self, path: str, data: bytes | str) -> None:
        """Writes ``data`` (``str`` as UTF-8) to absolute ``path`` (parents created).

        Raises:
            NotWritable (outside the workdir and /tmp), BodyTooLarge, WrongKind,
            FilesUnsupported, InvalidPath, UnknownSession.
        """
        self._ensure_started()
        content = data.encode("utf-8") if isinstance(data, str) else data
        self.client.request("PUT", f"/v1/sessions/{_seg(self.id)}/files/{_container_path(path)}", content=content)

    def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        """Copies ``local_dir``'s contents into absolute ``remote_dir`` (created) as a tar.

        Raises:
            BadArchive, NotWritable, BodyTooLarge, FilesUnsupported, UnknownSession.
        """
        self._ensure_started()
        self.client.request(
            "PUT", f"/v1/sessions/{_seg(self.id)}/archive/{_container_path(remote_dir)}", content=_tar_dir(local_dir)
        )

    def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str]) -> None:
        """Copies absolute ``remote_dir``'s contents into ``local_dir`` (created).

        Raises:
            NoSuchPath, WrongKind, NotReadable, FilesUnsupported, UnknownSession.
        """
        self._ensure_started()
        data = self.client.request("GET", f"/v1/sessions/{_seg(self.id)}/archive/{_container_path(remote_dir)}").content
        _untar(data, local_dir)

    def refresh(self) -> SessionInfo:
        """Reads the session's state again."""
        self.info = self.client.get_session(self.id)
        return self.info

    def end(self, *, missing_ok: bool = False) -> SessionInfo | None:
        """Ends the session (its container is removed). With ``missing_ok``, a session that
        already ended returns ``None`` instead of raising :class:`UnknownSession`."""
        try:
            self.info = self.client.end_session(self.id)
        except UnknownSession:
            if missing_ok:
                return None
            raise
        return self.info


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: same arguments, same methods, awaited.

    ``stream`` is an async iterator; ``session`` is awaited or used with ``async with``.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(url, token, timeout)
        transport = httpx.AsyncHTTPTransport(uds=self.uds) if self.uds else None
        self._http = httpx.AsyncClient(transport=transport, **self._http_args())

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
        params: Mapping[str, str] | None = None, timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """See :meth:`Client.request`."""
        with _transport_errors(self._where):
            resp = await self._http.request(
                method, path, json=json, content=content, params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        return _check(resp)

    async def run(
        self,
        pool: str,
        cmd: list[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Timeout = None,
        session: str | None = None,
        workdir: str | None = None,
    ) -> TaskResult:
        """See :meth:`Client.run`."""
        body = _task_body(cmd, shell, env, stdin, timeout, session, workdir)
        resp = await self.request(
            "POST", f"/v1/pools/{_seg(pool)}/tasks", json=body, timeout=self._task_timeout(timeout)
        )
        return TaskResult.from_json(_json(resp))

    async def stream(
        self,
        pool: str,
        cmd: list[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Timeout = None,
        session: str | None = None,
        workdir: str | None = None,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.stream` (``async for ev in client.stream(...)``)."""
        body = _task_body(cmd, shell, env, stdin, timeout, session, workdir)
        state = _StreamState()
        with _transport_errors(self._where):
            async with self._http.stream(
                "POST", f"/v1/pools/{_seg(pool)}/tasks", params={"stream": "true"}, json=body,
                timeout=self._task_timeout(timeout),
            ) as resp:
                if not resp.is_success:
                    await resp.aread()
                    _check(resp)
                async for line in resp.aiter_lines():
                    for ev in state.events(line):
                        yield ev
                    if state.done:
                        return
        state.finish()

    def session(
        self, pool: str, id: str | None = None, *, idle_timeout: Timeout = None
    ) -> _AsyncSessionStart:
        """See :meth:`Client.session`: ``s = await client.session(...)`` or
        ``async with client.session(...) as s:`` (ended on exit)."""
        return _AsyncSessionStart(self, pool, id, idle_timeout)

    async def _create_session(self, pool: str, id: str | None, idle_timeout: Timeout) -> AsyncSession:
        body: dict[str, Any] = {"pool": pool}
        if id is not None:
            body["id"] = id
        if idle_timeout is not None:
            body["idle_timeout"] = _duration(idle_timeout)
        resp = await self.request("POST", "/v1/sessions", json=body)
        return AsyncSession(self, SessionInfo.from_json(_json(resp)), created=resp.status_code == 201)

    async def sessions(self) -> list[SessionInfo]:
        """See :meth:`Client.sessions`."""
        return [SessionInfo.from_json(s) for s in _json(await self.request("GET", "/v1/sessions"))["sessions"]]

    async def get_session(self, id: str) -> SessionInfo:
        """See :meth:`Client.get_session`."""
        return SessionInfo.from_json(_json(await self.request("GET", f"/v1/sessions/{_seg(id)}")))

    async def end_session(self, id: str) -> SessionInfo:
        """See :meth:`Client.end_session`."""
        return SessionInfo.from_json(_json(await self.request("DELETE", f"/v1/sessions/{_seg(id)}")))

    async def pools(self) -> list[PoolStatus]:
        """See :meth:`Client.pools`."""
        return [PoolStatus.from_json(p) for p in _json(await self.request("GET", "/v1/pools"))["pools"]]

    async def pool(self, name: str) -> PoolStatus:
        """See :meth:`Client.pool`."""
        return PoolStatus.from_json(_json(await self.request("GET", f"/v1/pools/{_seg(name)}")))

    async def health(self) -> bool:
        """See :meth:`Client.health`."""
        with _transport_errors(self._where):
            return (await self._http.get("/healthz")).status_code == 200

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        with _transport_errors(self._where):
            return (await self._http.get("/readyz")).status_code == 200

    async def reload(self) -> dict[str, Any]:
        """See :meth:`Client.reload`."""
        result: dict[str, Any] = _json(await self.request("POST", "/v1/admin/reload"))
        return result


class _AsyncSessionStart:
    """What :meth:`AsyncClient.session` returns: awaitable, or an async context manager."""

    def __init__(self, client: AsyncClient, pool: str, id: str | None, idle_timeout: Timeout) -> None:
        self._args = (client, pool, id, idle_timeout)
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        client, pool, id, idle_timeout = self._args
        return client._create_session(pool, id, idle_timeout).__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.end(missing_ok=True)


class AsyncSession:
    """The asyncio twin of :class:`Session`."""

    def __init__(self, client: AsyncClient, info: SessionInfo, created: bool) -> None:
        self.client = client
        self.info = info
        self.created = created
        self._started = info.state == "running"

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def pool(self) -> str:
        return self.info.pool

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end(missing_ok=True)

    async def run(self, cmd: list[str] | None = None, **kw: Any) -> TaskResult:
        """See :meth:`Session.run`."""
        result = await self.client.run(self.pool, cmd, session=self.id, **kw)
        self._started = True
        return result

    async def stream(self, cmd: list[str] | None = None, **kw: Any) -> AsyncIterator[Event]:
        """See :meth:`Session.stream`."""
        async for ev in self.client.stream(self.pool, cmd, session=self.id, **kw):
            self._started = True
            yield ev

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.run(["true"])

    async def read_file(self, path: str) -> bytes:
        """See :meth:`Session.read_file`."""
        await self._ensure_started()
        resp = await self.client.request("GET", f"/v1/sessions/{_seg(self.id)}/files/{_container_path(path)}")
        return resp.content

    async def write_file(self, path: str, data: bytes | str) -> None:
        """See :meth:`Session.write_file`."""
        await self._ensure_started()
        content = data.encode("utf-8") if isinstance(data, str) else data
        await self.client.request("PUT", f"/v1/sessions/{_seg(self.id)}/files/{_container_path(path)}", content=content)

    async def upload_dir(self, local_dir: str | os.PathLike[str], remote_dir: str) -> None:
        """See :meth:`Session.upload_dir`."""
        await self._ensure_started()
        await self.client.request(
            "PUT", f"/v1/sessions/{_seg(self.id)}/archive/{_container_path(remote_dir)}", content=_tar_dir(local_dir)
        )

    async def download_dir(self, remote_dir: str, local_dir: str | os.PathLike[str]) -> None:
        """See :meth:`Session.download_dir`."""
        await self._ensure_started()
        resp = await self.client.request("GET", f"/v1/sessions/{_seg(self.id)}/archive/{_container_path(remote_dir)}")
        _untar(resp.content, local_dir)

    async def refresh(self) -> SessionInfo:
        """See :meth:`Session.refresh`."""
        self.info = await self.client.get_session(self.id)
        return self.info

    async def end(self, *, missing_ok: bool = False) -> SessionInfo | None:
        """See :meth:`Session.end`."""
        try:
            self.info = await self.client.end_session(self.id)
        except UnknownSession:
            if missing_ok:
                return None
            raise
        return self.info


