//! MCP (Model Context Protocol) front end, on the official Rust SDK (`rmcp`): one tool
//! handler ([`tools::Warmpool`]) that forwards every call to a daemon's HTTP API, served
//! two ways:
//!
//! - `warmpool mcp --addr URL` speaks MCP over stdio to a client (say, a desktop app) and
//!   forwards to a running daemon ([`stdio`]);
//! - the daemon itself serves MCP over streamable HTTP at `/mcp` ([`routes`]), forwarding to
//!   its own listen address, behind the same bearer token as `/v1/*`.
//!
//! Because both go through the HTTP API, a tool error carries exactly the API's error code
//! and message. See docs/mcp.md.

mod catalog;
pub mod tools;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;

use crate::api::{ApiError, ErrorCode, Token};
pub use catalog::MAX_TOOL_OUTPUT;
pub use tools::{Backend, Warmpool};

/// The `warmpool mcp` arguments.
#[derive(clap::Args)]
pub struct McpArgs {
    /// The daemon's HTTP address.
    #[arg(long, env = "WARMPOOL_ADDR", default_value = "http://127.0.0.1:7070")]
    pub addr: String,
    /// The daemon's bearer token (the content of its server.token_file), if it has one.
    #[arg(long, env = "WARMPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `warmpool mcp`: MCP over stdin/stdout until the client closes them. Nothing but MCP
/// messages goes to stdout.
pub async fn stdio(args: McpArgs) -> anyhow::Result<ExitCode> {
    let token = args.token.filter(|t| !t.is_empty());
    let handler = Warmpool::new(Backend::new(&args.addr, move || token.clone()));
    let service = handler
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("MCP handshake on stdio failed: {e}"))?;
    service.waiting().await?;
    Ok(ExitCode::SUCCESS)
}

/// The `/mcp` route of the daemon's router: streamable HTTP (stateless, JSON answers),
/// forwarding to the daemon's own `server.listen` with its current token, and refused without
/// that token like `/v1/*`.
///
/// `listen` is `server.listen` (`None`: only a unix socket, and `/mcp` answers 503
/// `mcp_unavailable`), `token` the API's shared token, `max_body` `server.max_request_body`
/// in bytes. The daemon merges this into the API's router, so the API does not depend on MCP.
pub fn routes<S: Clone + Send + Sync + 'static>(
    listen: Option<SocketAddr>,
    token: Token,
    max_body: usize,
) -> Router<S> {
    let Some(listen) = listen else {
        // Only a unix socket: the forwarding client speaks TCP, so say so instead of a 404.
        return Router::new().route(
            "/mcp",
            axum::routing::any(|| async {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::McpUnavailable,
                    "/mcp needs server.listen (a TCP address); with only server.unix_socket use `warmpool mcp` instead",
                )
            }),
        );
    };
    let backend_token = token.clone();
    let backend = Backend::new(&format!("http://{}", self_addr(listen)), move || {
        backend_token.get().map(|t| t.to_string())
    });
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // Big enough that an oversize file reaches the API and gets its own 413 answer
        // (`body_too_large`) as a tool error; JSON escaping can double a text.
        .with_max_request_body_bytes(max_body.saturating_mul(2) + (1 << 20))
        // [`guard`] checks the Host, knowing whether a token is in force at each request.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(Warmpool::new(backend.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    // On 0.0.0.0 any of the host's names is legitimate; otherwise the loopback names and
    // the address it listens on.
    let hosts = (!listen.ip().is_unspecified()).then(|| {
        let mut h = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        h.push(listen.ip().to_string());
        Arc::new(h)
    });
    let guard_state = Guard { token, hosts };
    Router::new()
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(guard_state, guard))
}

/// Where the daemon reaches itself: its listen address, loopback when it listens on all.
fn self_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

#[derive(Clone)]
struct Guard {
    /// The API's token, read at each request (a reload may change it).
    token: Token,
    /// The `Host` names accepted when no token is in force (`None`: any).
    hosts: Option<Arc<Vec<String>>>,
}

/// With a token in force: the bearer check of `/v1/*`, with the same answers. Without one:
/// only loopback (or listen-address) `Host` names, so that a web page cannot reach a local
/// daemon's tools through DNS rebinding (with a token it could not anyway).
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Some(expected) = g.token.get() else {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return match &g.hosts {
            Some(hosts) if !host_allowed(host, hosts) => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::ForbiddenHost,
                format!("/mcp without a token answers only to the loopback names and the listen address, not Host {host:?} (set server.token_file to open it to other names)"),
            )
            .into_response(),
            _ => next.run(req).await,
        };
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim_start_matches(' '));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the bearer token is wrong",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this daemon requires \"Authorization: Bearer <token>\" on /mcp (the token is in the file server.token_file names)",
        )
        .into_response(),
    }
}

/// Whether a `Host` value (name or address, with or without a port) is one of `hosts`.
fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    hosts.contains(&name)
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_reaches_itself_on_loopback_when_it_listens_on_all() {
        let a: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert_eq!(self_addr(a).to_string(), "127.0.0.1:7070");
        let a: SocketAddr = "[::]:7070".parse().unwrap();
        assert_eq!(self_addr(a).to_string(), "[::1]:7070");
        let a: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(self_addr(a), a);
    }

    #[test]
    fn only_loopback_and_listen_hosts_pass_without_a_token() {
        let hosts = ["localhost", "127.0.0.1", "::1", "10.0.0.5"].map(String::from);
        for ok in [
            "localhost:7070",
            "LOCALHOST",
            "127.0.0.1:7070",
            "[::1]:7070",
            "10.0.0.5",
        ] {
            assert!(host_allowed(ok, &hosts), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "",
            "127.0.0.2",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(bad, &hosts), "{bad}");
        }
    }

    /// `/mcp`'s answer to a POST with `host` as its Host header.
    async fn answer(app: Router, host: &str) -> (StatusCode, serde_json::Value) {
        use tower::Service;
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/mcp")
            .header(header::HOST, host)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().call(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn without_a_tcp_listen_address_mcp_answers_mcp_unavailable() {
        let app: Router = routes(None, Token::new(None), 1024);
        let (status, body) = answer(app, "localhost").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "mcp_unavailable", "{body}");
    }

    #[tokio::test]
    async fn without_a_token_a_foreign_host_answers_forbidden_host() {
        let listen: SocketAddr = "10.0.0.5:7070".parse().unwrap();
        let app: Router = routes(Some(listen), Token::new(None), 1024);
        let (status, body) = answer(app, "evil.example:7070").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "forbidden_host", "{body}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
