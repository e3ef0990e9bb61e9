//! The MCP tools, each a thin translation to one or two calls of the daemon's HTTP API
//! (docs/api.md): the API validates, so a tool error carries the API's own code and message.

use std::sync::Arc;

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};

use super::catalog::{pools_summary, tool_list, MAX_TOOL_OUTPUT};

/// Where the tools send their HTTP calls: a daemon's base URL and its token (read at each
/// call, so the daemon's own `/mcp` follows a token changed by a reload).
#[derive(Clone)]
pub struct Backend {
    base: String,
    token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

/// A tool failure: the API's error (code, message, status) or one found before calling it.
#[derive(Debug)]
struct ToolError {
    status: Option<u16>,
    code: String,
    message: String,
}

impl ToolError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        ToolError {
            status: None,
            code: code.into(),
            message: message.into(),
        }
    }

    fn into_result(self) -> CallToolResult {
        let status = self
            .status
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default();
        let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
            "{}: {}{status}",
            self.code, self.message
        ))]);
        r.structured_content = Some(json!({
            "error": {"code": self.code, "message": self.message},
            "status": self.status,
        }));
        r
    }
}

type Outcome = Result<CallToolResult, ToolError>;

impl Backend {
    pub fn new(base: &str, token: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Backend {
            base: base.trim_end_matches('/').to_string(),
            token: Arc::new(token),
        }
    }

    /// One call; a status other than 2xx becomes the API's error.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes, ToolError> {
        let client = crate::client::Client::new(&self.base, (self.token)());
        let resp = client
            .request(method, path, body)
            .await
            .map_err(|e| ToolError::new("daemon_unreachable", format!("{e:#}")))?;
        let status = resp.status;
        let bytes = resp.bytes().await.map_err(|e| {
            ToolError::new(
                "daemon_unreachable",
                format!("the daemon's answer broke off: {e:#}"),
            )
        })?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(ToolError {
            status: Some(status),
            code: v["error"]["code"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("http_{status}")),
            message: v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        })
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ToolError> {
        let bytes = self
            .call(method, path, body.map(|b| b.to_string().into_bytes()))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ToolError::new(
                "internal",
                format!("the daemon answered something that is not JSON: {e}"),
            )
        })
    }
}

/// The MCP server: the tools, forwarding to a [`Backend`].
#[derive(Clone)]
pub struct Warmpool {
    api: Backend,
}

impl Warmpool {
    pub fn new(api: Backend) -> Self {
        Warmpool { api }
    }

    /// The tools, their descriptions naming the pools the daemon has now (when it answers).
    async fn tools(&self) -> Vec<Tool> {
        let pools = match self.api.json("GET", "/v1/pools", None).await {
            Ok(v) => pools_summary(&v),
            Err(e) => format!(
                "(the pools could not be listed: {}: {}; call list_pools later)",
                e.code, e.message
            ),
        };
        tool_list(&pools)
    }

    async fn dispatch(&self, name: &str, args: &JsonObject) -> Outcome {
        match name {
            "list_pools" => self.list_pools().await,
            "run_command" => self.run_command(args).await,
            "start_session" => self.start_session(args).await,
            "end_session" => self.end_session(args).await,
            "read_file" => self.read_file(args).await,
            "write_file" => self.write_file(args).await,
            "list_dir" => self.list_dir(args).await,
            other => Err(ToolError::new(
                "unknown_tool",
                format!("no tool named {other:?}; call tools/list"),
            )),
        }
    }

    async fn list_pools(&self) -> Outcome {
        let v = self.api.json("GET", "/v1/pools", None).await?;
        let mut r = CallToolResult::success(vec![ContentBlock::text(pools_summary(&v))]);
        r.structured_content = Some(v);
        Ok(r)
    }

    /// The pool a call names, or the pool of the session it names.
    async fn pool_of(&self, args: &JsonObject) -> Result<String, ToolError> {
        if let Some(p) = opt_str(args, "pool")? {
            return Ok(p);
        }
        match opt_str(args, "session")? {
            Some(s) => self.session_pool(&s).await,
            None => Err(ToolError::new(
                "invalid_request",
                "give pool (call list_pools to see them) or session",
            )),
        }
    }

