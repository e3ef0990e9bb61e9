//! The running daemon's wiring: the engine, the shim, the supervisor, the HTTP listeners,
//! the signals, and reloading the configuration (SIGHUP and `POST /v1/admin/reload` share
//! [`Reloader`]). The HTTP layer only serves; the command line only parses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{AppState, Reload, Token};
use crate::config::{Config, ServerConfig};
use crate::metrics::{Metrics, ReloadResult};
use crate::supervisor::{Leftovers, ReloadSummary, Supervisor};

/// Runs the daemon until SIGTERM or SIGINT, then stops it in order: no new tasks, running
/// ones get `server.shutdown_grace`, every container is removed. `config` is the file at
/// `config_path` as already loaded (and shown valid) by the caller, who also set up logging.
///
/// The daemon holds a few descriptors per container (the direct transport's socket, the
/// memory cgroup's OOM counter) beside its clients' connections, so a soft limit of 1,024
/// (common under systemd and in shells) would run out near 500 containers: raise the soft
/// limit on open files to the hard one, as Go programs do at start. A failure only leaves
/// the limit as it was.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if let Some(raised) = raised_limit(limit) {
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?limit.current, to = ?raised.current, "raised the open files limit")
            }
            Err(e) => {
                tracing::warn!(error = %e, from = ?limit.current, "cannot raise the open files limit")
            }
        }
    }
}

/// The limit to set: the soft one up to the hard one (`None`: unlimited), if it is lower.
fn raised_limit(limit: rustix::process::Rlimit) -> Option<rustix::process::Rlimit> {
    let below = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    below.then_some(rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    })
}

/// Errors: a listener that cannot bind, the shim that cannot be written, a bad
/// `WARMPOOL_INSTANCE` or token file, or a failed start-up (what it made is removed first).
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    // Before anything is created: from here on SIGTERM and Ctrl-C mean an orderly stop, never
    // the default action that would kill the process with its containers left behind.
    let mut signals = ShutdownSignals::new().context("cannot install the signal handlers")?;
    // SIGHUP's default action ends the process: take it over before anything can take a
    // while (waiting for the engine, warming pools), so a reload sent early (say, by a
    // `systemctl reload` during start-up) is held until start-up is done, not fatal.
    let mut hup = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).context("cannot handle SIGHUP")?
    };
    raise_open_files_limit();
    let token = Token::new(read_token(&config.server).map_err(|e| anyhow::anyhow!(e))?);
    let runtime = crate::runtime::docker::DockerRuntime::new(config.docker.host.as_deref());
    // Whether pools may use exec_transport = "direct" depends on where the engine is.
    crate::exec::direct::set_engine_host(config.docker.host.as_deref());
    let shim_path = crate::shim::install(&crate::shim::default_dir())
        .context("cannot write the shim binary (set WARMPOOL_SHIM_DIR to a writable directory the engine can see)")?;
    let metrics = Arc::new(Metrics::new());
    let instance = instance_name()?;
    let supervisor = Supervisor::new(
        Arc::new(runtime),
        metrics,
        Some(shim_path),
        &instance,
        config.server.max_sessions,
    );
    supervisor.set_trace_recorder(trace_recorder(&config.server)?);
    let reloader = Arc::new(Reloader {
        supervisor: supervisor.clone(),
        config_path,
        server: parking_lot::RwLock::new(config.server.clone()),
        token: token.clone(),
    });
    let max_body = config.server.max_request_body as usize;
    // /mcp forwards to this daemon's own API, so it sits beside it, not inside it.
    let mcp = crate::mcp::routes(config.server.listen, token.clone(), max_body);
    let state = AppState {
        supervisor: supervisor.clone(),
        token,
        reloader: reloader.clone(),
        max_body,
    };
    let app = crate::api::router(state).merge(mcp);
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    if let Some(addr) = config.server.listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (server.listen); is another warmpool running?")
        })?;
        tracing::info!(%addr, daemon = %supervisor.daemon_id, "listening");
        let mut stopped = http_stopped.clone();
        let app = app.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    if let Some(path) = &config.server.unix_socket {
        servers.push(serve_unix(path, app.clone(), http_stopped.clone())?);
    }
    // A signal while the pools are being set up stops the daemon too; a failed start removes
    // what the pools set up before it had made.
    let start = supervisor.start(&config);
    tokio::pin!(start);
    let signalled = tokio::select! {
        started = &mut start => {
            if let Err(e) = started {
                log_leftovers(&supervisor.shutdown(Duration::ZERO).await);
                return Err(e);
            }
            false
        }
        _ = signals.recv() => {
            // Let the set-up step in flight finish: an engine request dropped half-way still
            // completes in the engine, after the sweep of the shutdown. The bound is for an
            // engine that never answered, which has nothing to clean up.
            tracing::info!("signal during start-up; finishing the set-up in flight first");
            let finish = Duration::from_secs(15);
            if let Ok(Err(e)) = tokio::time::timeout(finish, &mut start).await {
                tracing::warn!(error = %e, "start-up failed");
            }
            true
        }
    };
    if !signalled {
        tracing::info!(pools = config.pools.len(), "pools warming");
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reloader.reload().await;
            }
        });
        signals.recv().await;
    }
    tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: no new tasks; a second signal exits at once");
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("warmpool: second signal, exiting now (the next start removes what is left)");
        std::process::exit(130);
    });
    let left = supervisor.shutdown(config.server.shutdown_grace).await;
    let _ = stop_http.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    log_leftovers(&left);
    Ok(())
}

