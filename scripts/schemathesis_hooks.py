"""schemathesis hooks for scripts/test-api-schema.sh.

schemathesis validates JSON bodies only; the streamed task answer is NDJSON
(application/x-ndjson), one TaskStreamEvent per line. This check validates every line against
that schema from the daemon's own document, and that the stream ends with one `exit` or `error`
line and has no other such line.
"""

import json
import os

import jsonschema_rs  # schemathesis's own JSON Schema validator
import schemathesis

_VALIDATOR = None


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        with open(os.environ["WARMPOOL_OPENAPI"], encoding="utf-8") as f:
            spec = json.load(f)
        root = {
            "$ref": "#/components/schemas/TaskStreamEvent",
            "components": spec["components"],
        }
        _VALIDATOR = jsonschema_rs.Draft202012Validator(root)
    return _VALIDATOR


@schemathesis.check
def ndjson_stream_conformance(ctx, response, case):
    """Every line of an application/x-ndjson answer is a TaskStreamEvent; the last ends it."""
    content_type = ";".join(response.headers.get("content-type", [])).split(";")[0].strip()
    if content_type != "application/x-ndjson":
        return None
    text = response.content.decode("utf-8")
    if not text.endswith("\n"):
        raise AssertionError("the NDJSON stream does not end with a newline")
    lines = text[:-1].split("\n")
    validator = _validator()
    ends = 0
    for i, line in enumerate(lines):
        try:
            event = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"line {i + 1} is not JSON ({e}): {line[:200]!r}")
        errors = list(validator.iter_errors(event))
        if errors:
            raise AssertionError(
                f"line {i + 1} is not a TaskStreamEvent: {errors[0].message}: {line[:200]!r}"
            )
        if "exit" in event or "error" in event:
            ends += 1
            if i != len(lines) - 1:
                raise AssertionError(f"line {i + 1} ends the stream but more lines follow")
    if ends != 1:
        raise AssertionError("the stream has no `exit` or `error` line at its end")
    return True


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keeps session "demo" (the files endpoints' example) alive and started.

    Generated DELETEs end it now and then; its files calls would then only ever see 404.
    Before a files call on it, this recreates it and runs a task in it, so the call moves real
    files (a random path meets the shim's real errors). The daemon is `WARMPOOL_BASE`, its
    token `WARMPOOL_TOKEN`.
    """
    path = case.operation.path
    if "/files/" not in path and "/archive/" not in path:
        return
    if (case.path_parameters or {}).get("id") != "demo":
        return
    import requests  # schemathesis's own HTTP client

    base = os.environ["WARMPOOL_BASE"]
    headers = {"Authorization": f"Bearer {os.environ['WARMPOOL_TOKEN']}"}
    got = requests.get(f"{base}/v1/sessions/demo", headers=headers, timeout=30)
    if got.status_code == 200 and got.json().get("state") == "running":
        return
    requests.post(
        f"{base}/v1/sessions", json={"pool": "coder", "id": "demo"}, headers=headers, timeout=30
    )
    requests.post(
        f"{base}/v1/pools/coder/tasks",
        json={"shell": "echo kept > notes.txt", "session": "demo"},
        headers=headers,
        timeout=30,
    )
