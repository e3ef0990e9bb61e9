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