/// The last line of a shutdown: what the engine says is left of this instance, so "every
/// container removed" is said only when the engine confirms it (docs/operations.md).
fn log_leftovers(left: &Leftovers) {
    match left {
        Leftovers::None => {
            tracing::info!("stopped; every container removed (engine confirms none left)")
        }
        Leftovers::Remain(names) => tracing::warn!(
            remain = names.len(),
            "stopped; {} containers remain: {} (the next start of this instance removes them)",
            names.len(),
            names.join(", ")
        ),
        Leftovers::Unknown(e) => tracing::warn!(
            error = %e,
            "stopped; the engine could not confirm that no container is left (the next start of this instance removes any)"
        ),
    }
}

/// `WARMPOOL_INSTANCE` (default `default`): it goes into container names and labels, so it
/// is held to what both accept.
/// The recorder of `[server] trace_file` (rotated at `trace_file_max_size`), when set.
fn trace_recorder(
    server: &ServerConfig,
) -> anyhow::Result<Option<Arc<crate::simulate::record::TraceRecorder>>> {
    let Some(path) = &server.trace_file else {
        return Ok(None);
    };
    let recorder = crate::simulate::record::TraceRecorder::open(path, server.trace_file_max_size)
        .with_context(|| format!("cannot open server.trace_file {}", path.display()))?;
    Ok(Some(Arc::new(recorder)))
}

fn instance_name() -> anyhow::Result<String> {
    let instance = std::env::var("WARMPOOL_INSTANCE").unwrap_or_else(|_| "default".into());
    anyhow::ensure!(
        !instance.is_empty()
            && instance.len() <= 32
            && instance
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
        "WARMPOOL_INSTANCE {instance:?} must be 1 to 32 characters of a-z, 0-9, - and _"
    );
    Ok(instance)
}

/// Reads `server.token_file`: the token is its content, trimmed; `None` when no file is set.
///
/// Errors (as a sentence naming the file): the file cannot be read, or it is empty, which is
/// refused so a daemon is never left open by mistake.
pub fn read_token(server: &ServerConfig) -> Result<Option<Arc<String>>, String> {
    let Some(path) = &server.token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read server.token_file {}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!(
            "server.token_file {} is empty: put the token in it",
            path.display()
        ));
    }
    Ok(Some(Arc::new(t.to_string())))
}

/// Reloads the configuration file the daemon started from. Shared by SIGHUP and
/// `POST /v1/admin/reload` (through [`Reload`]).
pub struct Reloader {
    supervisor: Arc<Supervisor>,
    config_path: PathBuf,
    /// The server settings in force, to tell what a reload cannot change.
    server: parking_lot::RwLock<ServerConfig>,
    /// The token the API checks; a reload re-reads `server.token_file` into it.
    token: Token,
}

