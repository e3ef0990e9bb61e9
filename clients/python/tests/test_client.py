"""The client against a real daemon (see conftest.py): no mocks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import warmpool
from warmpool import Client, Exit, Output

from conftest import Daemon

# Tasks


def test_run_returns_exit_code_stdout_and_stderr(wp: Client) -> None:
    r = wp.run("main", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.signal, r.timed_out) == (3, None, False)
    assert (r.stdout, r.stderr) == ("out\n", "err\n")
    assert r.pool == "main" and r.task_id.startswith("t-") and len(r.container) == 12
    assert r.run_ms > 0 and r.queued_ms >= 0 and not r.ok
    assert not r.stdout_truncated and not r.stderr_truncated


def test_stdin_env_workdir_and_shell(wp: Client) -> None:
    r = wp.run("main", ["cat"], stdin="piped\n")
    assert r.ok and r.stdout == "piped\n"
    r = wp.run("main", shell='echo "$A-$B"; pwd', env={"A": "1", "B": "two"}, workdir="/tmp")
    assert r.stdout == "1-two\n/tmp\n"


def test_binary_stdin_and_output_round_trip(wp: Client) -> None:
    data = bytes([0, 255, 128, 10])
    r = wp.run("main", ["cat"], stdin=data)
    assert r.stdout_bytes == data  # the API sent it base64-encoded
    assert r.stdout == data.decode("utf-8", "replace")


def test_timeout_kills_the_task(wp: Client) -> None:
    t0 = time.monotonic()
    r = wp.run("main", ["sleep", "20"], timeout=0.5)
    assert r.timed_out and r.signal == 9 and r.exit_code is None
    assert time.monotonic() - t0 < 10
    r = wp.run("main", shell="sleep 20", timeout="300ms")
    assert r.timed_out


def test_a_command_that_cannot_start_is_a_result_with_error(wp: Client) -> None:
    r = wp.run("main", ["no-such-command"])
    assert r.exit_code is None and r.error and "no-such-command" in r.error


def test_output_over_max_output_is_truncated(wp: Client) -> None:
    r = wp.run("small", shell="head -c 5000 /dev/zero | tr '\\0' x")
    assert r.stdout_truncated and not r.stderr_truncated and len(r.stdout) == 1024


def test_stream_yields_output_then_exit(wp: Client) -> None:
    events = list(wp.stream("main", shell="echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c; exit 4"))
    assert isinstance(events[-1], Exit)
    outputs = [e for e in events[:-1] if isinstance(e, Output)]
    assert len(outputs) == len(events) - 1 and len(outputs) >= 3  # one chunk per sleep at least
    assert "".join(e.text for e in outputs if e.stream == "stdout") == "a\nc\n"
    assert [e.text for e in outputs if e.stream == "stderr"] == ["b\n"]
    res = events[-1].result
    assert res.exit_code == 4 and res.stdout == "a\nc\n" and res.stderr == "b\n"


def test_stream_of_a_silent_task_is_just_exit(wp: Client) -> None:
    events = list(wp.stream("main", ["true"]))
    assert len(events) == 1 and isinstance(events[0], Exit) and events[0].result.ok


def test_stream_refused_before_start_raises(wp: Client) -> None:
    with pytest.raises(warmpool.UnknownPool) as e:
        list(wp.stream("nope", ["true"]))
    assert e.value.status == 404


# Sessions and files


def test_session_keeps_files_and_ends_on_exit(wp: Client, tmp_path: Path) -> None:
    with wp.session("main") as s:
        assert s.created and s.info.state == "not_started"
        s.write_file("/work/notes.txt", "kept\n")  # before any task: the client starts it
        assert s.run(["cat", "notes.txt"]).stdout == "kept\n"
        s.run(shell="mkdir -p out/sub && echo 1 > out/a && printf '\\377' > out/sub/b")
        assert s.read_file("/work/out/sub/b") == b"\xff"
        s.write_file("/tmp/bin.dat", bytes(range(256)))
        assert s.read_file("/tmp/bin.dat") == bytes(range(256))

        src = tmp_path / "src"
        (src / "pkg").mkdir(parents=True)
        (src / "pkg" / "mod.py").write_text("X = 1\n")
        (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (src / "run.sh").chmod(0o755)
        s.upload_dir(src, "/work/proj")
        assert s.run(["./run.sh"], workdir="/work/proj").stdout == "ran\n"
        assert s.run(["cat", "/work/proj/pkg/mod.py"]).stdout == "X = 1\n"

        s.download_dir("/work/out", tmp_path / "back")
        assert (tmp_path / "back" / "a").read_text() == "1\n"
        assert (tmp_path / "back" / "sub" / "b").read_bytes() == b"\xff"
        info = s.refresh()
        assert info.state == "running" and info.tasks >= 4 and info.container
        sid = s.id
    assert sid not in [x.id for x in wp.sessions()]
    with pytest.raises(warmpool.UnknownSession):
        wp.get_session(sid)


def test_session_by_id_is_joined_and_refused_on_another_pool(wp: Client) -> None:
    with wp.session("main", "py-join", idle_timeout=60) as s:
        assert s.id == "py-join" and s.info.idle_timeout == "1m"
        again = wp.session("main", "py-join")
        assert not again.created and again.id == s.id
        with pytest.raises(warmpool.SessionPoolMismatch) as e:
            wp.session("other", "py-join")
        assert e.value.status == 409
        with pytest.raises(warmpool.SessionPoolMismatch):
            wp.run("other", ["true"], session="py-join")
        ended = s.end()
        assert ended is not None and ended.state == "ended"
    # Ended twice (explicitly, then by the with block): the second is ignored.


def test_file_errors(wp: Client) -> None:
    with wp.session("main") as s:
        assert [type(ev) for ev in s.stream(["mkdir", "d"])] == [Exit]
        with pytest.raises(warmpool.NoSuchPath) as e1:
            s.read_file("/work/missing.txt")
        assert e1.value.status == 404
        with pytest.raises(warmpool.NotWritable) as e2:
            s.write_file("/etc/x", "no")
        assert e2.value.status == 403
        with pytest.raises(warmpool.WrongKind):
            s.read_file("/work/d")
        with pytest.raises(warmpool.BodyTooLarge) as e3:
            s.write_file("/work/big", b"x" * 70_000)  # max_request_body is 64KiB
        assert e3.value.status == 413
        s.run(shell="head -c 70000 /dev/zero > big")
        # Reads stream: a file larger than max_request_body comes back whole.
        assert s.read_file("/work/big") == b"\0" * 70_000
        with pytest.raises(warmpool.BadArchive):
            wp.request("PUT", f"/v1/sessions/{s.id}/archive/work/x", content=b"not a tar" * 100)
        with pytest.raises(warmpool.InvalidPath):
            wp.request("GET", f"/v1/sessions/{s.id}/files/work/%2E%2E/etc/passwd")
        with pytest.raises(ValueError):
            s.read_file("relative.txt")  # client-side: container paths are absolute


def test_files_need_the_shim(wp: Client) -> None:
    with wp.session("dexec") as s:
        with pytest.raises(warmpool.FilesUnsupported) as e:
            s.write_file("/work/a", "x")
        assert e.value.status == 400


def test_unknown_session(wp: Client) -> None:
    with pytest.raises(warmpool.UnknownSession) as e:
        wp.run("main", ["true"], session="never-made")
    assert e.value.status == 404 and e.value.code == "unknown_session"


# Pools and operations


def test_pools_and_pool(wp: Client) -> None:
    pools = {p.name: p for p in wp.pools()}
    assert {"main", "other", "small", "failfast", "noqueue", "shortwait", "dexec"} <= set(pools)
    p = wp.pool("main")
    assert p.exec == "shim" and p.max == 4 and p.min == 1 and p.image == "warmpool/agent:latest"
    assert pools["dexec"].exec == "docker-exec"
    assert wp.health() and wp.ready()


# Errors


def test_request_errors(wp: Client) -> None:
    with pytest.raises(warmpool.UnknownPool) as e:
        wp.run("no-such-pool", ["true"])
    err = e.value
    assert (err.status, err.code, err.retry_after, err.retryable) == (404, "unknown_pool", None, False)
    assert "no-such-pool" in err.message and isinstance(err, warmpool.WarmpoolError)
    with pytest.raises(warmpool.InvalidRequest, match="empty"):
        wp.run("main", [])
    with pytest.raises(warmpool.InvalidRequest):
        wp.run("main", ["true"], shell="true")
    with pytest.raises(warmpool.InvalidRequest):
        wp.run("main")
    with pytest.raises(warmpool.InvalidRequest):
        wp.run("main", ["true"], timeout="soon")
    with pytest.raises(warmpool.InvalidJson) as e2:
        wp.request("POST", "/v1/pools/main/tasks", json={"cmd": ["true"], "tiemout": "1s"})
    assert e2.value.status == 400
    with pytest.raises(warmpool.NotFound):
        wp.request("GET", "/v1/nothing-here")
    with pytest.raises(TypeError):
        wp.run("main", "echo hi")  # type: ignore[arg-type]


def test_wrong_methods_and_bad_queries_are_the_error_envelope(wp: Client) -> None:
    # Every error, axum's own rejections included, comes as {"error": {"code", "message"}}.
    with pytest.raises(warmpool.MethodNotAllowed) as e:
        wp.request("GET", "/v1/pools/main/tasks")
    assert e.value.status == 405
    with pytest.raises(warmpool.InvalidRequest) as e2:
        wp.request("POST", "/v1/pools/main/tasks", params={"stream": "1"}, json={"cmd": ["true"]})
    assert e2.value.status == 400 and "stream" in e2.value.message


def test_wrong_or_missing_token(daemon: Daemon) -> None:
    for token in ["wrong", ""]:
        with daemon.client(token=token) as c, pytest.raises(warmpool.Unauthorized) as e:
            c.pools()
        assert e.value.status == 401 and not e.value.retryable
        with daemon.client(token=token) as c:
            assert c.health()  # /healthz stays open


def _while_busy(wp: Client, pool: str, then: Callable[[], None]) -> None:
    """Holds the pool's only container with a task while ``then`` runs."""
    done = threading.Event()

    def hold() -> None:
        wp.run(pool, ["sleep", "3"])
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while wp.pool(pool).busy < 1:
            assert time.monotonic() < deadline, f"pool {pool} never got busy"
            time.sleep(0.02)
        then()
    finally:
        holder.join()
    assert done.is_set()


