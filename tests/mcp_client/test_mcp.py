"""warmpool's MCP server through the official Python MCP client (PyPI `mcp`), over both
transports: stdio (`warmpool mcp --addr URL`, the token from WARMPOOL_TOKEN) and streamable
HTTP at the daemon's `/mcp` (bearer token). Every tool is called against a real daemon, and a
tool error must carry the HTTP API's own code and message.
"""

import asyncio
import contextlib
import random

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import BIN, MAX_BODY_KIB

TRANSPORTS = ["stdio", "http"]
MAX_TOOL_OUTPUT = 16 * 1024  # src/mcp/tools.rs
TOOLS = {"run_command", "list_pools", "start_session", "end_session", "read_file", "write_file", "list_dir"}


@contextlib.asynccontextmanager
async def connect(daemon, transport, token):
    if transport == "stdio":
        env = {"WARMPOOL_TOKEN": token} if token else {}
        params = StdioServerParameters(command=str(BIN), args=["mcp", "--addr", daemon.url], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s
    else:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(daemon.url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    yield s


def session_run(daemon, transport, body, token=None):
    """Runs `body(session)` in one MCP client session and returns what it returns."""

    async def main():
        async with connect(daemon, transport, token or daemon.token) as s:
            return await body(s)

    return asyncio.run(main())


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def assert_api_error(result, code, message=None):
    assert result.is_error, text(result)
    err = result.structured_content["error"]
    assert err["code"] == code, result.structured_content
    assert text(result).startswith(f"{code}: "), text(result)
    if message is not None:
        assert err["message"] == message


def sid(daemon, transport, name):
    # Session ids end up in container names, which the engine keeps globally unique.
    return f"{daemon.instance}-{transport}-{name}-{random.getrandbits(16):04x}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tools_are_listed_with_the_pools_in_their_descriptions(daemon, transport):
    async def body(s):
        return (await s.list_tools()).tools

    tools = {t.name: t for t in session_run(daemon, transport, body)}
    assert set(tools) == TOOLS
    run = tools["run_command"]
    assert "- py: image warmpool/agent:latest, exec shim, 1 to 4 containers" in run.description
    assert "py:" in tools["start_session"].description
    assert run.input_schema["required"] == ["command"]
    assert set(run.input_schema["properties"]) >= {"pool", "command", "session", "timeout", "stdin"}
    assert tools["write_file"].input_schema["required"] == ["session", "path", "content"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_list_pools(daemon, transport):
    async def body(s):
        return await s.call_tool("list_pools", {})

    r = session_run(daemon, transport, body)
    assert not r.is_error
    assert [p["name"] for p in r.structured_content["pools"]] == ["py"]
    assert "- py: image warmpool/agent:latest" in text(r)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_run_command_shell_argv_and_stdin(daemon, transport):
    async def body(s):
        shell = await s.call_tool("run_command", {"pool": "py", "command": "echo hi; echo err >&2; exit 3"})
        argv = await s.call_tool("run_command", {"pool": "py", "command": ["echo", "a  b"]})
        stdin = await s.call_tool("run_command", {"pool": "py", "command": ["cat"], "stdin": "from stdin"})
        killed = await s.call_tool("run_command", {"pool": "py", "command": "kill -9 $$"})
        return shell, argv, stdin, killed

    shell, argv, stdin, killed = session_run(daemon, transport, body)
    assert not shell.is_error
    v = shell.structured_content
    assert (v["exit_code"], v["signal"], v["stdout"], v["stderr"]) == (3, None, "hi\n", "err\n")
    assert v["stdout_truncated"] is False and v["stderr_truncated"] is False
    assert "exit_code: 3" in text(shell) and "--- stdout ---\nhi\n" in text(shell)
    assert argv.structured_content["stdout"] == "a  b\n"
    assert stdin.structured_content["stdout"] == "from stdin"
    assert killed.structured_content["signal"] == 9
    assert "signal: 9" in text(killed)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_output_over_16_kib_is_cut_with_a_note(daemon, transport):
    async def body(s):
        return await s.call_tool(
            "run_command", {"pool": "py", "command": "head -c 100000 /dev/zero | tr '\\0' x"}
        )

    r = session_run(daemon, transport, body)
    v = r.structured_content
    assert v["stdout_cut_bytes"] == 100000 - MAX_TOOL_OUTPUT
    assert v["stdout"].startswith("x" * MAX_TOOL_OUTPUT + "\n[warmpool: cut 83616 of 100000 bytes of stdout")
    assert len(text(r)) < MAX_TOOL_OUTPUT + 1000


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_carry_the_http_api_code_and_message(daemon, transport):
    async def body(s):
        return (
            await s.call_tool("run_command", {"pool": "nope", "command": "true"}),
            await s.call_tool("run_command", {"pool": "py", "command": ["echo", 1]}),
            await s.call_tool("run_command", {"pool": "py", "command": "true", "timeout": "soon"}),
            await s.call_tool("run_command", {"pool": "py", "command": []}),
        )

    unknown, bad_argv, bad_timeout, empty = session_run(daemon, transport, body)
    t = daemon.token
    for result, pool, api_body in [
        (unknown, "nope", {"shell": "true"}),
        (bad_argv, "py", {"cmd": ["echo", 1]}),
        (bad_timeout, "py", {"shell": "true", "timeout": "soon"}),
        (empty, "py", {"cmd": []}),
    ]:
        status, answer = daemon.http("POST", f"/v1/pools/{pool}/tasks", api_body, token=t)
        assert status >= 400, answer
        assert_api_error(result, answer["error"]["code"], answer["error"]["message"])
        assert result.structured_content["status"] == status
    assert unknown.structured_content["error"]["code"] == "unknown_pool"
    assert bad_argv.structured_content["error"]["code"] == "invalid_json"
    assert bad_timeout.structured_content["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_session_with_its_files(daemon, transport):
    id_ = sid(daemon, transport, "files")
    big = "0123456789abcdef" * 2560  # 40 KiB: read in three parts

    async def body(s):
        r = {}
        r["start"] = await s.call_tool("start_session", {"pool": "py", "id": id_})
        r["write"] = await s.call_tool("write_file", {"session": id_, "path": "/work/notes.txt", "content": "hello\n"})
        r["read"] = await s.call_tool("read_file", {"session": id_, "path": "/work/notes.txt"})
        r["cat"] = await s.call_tool("run_command", {"session": id_, "command": "cat notes.txt; pwd"})
        r["ls"] = await s.call_tool("list_dir", {"session": id_})
        r["ls_missing"] = await s.call_tool("list_dir", {"session": id_, "path": "/nowhere"})
        r["bin_write"] = await s.call_tool(
            "write_file", {"session": id_, "path": "/work/b.bin", "content": "AP8=", "encoding": "base64"}
        )
        r["bin_read"] = await s.call_tool("read_file", {"session": id_, "path": "/work/b.bin"})
        r["big_write"] = await s.call_tool("write_file", {"session": id_, "path": "/work/big.txt", "content": big})
        r["big_read"] = await s.call_tool("read_file", {"session": id_, "path": "/work/big.txt"})
        r["big_read2"] = await s.call_tool(
            "read_file", {"session": id_, "path": "/work/big.txt", "offset": MAX_TOOL_OUTPUT}
        )
        r["missing"] = await s.call_tool("read_file", {"session": id_, "path": "/work/missing.txt"})
        r["relative"] = await s.call_tool("write_file", {"session": id_, "path": "notes.txt", "content": "x"})
        r["read_only"] = await s.call_tool("write_file", {"session": id_, "path": "/etc/x", "content": "x"})
        r["oversize"] = await s.call_tool(
            "write_file", {"session": id_, "path": "/work/huge", "content": "a" * ((MAX_BODY_KIB + 8) * 1024)}
        )
        r["end"] = await s.call_tool("end_session", {"session": id_})
        r["after_end"] = await s.call_tool("read_file", {"session": id_, "path": "/work/notes.txt"})
        r["run_after_end"] = await s.call_tool("run_command", {"session": id_, "command": "true"})
        return r

    r = session_run(daemon, transport, body)
    assert not r["start"].is_error, text(r["start"])
    assert r["start"].structured_content["state"] == "running"
    assert r["start"].structured_content["id"] == id_
    assert not r["write"].is_error and r["write"].structured_content["bytes"] == 6
    assert r["read"].structured_content["content"] == "hello\n"
    assert text(r["read"]) == "hello\n"
    assert r["cat"].structured_content["stdout"] == "hello\n/work\n"
    assert not r["ls"].is_error and "notes.txt" in text(r["ls"])
    assert_api_error(r["ls_missing"], "no_such_path")
    assert r["bin_read"].structured_content["encoding"] == "base64"
    assert r["bin_read"].structured_content["content"] == "AP8="
    assert not r["big_write"].is_error, text(r["big_write"])
    b1, b2 = r["big_read"].structured_content, r["big_read2"].structured_content
    assert (b1["size"], b1["offset"], b1["end"], b1["more"]) == (len(big), 0, MAX_TOOL_OUTPUT, True)
    assert b1["content"] == big[:MAX_TOOL_OUTPUT]
    assert "call read_file with offset 16384" in text(r["big_read"])
    assert b2["content"] == big[MAX_TOOL_OUTPUT : 2 * MAX_TOOL_OUTPUT]
    assert_api_error(r["missing"], "no_such_path")
    assert_api_error(r["relative"], "invalid_path")
    assert_api_error(r["read_only"], "not_writable")
    assert_api_error(r["oversize"], "body_too_large")
    assert r["oversize"].structured_content["status"] == 413
    assert not r["end"].is_error and r["end"].structured_content["state"] == "ended"
    assert_api_error(r["after_end"], "unknown_session")
    assert_api_error(r["run_after_end"], "unknown_session")


def test_stdio_with_a_wrong_token_gets_the_api_unauthorized(daemon):
    async def body(s):
        tools = (await s.list_tools()).tools
        return tools, await s.call_tool("list_pools", {}), await s.call_tool(
            "run_command", {"pool": "py", "command": "true"}
        )

    tools, pools, run = session_run(daemon, "stdio", body, token="wrong")
    # The tools are still listed (the daemon could not be asked for its pools).
    assert {t.name for t in tools} == TOOLS
    assert "the pools could not be listed: unauthorized" in next(
        t.description for t in tools if t.name == "run_command"
    )
    status, answer = daemon.http("GET", "/v1/pools", token="wrong")
    assert status == 401
    assert_api_error(pools, "unauthorized", answer["error"]["message"])
    assert_api_error(run, "unauthorized")


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def test_the_mcp_route_needs_the_token(daemon):
    for token in [None, "wrong"]:
        status, answer = daemon.http("POST", "/mcp", INITIALIZE, token=token, headers=MCP_HEADERS)
        assert status == 401, answer
        assert answer["error"]["code"] == "unauthorized"
    status, answer = daemon.http("POST", "/mcp", INITIALIZE, token=daemon.token, headers=MCP_HEADERS)
    assert status == 200, answer
    assert answer["result"]["serverInfo"]["name"] == "warmpool"

    # and the official client fails to connect without it
    with pytest.raises(BaseException):
        asyncio.run(_connect_without_token(daemon))


async def _connect_without_token(daemon):
    async with create_mcp_http_client() as http:
        async with streamable_http_client(daemon.url + "/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await asyncio.wait_for(s.initialize(), 20)


def test_stdio_without_a_daemon_says_so_in_a_tool_error():
    class Nowhere:
        url = "http://127.0.0.1:9"  # discard: nothing answers HTTP there
        token = None

    async def main():
        async with connect(Nowhere, "stdio", None) as s:
            return await s.list_tools(), await s.call_tool("list_pools", {})

    tools, pools = asyncio.run(main())
    assert len(tools.tools) == len(TOOLS)
    assert_api_error(pools, "daemon_unreachable")
    assert "is `warmpool serve` running?" in text(pools)
    assert pools.structured_content["status"] is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_daemon_without_a_token(open_daemon, transport):
    async def body(s):
        return await s.call_tool("run_command", {"pool": "py", "command": "echo open"})

    r = session_run(open_daemon, transport, body)
    assert not r.is_error, text(r)
    assert r.structured_content["stdout"] == "open\n"


def test_mcp_without_a_token_answers_only_loopback_host_names(open_daemon):
    d = open_daemon
    status, answer = d.http("POST", "/mcp", INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"})
    assert status == 403, answer
    assert answer["error"]["code"] == "forbidden_host"
    for host in [f"localhost:{d.port}", f"127.0.0.1:{d.port}"]:
        status, answer = d.http("POST", "/mcp", INITIALIZE, headers={**MCP_HEADERS, "Host": host})
        assert status == 200, answer