impl Reloader {
    /// Reads and validates the file first: a bad file (or token file) changes nothing, and
    /// every problem found comes back as the error, one per line. On success the pools are
    /// changed as the summary says and the new token is in force; `server.listen` and
    /// `server.unix_socket` only apply at the next restart (a warning says so).
    pub async fn reload(&self) -> Result<ReloadSummary, String> {
        let sup = &self.supervisor;
        let result = async {
            let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
            let token = read_token(&config.server)?;
            {
                let old = self.server.read();
                if old.listen != config.server.listen
                    || old.unix_socket != config.server.unix_socket
                {
                    tracing::warn!(
                        "server.listen and server.unix_socket apply at the next restart"
                    );
                }
                if old.trace_file != config.server.trace_file
                    || old.trace_file_max_size != config.server.trace_file_max_size
                {
                    tracing::warn!(
                        "server.trace_file and server.trace_file_max_size apply at the next restart"
                    );
                }
            }
            let summary = sup.reload(&config).await?;
            self.token.set(token);
            *self.server.write() = config.server.clone();
            Ok::<_, String>(summary)
        }
        .await;
        match &result {
            Ok(summary) => {
                sup.metrics.reloaded(ReloadResult::Ok);
                tracing::info!(?summary, "configuration reloaded");
            }
            Err(problems) => {
                sup.metrics.reloaded(ReloadResult::Error);
                tracing::error!("reload refused, the running configuration stays:\n{problems}");
            }
        }
        result
    }
}

#[async_trait::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<ReloadSummary, String> {
        Reloader::reload(self).await
    }
}

/// Serves the API on a unix socket too, mode 0660, replacing a stale socket file.
fn serve_unix(
    path: &Path,
    app: axum::Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "server.unix_socket {} exists and is not a socket; remove it or choose another path",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on server.unix_socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %path.display(), "listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    }))
}

/// SIGTERM and SIGINT, listened to from the moment this is created (a signal that arrives
/// before the first `recv` is not lost).
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trace_file` is where the daemon records its tasks, and `trace_file_max_size` where
    /// the file is rotated to `FILE.1`.
    #[test]
    fn trace_file_records_tasks_and_rotates_at_trace_file_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let text = format!(
            "[server]\ntrace_file = {:?}\ntrace_file_max_size = \"1KiB\"\n\n[pools.coder]\nimage = \"i\"\n",
            path.display().to_string()
        );
        let config = Config::parse(&text, "pools.toml").unwrap();
        let none = Config::parse("[pools.coder]\nimage = \"i\"\n", "pools.toml").unwrap();
        assert!(trace_recorder(&none.server).unwrap().is_none());
        let recorder = trace_recorder(&config.server).unwrap().unwrap();
        let now = tokio::time::Instant::now();
        for i in 0..30 {
            recorder.record("coder", now, Duration::from_millis(800 + i));
        }
        drop(recorder);
        let rotated = dir.path().join("trace.jsonl.1");
        let lines = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        for _ in 0..200 {
            if lines(&path) + lines(&rotated) == 30 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(lines(&path) + lines(&rotated), 30);
        // 30 lines of about 50 bytes: past 1KiB once, so rotated, and neither file above it.
        for p in [&path, &rotated] {
            let size = std::fs::metadata(p).unwrap().len();
            assert!(size > 0 && size <= 1024, "{}: {size} bytes", p.display());
        }
    }

    /// A soft limit on open files below the hard one is raised to it; one at the hard limit,
    /// or unlimited, is left alone. (Pure: lowering the test process's own limit would starve
    /// the tests running beside it.)
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::Rlimit;
        let limit = |current, maximum| Rlimit { current, maximum };
        assert_eq!(
            raised_limit(limit(Some(1024), Some(524_288))),
            Some(limit(Some(524_288), Some(524_288)))
        );
        assert_eq!(
            raised_limit(limit(Some(1024), None)),
            Some(limit(None, None))
        );
        assert_eq!(raised_limit(limit(Some(4096), Some(4096))), None);
        assert_eq!(raised_limit(limit(None, None)), None);
    }
}