def test_pool_exhausted_queue_full_and_no_container(daemon: Daemon) -> None:
    with daemon.client() as wp:

        def exhausted() -> None:
            with pytest.raises(warmpool.PoolExhausted) as e:
                wp.run("failfast", ["true"])
            assert e.value.status == 503 and e.value.retry_after == 1 and e.value.retryable

        def queue_full() -> None:
            with pytest.raises(warmpool.QueueFull) as e:
                wp.run("noqueue", ["true"])
            assert e.value.status == 429 and e.value.retry_after == 1 and e.value.retryable

        def no_container() -> None:
            with pytest.raises(warmpool.NoContainer) as e:
                wp.run("shortwait", ["true"])
            assert e.value.status == 503 and e.value.retry_after == 5

        _while_busy(wp, "failfast", exhausted)
        _while_busy(wp, "noqueue", queue_full)
        _while_busy(wp, "shortwait", no_container)


def test_unknown_code_maps_to_the_base_class() -> None:
    err = warmpool.WarmpoolError  # what the daemon's undocumented codes become
    from warmpool._errors import error_from

    e = error_from(500, "something_new", "?")
    assert type(e) is err and e.code == "something_new" and e.status == 500
    e = error_from(None, "queue_full", "x")  # an error line ending a stream
    assert isinstance(e, warmpool.QueueFull) and e.status == 429