    async fn session_pool(&self, id: &str) -> Result<String, ToolError> {
        let v = self
            .api
            .json("GET", &format!("/v1/sessions/{}", enc(id)), None)
            .await?;
        Ok(v["pool"].as_str().unwrap_or_default().to_string())
    }

    /// Runs a task body on a pool: the API's result, or its error.
    async fn task(&self, pool: &str, body: Value) -> Result<Value, ToolError> {
        self.api
            .json(
                "POST",
                &format!("/v1/pools/{}/tasks", enc(pool)),
                Some(body),
            )
            .await
    }

    async fn run_command(&self, args: &JsonObject) -> Outcome {
        let pool = self.pool_of(args).await?;
        let mut body = serde_json::Map::new();
        match args.get("command") {
            Some(Value::String(s)) => {
                body.insert("shell".into(), json!(s));
            }
            // Anything else goes to the API as argv, which refuses what is not a list of
            // strings with its own error.
            Some(v) => {
                body.insert("cmd".into(), v.clone());
            }
            None => {
                return Err(ToolError::new(
                    "invalid_request",
                    "missing command: a shell string (\"ls -l | head\") or an argv list ([\"ls\", \"-l\"])",
                ))
            }
        }
        for key in ["session", "timeout", "stdin", "workdir", "env"] {
            if let Some(v) = args.get(key) {
                body.insert(key.into(), v.clone());
            }
        }
        let v = self.task(&pool, Value::Object(body)).await?;
        Ok(task_result(v))
    }

    async fn start_session(&self, args: &JsonObject) -> Outcome {
        let pool = req_str(args, "pool")?;
        let mut body = json!({"pool": pool});
        if let Some(id) = opt_str(args, "id")? {
            body["id"] = json!(id);
        }
        if let Some(t) = args.get("idle_timeout") {
            body["idle_timeout"] = t.clone();
        }
        let created = self.api.json("POST", "/v1/sessions", Some(body)).await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        // A session takes its container at its first task, and files need that container:
        // take it now, so read_file, write_file and list_dir work straight away.
        if created["state"] == "not_started" {
            self.task(&pool, json!({"cmd": ["true"], "session": id}))
                .await?;
        }
        let v = self
            .api
            .json("GET", &format!("/v1/sessions/{}", enc(&id)), None)
            .await?;
        let text = format!(
            "session {id:?} on pool {pool:?} is running (container {}); pass session: {id:?} to run_command and the file tools, and call end_session when done (it ends by itself after {} idle)",
            v["container"].as_str().unwrap_or("?"),
            v["idle_timeout"].as_str().unwrap_or("?"),
        );
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(v);
        Ok(r)
    }

    async fn end_session(&self, args: &JsonObject) -> Outcome {
        let id = req_str(args, "session")?;
        let v = self
            .api
            .json("DELETE", &format!("/v1/sessions/{}", enc(&id)), None)
            .await?;
        let text = format!(
            "session {id:?} ended after {} tasks; its container is removed",
            v["tasks"]
        );
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(v);
        Ok(r)
    }

