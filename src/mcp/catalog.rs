//! The tool catalogue: each tool's name, description and input schema, and the summary of
//! the pools that the descriptions carry, so a model knows which pools exist and what each is
//! for.

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

/// The most a tool shows a model of one output stream (stdout, stderr) or of one file read:
/// 16 KiB. More would crowd out the rest of its context; the rest is cut with a note saying
/// how much was cut and how to get at it (a file and `read_file` with `offset`, or a filter).
pub const MAX_TOOL_OUTPUT: usize = 16 * 1024;

/// One line per pool: name, what it is for, image and limits.
pub(super) fn pools_summary(v: &Value) -> String {
    let pools = v["pools"].as_array().cloned().unwrap_or_default();
    if pools.is_empty() {
        return "(the daemon has no pools)".into();
    }
    pools
        .iter()
        .map(|p| {
            let what = match p["description"].as_str() {
                Some(d) if !d.trim().is_empty() => format!("{}; ", d.trim()),
                _ => String::new(),
            };
            format!(
                "- {}: {what}image {}, exec {}, {} to {} containers ({} idle now)",
                p["name"].as_str().unwrap_or("?"),
                p["image"].as_str().unwrap_or("?"),
                p["exec"].as_str().unwrap_or("?"),
                p["min"],
                p["max"],
                p["idle"],
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn schema(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("schemas are objects"),
    }
}

fn tool(name: &'static str, description: String, input: Value, read_only: bool) -> Tool {
    let mut t = Tool::new(name, description, schema(input));
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(read_only);
    a.open_world_hint = Some(false);
    t.annotations = Some(a);
    t
}

/// The tool definitions; `pools` is the summary of the pools, for the descriptions.
pub(super) fn tool_list(pools: &str) -> Vec<Tool> {
    let session_arg = json!({"type": "string", "description": "A session id from start_session."});
    let path_arg = json!({"type": "string", "description": "An absolute path in the container, e.g. /work/notes.txt (the workdir is /work unless the pool sets another)."});
    vec![
        tool(
            "run_command",
            format!(
                "Run one command in a warm container of a pool and return its exit code, signal, \
                 stdout and stderr (each cut to {} KiB here, with a note saying how much was cut). \
                 Without a session the container is fresh and thrown away after; with one, files \
                 and the workdir persist between commands. Pools:\n{pools}",
                MAX_TOOL_OUTPUT / 1024
            ),
            json!({
                "type": "object",
                "properties": {
                    "pool": {"type": "string", "description": "The pool to run in (see the list above); may be left out when session is given."},
                    "command": {
                        "description": "A shell string run by /bin/sh -c (\"ls -l | head\"), or an argv list run as is ([\"python3\", \"-c\", \"print(1)\"]).",
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1}
                        ]
                    },
                    "session": {"type": "string", "description": "Run in this session's container (start_session)."},
                    "timeout": {"type": "string", "description": "A duration such as \"30s\" or \"2m\", at most the pool's task_timeout (its default)."},
                    "stdin": {"type": "string", "description": "Text given to the command on stdin."},
                    "workdir": {"type": "string", "description": "An absolute working directory (default: the pool's workdir)."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables."}
                },
                "required": ["command"]
            }),
            false,
        ),
        tool(
            "list_pools",
            "List the pools: name, what each is for, image, exec mode, min and max containers, \
             and how many are idle, busy and starting now."
                .into(),
            json!({"type": "object", "properties": {}}),
            true,
        ),
        tool(
            "start_session",
            format!(
                "Start a session: one container of a pool kept for you, so files and the workdir \
                 persist between run_command calls and the file tools work. Returns its id. \
                 It ends on end_session or after idle_timeout without use. Pools:\n{pools}"
            ),
            json!({
                "type": "object",
                "properties": {
                    "pool": {"type": "string", "description": "The pool whose container to take."},
                    "id": {"type": "string", "description": "An id of your choice ([A-Za-z0-9][A-Za-z0-9_.-]*, up to 64); a live session with this id is reused."},
                    "idle_timeout": {"type": "string", "description": "End it after this long unused, e.g. \"10m\" (default: the pool's)."}
                },
                "required": ["pool"]
            }),
            false,
        ),
        tool(
            "end_session",
            "End a session: its container and every file in it are removed.".into(),
            json!({"type": "object", "properties": {"session": session_arg}, "required": ["session"]}),
            false,
        ),
        tool(
            "read_file",
            format!(
                "Read a file from a session's container: text as is, other bytes as base64, at \
                 most {} KiB per call; read further with offset.",
                MAX_TOOL_OUTPUT / 1024
            ),
            json!({
                "type": "object",
                "properties": {
                    "session": session_arg,
                    "path": path_arg,
                    "offset": {"type": "integer", "minimum": 0, "description": "The byte to start at (default 0)."}
                },
                "required": ["session", "path"]
            }),
            true,
        ),
        tool(
            "write_file",
            "Write a file in a session's container, replacing it; its directory must exist \
             (run_command mkdir -p). The root is read-only: write under the workdir or /tmp."
                .into(),
            json!({
                "type": "object",
                "properties": {
                    "session": session_arg,
                    "path": path_arg,
                    "content": {"type": "string", "description": "The new content."},
                    "encoding": {"type": "string", "enum": ["utf-8", "base64"], "description": "How content is written: utf-8 text (the default) or base64 for bytes."}
                },
                "required": ["session", "path", "content"]
            }),
            false,
        ),
        tool(
            "list_dir",
            "List a directory in a session's container (ls -la).".into(),
            json!({
                "type": "object",
                "properties": {
                    "session": session_arg,
                    "path": {"type": "string", "description": "The directory, absolute or relative to the workdir (default: the workdir)."}
                },
                "required": ["session"]
            }),
            true,
        ),
    ]
}