def test_pool_failed_has_its_class_and_a_pool_status_shows_the_failure() -> None:
    from warmpool._errors import error_from

    e = error_from(503, "pool_failed", "pool bad is failed: ...", retry_after=30)
    assert isinstance(e, warmpool.PoolFailed) and e.status == 503 and e.retry_after == 30
    e = error_from(None, "pool_failed", "x")  # an error line ending a stream
    assert isinstance(e, warmpool.PoolFailed) and e.status == 503 and not e.retryable
    counts = dict.fromkeys(
        ["live", "idle", "busy", "starting", "unhealthy", "retiring", "min", "max", "target",
         "queue_length"], 0)
    base = {"name": "bad", "image": "img", "exec": "shim", "utilization": 0.0, **counts}
    failure = {"reason": "Unknown runtime specified nope", "hint": "install it",
               "since": "2026-11-29T14:30:00Z", "retry_every_seconds": 30.0}
    s = warmpool.PoolStatus.from_json({**base, "state": "failed", "failure": failure})
    assert s.state == "failed" and s.failure == failure
    # A daemon from before the field: ok.
    s = warmpool.PoolStatus.from_json(base)
    assert s.state == "ok" and s.failure is None


# Addresses


def test_unix_socket(daemon: Daemon) -> None:
    with warmpool.Client(f"unix://{daemon.sock}", token=daemon.token) as c:
        assert c.run("main", ["echo", "via socket"]).stdout == "via socket\n"
        assert [e for e in c.stream("main", ["echo", "s"]) if isinstance(e, Output)][0].text == "s\n"