    async fn read_file(&self, args: &JsonObject) -> Outcome {
        let id = req_str(args, "session")?;
        let path = abs_path(&req_str(args, "path")?)?;
        let offset = match args.get("offset") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                ToolError::new("invalid_request", "offset must be a whole number of bytes")
            })? as usize,
        };
        let data = self.api.call("GET", &files_path(&id, &path), None).await?;
        let size = data.len();
        let start = offset.min(size);
        let (content, encoding, end) = match std::str::from_utf8(&data) {
            Ok(text) => {
                let start = floor_char(text, start);
                let end = floor_char(text, start + MAX_TOOL_OUTPUT);
                (text[start..end].to_string(), "utf-8", end)
            }
            Err(_) => {
                let end = (start + MAX_TOOL_OUTPUT).min(size);
                (
                    base64::engine::general_purpose::STANDARD.encode(&data[start..end]),
                    "base64",
                    end,
                )
            }
        };
        let mut text = content.clone();
        if encoding == "base64" {
            text = format!("[binary file, {size} bytes; bytes {start}..{end} in base64]\n{text}");
        }
        if end < size {
            text.push_str(&format!(
                "\n[warmpool: showing bytes {start}..{end} of {size}; {} more bytes: call read_file with offset {end}]",
                size - end
            ));
        }
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(json!({
            "path": path, "size": size, "offset": start, "end": end,
            "encoding": encoding, "content": content, "more": end < size,
        }));
        Ok(r)
    }

    async fn write_file(&self, args: &JsonObject) -> Outcome {
        let id = req_str(args, "session")?;
        let path = abs_path(&req_str(args, "path")?)?;
        let content = req_str(args, "content")?;
        let data = match opt_str(args, "encoding")?.as_deref() {
            None | Some("utf-8") => content.into_bytes(),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(content.as_bytes())
                .map_err(|e| {
                    ToolError::new(
                        "invalid_request",
                        format!("content is not valid base64: {e}"),
                    )
                })?,
            Some(other) => {
                return Err(ToolError::new(
                    "invalid_request",
                    format!("encoding {other:?} is neither \"utf-8\" nor \"base64\""),
                ))
            }
        };
        let bytes = self
            .api
            .call("PUT", &files_path(&id, &path), Some(data))
            .await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = format!("wrote {} bytes to {path}", v["bytes"]);
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(v);
        Ok(r)
    }

    async fn list_dir(&self, args: &JsonObject) -> Outcome {
        let id = req_str(args, "session")?;
        let path = opt_str(args, "path")?.unwrap_or_else(|| ".".into());
        let pool = self.session_pool(&id).await?;
        let v = self
            .task(
                &pool,
                json!({"cmd": ["ls", "-la", "--", path], "session": id}),
            )
            .await?;
        if v["exit_code"] != 0 {
            let stderr = v["stderr"].as_str().unwrap_or_default().trim().to_string();
            let code = if stderr.contains("No such file") {
                "no_such_path"
            } else {
                "command_failed"
            };
            let why = v["error"].as_str().map(str::to_string).unwrap_or(stderr);
            return Err(ToolError::new(
                code,
                format!("ls -la {path} failed (exit {}): {why}", v["exit_code"]),
            ));
        }
        let (listing, cut) = cut(v["stdout"].as_str().unwrap_or_default(), "the listing");
        let mut r = CallToolResult::success(vec![ContentBlock::text(listing.clone())]);
        r.structured_content = Some(json!({"path": path, "listing": listing, "cut_bytes": cut}));
        Ok(r)
    }
}

impl ServerHandler for Warmpool {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("warmpool", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "warmpool runs commands in warm, isolated containers of named pools (one per \
                 kind of work; list_pools says which). run_command runs one command in a fresh \
                 container; for state that lasts across commands (files, a checkout), \
                 start_session, pass its id to run_command and the file tools, then end_session.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools().await))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match self.dispatch(&request.name, &args).await {
            Ok(r) => r,
            Err(e) => e.into_result(),
        };
        Ok(result.into())
    }
}

/// A task result for a model: the API's JSON with each stream cut to [`MAX_TOOL_OUTPUT`].
fn task_result(mut v: Value) -> CallToolResult {
    let mut text = String::new();
    if v["timed_out"] == true {
        text.push_str("timed out (killed)\n");
    }
    if let Some(e) = v["error"].as_str() {
        text.push_str(&format!("error: {e}\n"));
    }
    if !v["signal"].is_null() {
        text.push_str(&format!("signal: {}\n", v["signal"]));
    }
    text.push_str(&format!("exit_code: {}\n", v["exit_code"]));
    for name in ["stdout", "stderr"] {
        let encoding = v[format!("{name}_encoding")].as_str().unwrap_or("utf-8");
        let (shown, cut_bytes) = cut(v[name].as_str().unwrap_or_default(), name);
        if !shown.is_empty() {
            let enc = if encoding == "base64" {
                " (not UTF-8: base64)"
            } else {
                ""
            };
            text.push_str(&format!("--- {name}{enc} ---\n{shown}"));
            if !shown.ends_with('\n') {
                text.push('\n');
            }
        }
        if v[format!("{name}_truncated")] == true {
            text.push_str(&format!(
                "[warmpool: the daemon kept only the start of {name} (the pool's max_output)]\n"
            ));
        }
        v[name] = json!(shown);
        v[format!("{name}_cut_bytes")] = json!(cut_bytes);
    }
    let failed = v["error"].is_string();
    let mut r = if failed {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    r.structured_content = Some(v);
    r
}

/// `s` cut to [`MAX_TOOL_OUTPUT`] bytes (on a character boundary) with a note saying how much
/// was cut, and the number of bytes cut.
fn cut(s: &str, what: &str) -> (String, usize) {
    if s.len() <= MAX_TOOL_OUTPUT {
        return (s.to_string(), 0);
    }
    let end = floor_char(s, MAX_TOOL_OUTPUT);
    let cut = s.len() - end;
    (
        format!(
            "{}\n[warmpool: cut {cut} of {} bytes of {what} (a tool shows at most {} KiB); write it to a file and read parts with read_file, or filter it with head, tail or grep]\n",
            &s[..end],
            s.len(),
            MAX_TOOL_OUTPUT / 1024
        ),
        cut,
    )
}

/// The largest character boundary of `s` at or below `i`.
fn floor_char(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn opt_str(args: &JsonObject, key: &str) -> Result<Option<String>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ToolError::new(
            "invalid_request",
            format!("{key} must be a string"),
        )),
    }
}

