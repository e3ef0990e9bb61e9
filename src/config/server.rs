//! `[server]` and `[docker]`: daemon-wide keys, not layered (there is no `[defaults]` for
//! them), but declared with the same key tables as the pool keys.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::TableLike;

use super::checks::{check_absolute, check_docker_host, check_listen, check_path};
use super::keys::settings;
use super::read::{Ctx, Setting, Slot};
use super::suggest::Section;
use super::values::{KIB, MIB};

/// Loopback, so that a fresh install never exposes the API to the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

settings! {
    /// `[server]`: how the API is served and what it lets one client cost.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ServerConfig, layer ServerLayer, keys SERVER_KEYS, section Section::Server {
        given {}
        keys {
            /// The TCP address of the HTTP API and /metrics ([`DEFAULT_LISTEN`]). `None` only
            /// when the operator wrote `listen = ""` next to a `unix_socket`, so that a
            /// socket-only daemon opens no TCP port at all. Host names are not resolved.
            listen: Option<SocketAddr> = Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070)),
                |cx, e| cx.text(e, "an address such as \"127.0.0.1:7070\"", check_listen)
                    .map(|s| s.parse::<SocketAddr>().ok());
            /// An absolute path to serve the API on as well (or instead, see `listen`).
            unix_socket: Option<PathBuf> = None,
                |cx, e| cx.text(e, "a path such as \"/run/warmpool/api.sock\"", check_absolute)
                    .map(|s| Some(PathBuf::from(s)));
            /// When set, `/v1/*` needs `Authorization: Bearer <the file's content>`.
            token_file: Option<PathBuf> = None,
                |cx, e| cx.text(e, "a path such as \"/etc/warmpool/token\"", check_path)
                    .map(|s| Some(PathBuf::from(s)));
            /// Bytes, at least 1KiB; bounds the memory one upload can pin.
            max_request_body: u64 = 16 * MIB,
                |cx, e| cx.size(e, KIB, ": a task request must fit in it");
            /// Live sessions at once (at least 1); the least recently used is ended for a
            /// new one.
            max_sessions: usize = 1000,
                |cx, e| cx.count(e, 1, ": with 0 no session could ever start");
            /// How long running tasks may finish after SIGTERM.
            shutdown_grace: Duration = Duration::from_secs(30), |cx, e| cx.duration(e, None);
            /// When set, every task that ran is appended to this file as a line of a trace
            /// that `warmpool simulate` replays (arrival, pool, duration). Off by default.
            trace_file: Option<PathBuf> = None,
                |cx, e| cx.text(e, "a path such as \"/var/lib/warmpool/trace.jsonl\"", check_path)
                    .map(|s| Some(PathBuf::from(s)));
            /// Bytes, at least 1KiB: past it the trace file is renamed to `FILE.1` (replacing
            /// the previous one) and a new one starts.
            trace_file_max_size: u64 = 64 * MIB,
                |cx, e| cx.size(e, KIB, ": a trace file must hold at least a few lines");
        }
        tables {}
    }
}

settings! {
    /// `[docker]`: which engine to talk to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DockerConfig, layer DockerLayer, keys DOCKER_KEYS, section Section::Docker {
        given {}
        keys {
            /// A URL such as `unix:///var/run/docker.sock`. `None` defers to `DOCKER_HOST`
            /// and then the local socket, as the docker CLI does.
            host: Option<String> = None,
                |cx, e| cx.text(e, "a URL such as \"unix:///var/run/docker.sock\"", check_docker_host)
                    .map(Some);
        }
        tables {}
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::builtin()
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig::builtin()
    }
}

/// Reads `[server]` and checks that the API is served somewhere.
pub(super) fn server(cx: &mut Ctx<'_>, table: &dyn TableLike) -> ServerConfig {
    let layer = ServerLayer::read(cx, table, "server");
    let server = ServerConfig::merge(&layer, &ServerLayer::default(), ServerConfig::default());
    // A bad unix_socket was already reported; do not also claim that it is missing.
    if let (
        Slot::Set(Setting {
            value: None, at, ..
        }),
        None,
        false,
    ) = (
        &layer.listen,
        &server.unix_socket,
        layer.unix_socket.is_bad(),
    ) {
        cx.report(
            *at,
            "server.listen (\"\") turns the TCP listener off, but server.unix_socket is \
             not set, so nothing would serve the API: set unix_socket or a listen address",
        );
    }
    server
}

/// Reads `[docker]`.
pub(super) fn docker(cx: &mut Ctx<'_>, table: &dyn TableLike) -> DockerConfig {
    let layer = DockerLayer::read(cx, table, "docker");
    DockerConfig::merge(&layer, &DockerLayer::default(), DockerConfig::default())
}

/// The engine's local socket, the address used when neither `[docker] host` nor
/// `DOCKER_HOST` names one.
pub const DEFAULT_ENGINE: &str = "unix:///var/run/docker.sock";

/// The engine's address: `[docker] host` when set, else `DOCKER_HOST` when set and not empty,
/// else [`DEFAULT_ENGINE`]. The one rule the engine client, the direct transport and the
/// host-path checks (bind sources, persistent workspaces) all use, so they cannot disagree
/// about which engine, or whether it is local ([`is_local_engine`]).
pub fn engine_address(configured: Option<&str>) -> String {
    configured
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENGINE.to_string())
}

/// Whether an engine address (as [`engine_address`] gives it) is on this host: a `unix://`
/// socket. Only then does the engine see this host's paths.
pub fn is_local_engine(address: &str) -> bool {
    address.starts_with("unix://")
}