def test_env_address_and_token(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMPOOL_ADDR", daemon.url.removeprefix("http://"))
    monkeypatch.setenv("WARMPOOL_TOKEN", daemon.token)
    with warmpool.Client() as c:
        assert c.run("main", ["true"]).ok


def test_connection_failure() -> None:
    with warmpool.Client("http://127.0.0.1:1", timeout=5) as c, pytest.raises(warmpool.ConnectionFailed) as e:
        c.pools()
    assert e.value.status is None and e.value.retryable
    with warmpool.Client("unix:///nonexistent/warmpool.sock") as c, pytest.raises(warmpool.ConnectionFailed):
        c.health()


def test_a_read_timeout_is_a_connection_failure(daemon: Daemon) -> None:
    with daemon.client(timeout=0.5) as c, pytest.raises(warmpool.ConnectionFailed, match="in time"):
        c.run("main", ["sleep", "2"])
    with daemon.client(timeout=0.5) as c:  # a task timeout raises the client's for that task
        assert c.run("main", ["sleep", "1"], timeout="20s").ok
        assert c.run("main", ["sleep", "1"], timeout=5).ok


# The asyncio client


def test_async_client(daemon: Daemon, tmp_path: Path) -> None:
    async def main() -> None:
        async with warmpool.AsyncClient(daemon.url, token=daemon.token) as c:
            rs = await asyncio.gather(*(c.run("main", ["echo", str(i)]) for i in range(3)))
            assert [r.stdout for r in rs] == ["0\n", "1\n", "2\n"]
            events = [e async for e in c.stream("main", shell="echo x; echo y >&2")]
            assert isinstance(events[-1], Exit) and events[-1].result.stderr == "y\n"
            assert {p.name for p in await c.pools()} >= {"main"}
            with pytest.raises(warmpool.UnknownPool):
                await c.pool("nope")
            async with c.session("main") as s:
                await s.write_file("/work/a.txt", b"async")
                assert (await s.run(["cat", "a.txt"])).stdout == "async"
                await s.download_dir("/work", tmp_path / "w")
                sid = s.id
            assert sid not in [x.id for x in await c.sessions()]
        async with warmpool.AsyncClient(f"unix://{daemon.sock}", token="bad") as c:
            with pytest.raises(warmpool.Unauthorized):
                await c.pools()

    asyncio.run(main())
    assert (tmp_path / "w" / "a.txt").read_bytes() == b"async"


def test_no_container_is_left_busy(wp: Client) -> None:
    # Runs last (file order): every pool is back to no busy container and no queue.
    deadline = time.monotonic() + 15
    while any(p.busy or p.queue_length for p in wp.pools()):
        assert time.monotonic() < deadline
        time.sleep(0.1)