fn req_str(args: &JsonObject, key: &str) -> Result<String, ToolError> {
    opt_str(args, key)?.ok_or_else(|| ToolError::new("invalid_request", format!("missing {key}")))
}

/// File paths are absolute, as in the API; a relative one would silently mean the root.
fn abs_path(path: &str) -> Result<String, ToolError> {
    if path.starts_with('/') {
        Ok(path.to_string())
    } else {
        Err(ToolError::new(
            "invalid_path",
            format!("path {path:?} must be absolute, e.g. /work/{path}"),
        ))
    }
}

fn files_path(session: &str, path: &str) -> String {
    format!(
        "/v1/sessions/{}/files/{}",
        enc(session),
        path.trim_start_matches('/')
            .split('/')
            .map(enc)
            .collect::<Vec<_>>()
            .join("/")
    )
}

/// Percent-encodes one path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_limit_is_cut_with_a_note() {
        let (s, n) = cut("short", "stdout");
        assert_eq!((s.as_str(), n), ("short", 0));
        let long = "é".repeat(MAX_TOOL_OUTPUT); // 2 bytes each
        let (s, n) = cut(&long, "stdout");
        assert_eq!(n, MAX_TOOL_OUTPUT);
        assert!(s.starts_with(&"é".repeat(MAX_TOOL_OUTPUT / 2)));
        assert!(s.contains(&format!(
            "cut {MAX_TOOL_OUTPUT} of {} bytes of stdout",
            2 * MAX_TOOL_OUTPUT
        )));
    }

    #[test]
    fn a_task_result_keeps_the_api_fields_and_cuts_streams() {
        let r = task_result(json!({
            "exit_code": 3, "signal": null, "stdout": "x".repeat(MAX_TOOL_OUTPUT + 10),
            "stderr": "oops\n", "stdout_truncated": false, "stderr_truncated": false, "timed_out": false
        }));
        assert_eq!(r.is_error, Some(false));
        let v = r.structured_content.unwrap();
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["stdout_cut_bytes"], 10);
        assert_eq!(v["stderr"], "oops\n");
    }

    #[test]
    fn paths_are_percent_encoded_per_segment() {
        assert_eq!(
            files_path("s 1", "/work/a b/c.txt"),
            "/v1/sessions/s%201/files/work/a%20b/c.txt"
        );
        assert!(abs_path("notes.txt").is_err());
    }

    #[test]
    fn pool_descriptions_come_first_when_the_api_has_them() {
        let v = json!({"pools": [
            {"name": "coder", "description": "Python 3.12 and git", "image": "img", "exec": "shim", "min": 1, "max": 4, "idle": 1},
            {"name": "plain", "image": "img2", "exec": "docker-exec", "min": 0, "max": 2, "idle": 0}
        ]});
        let s = pools_summary(&v);
        assert!(s.contains("- coder: Python 3.12 and git; image img, exec shim, 1 to 4 containers"));
        assert!(s.contains("- plain: image img2, exec docker-exec, 0 to 2 containers"));
    }
}
