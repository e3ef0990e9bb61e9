"""A real `warmpool serve` for the tests: the debug binary on a free loopback port and a unix
socket, with a bearer token, its own WARMPOOL_INSTANCE, stopped by SIGTERM at the end, after
which none of its containers may be left on the engine.

WARMPOOL_BIN names the binary (default: target/debug/warmpool of this repository, which
scripts/test-python.sh builds); the demo image comes from scripts/build-demo-image.sh.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import warmpool

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "warmpool/agent:latest"

CONFIG = """
[server]
listen = "{addr}"
unix_socket = "{sock}"
token_file = "{token_file}"
max_request_body = "64KiB"
shutdown_grace = "1s"

[defaults]
image = "{image}"
min = 1
max = 3
task_timeout = "30s"
acquire_timeout = "10s"

# Tasks, sessions, files.
[pools.main]
max = 4

# Its own pool, to ask for a session id that is live on "main".
[pools.other]
min = 0
max = 1

# Output over max_output is drained and flagged truncated.
[pools.small]
min = 0
max = 1
max_output = "1KiB"

# At max with none idle: 503 pool_exhausted at once.
[pools.failfast]
max = 1
on_exhausted = "fail"

# No queue: 429 queue_full at once.
[pools.noqueue]
max = 1
max_queue = 0

# A short acquire_timeout: 503 no_container.
[pools.shortwait]
max = 1
acquire_timeout = "300ms"

# Files need the shim.
[pools.dexec]
min = 0
max = 1
exec = "docker-exec"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Daemon:
    url: str
    sock: Path
    token: str
    instance: str
    log: Path

    def client(self, **kw: object) -> warmpool.Client:
        kw.setdefault("token", self.token)
        kw.setdefault("url", self.url)
        return warmpool.Client(**kw)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def containers(self) -> list[str]:
        out = _docker(
            "ps", "-a", "-q", "--filter", "label=warmpool.managed=true",
            "--filter", f"label=warmpool.instance={self.instance}",
        )
        return out.split()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = Path(os.environ.get("WARMPOOL_BIN", ROOT / "target" / "debug" / "warmpool"))
    if not binary.exists():
        pytest.exit(f"{binary} is missing: run `cargo build --locked` (scripts/test-python.sh does)", 2)
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        pytest.exit(f"image {IMAGE} is missing: run scripts/build-demo-image.sh", 2)
    d = tmp_path_factory.mktemp("daemon")
    token = secrets.token_hex(16)
    (d / "token").write_text(token + "\n")
    addr = f"127.0.0.1:{_free_port()}"
    sock = d / "api.sock"
    (d / "pools.toml").write_text(
        CONFIG.format(addr=addr, sock=sock, token_file=d / "token", image=IMAGE)
    )
    instance = "py" + secrets.token_hex(4)
    log = d / "daemon.log"
    env = dict(os.environ, WARMPOOL_INSTANCE=instance, RUST_LOG="warmpool=debug")
    env.pop("WARMPOOL_TOKEN", None)
    env.pop("WARMPOOL_ADDR", None)
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(d / "pools.toml")],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
        )
    daemon = Daemon(url=f"http://{addr}", sock=sock, token=token, instance=instance, log=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{daemon.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.exit(f"the daemon exited early ({proc.returncode}):\n{daemon.log_text()}", 2)
            if time.monotonic() > deadline:
                pytest.exit(f"the daemon was not ready within 90 s:\n{daemon.log_text()}", 2)
            time.sleep(0.1)
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        left = daemon.containers()
        for c in left:  # never leave them to the next run, but fail below
            subprocess.run(["docker", "rm", "-f", c], capture_output=True)
        assert code == 0, f"the daemon did not stop cleanly on SIGTERM (exit {code}):\n{daemon.log_text()[-4000:]}"
        assert not left, f"containers left after SIGTERM: {left}"


@pytest.fixture
def wp(daemon: Daemon) -> Iterator[warmpool.Client]:
    with daemon.client() as c:
        yield c
