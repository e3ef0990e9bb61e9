"""A real `warmpool serve` for the MCP client tests: the debug binary on a free loopback port,
a temporary pools.toml with a bearer token, its own WARMPOOL_INSTANCE (so its containers are
told apart on a shared engine), and every container it made removed at the end.

Needs the demo image warmpool/agent:latest (scripts/build-demo-image.sh) and a Docker engine;
scripts/test-mcp.sh sets everything up.
"""

import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("WARMPOOL_BIN", ROOT / "target" / "debug" / "warmpool"))
TOKEN = "mcp-test-token-" + "%08x" % random.getrandbits(32)
MAX_BODY_KIB = 64

POOLS = """
[server]
listen = "127.0.0.1:{port}"
{token_line}
max_request_body = "{max_body}KiB"
shutdown_grace = "1s"

[pools.py]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 4
task_timeout = "30s"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, tmp: Path, token: str | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.instance = "mcp%08x" % random.getrandbits(32)
        token_line = ""
        if token:
            token_file = tmp / "token"
            token_file.write_text(token + "\n")
            token_line = f'token_file = "{token_file}"'
        self.config = tmp / "pools.toml"
        self.config.write_text(
            POOLS.format(port=self.port, token_line=token_line, max_body=MAX_BODY_KIB)
        )
        self.log_path = tmp / "daemon.log"
        env = dict(os.environ, WARMPOOL_INSTANCE=self.instance, RUST_LOG="warmpool=info")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self, method: str, path: str, body=None, token=None, headers=None):
        """One HTTP call: (status, parsed JSON or raw text)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_ready(self, timeout: float = 90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log()}")
            try:
                if self.http("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # What an orderly stop left (none, normally): only this instance's.
        label = f"label=warmpool.instance={self.instance}"
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        nets = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", label], capture_output=True, text=True
        ).stdout.split()
        for n in nets:
            subprocess.run(["docker", "network", "rm", n], capture_output=True)


def start(tmp_path_factory, token):
    assert BIN.exists(), f"{BIN} is missing: run cargo build first (scripts/test-mcp.sh does)"
    d = Daemon(tmp_path_factory.mktemp("warmpool"), token)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """A daemon with a bearer token."""
    yield from start(tmp_path_factory, TOKEN)


@pytest.fixture(scope="session")
def open_daemon(tmp_path_factory):
    """A daemon without a token."""
    yield from start(tmp_path_factory, None)
