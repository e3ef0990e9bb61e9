//! Shared harness of the engine tests: a real `warmpool serve` process on a free loopback
//! port with its own `WARMPOOL_INSTANCE` (so its containers are told apart on the engine),
//! plus `docker` CLI helpers to assert on real container state.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const IMAGE: &str = "warmpool/agent:latest";

/// Builds the demo image once per test binary (it is a no-op when present).
pub fn ensure_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let status = Command::new(format!("{root}/scripts/build-demo-image.sh"))
            .status()
            .expect("run scripts/build-demo-image.sh");
        assert!(status.success(), "building the demo image failed");
    });
}

/// Runs the docker CLI and returns its stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`docker`], but returns `None` instead of panicking.
pub fn docker_try(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the engine under test is Podman (scripts/test-podman.sh runs the suite there, with
/// `DOCKER_HOST` on its socket for the daemon and this CLI alike): a few assertions read
/// inspect output that Podman words differently.
pub fn engine_is_podman() -> bool {
    static IS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IS.get_or_init(|| {
        docker_try(&["version", "--format", "{{json .Server.Components}}"])
            .is_some_and(|v| v.contains("Podman"))
    })
}

/// An image name as `docker inspect` reports it (`Config.Image`), in the form the tests
/// configure: Podman qualifies short names (`localhost/...`, `docker.io/...`).
pub fn image_name(reported: &str) -> String {
    if engine_is_podman() {
        for prefix in ["localhost/", "docker.io/library/", "docker.io/"] {
            if let Some(rest) = reported.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }
    reported.to_string()
}

/// `docker inspect` of one container, as JSON.
pub fn inspect(id: &str) -> Value {
    let text = docker(&["inspect", id]);
    let v: Value = serde_json::from_str(&text).expect("inspect json");
    v[0].clone()
}

/// Ids of the containers (any state) labelled with this instance, optionally one pool's.
pub fn containers(instance: &str, pool: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "ps".to_string(),
        "-a".into(),
        "-q".into(),
        "--no-trunc".into(),
        "--filter".into(),
        format!("label=warmpool.instance={instance}"),
    ];
    if let Some(p) = pool {
        args.push("--filter".into());
        args.push(format!("label=warmpool.pool={p}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args).lines().map(str::to_string).collect()
}

/// Networks labelled with this instance.
pub fn networks(instance: &str) -> Vec<String> {
    let filter = format!("label=warmpool.instance={instance}");
    docker(&["network", "ls", "-q", "--filter", &filter])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon. Dropping it kills the process and removes its containers, so a failed
/// test leaves nothing behind for the next one.
pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    pub instance: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    client: warmpool::client::Client,
}

impl Daemon {
    /// Starts a daemon on `config` (a pools.toml without `[server] listen`, which is
    /// added) and waits until `/healthz` answers.
    pub async fn start(config: &str) -> Daemon {
        Daemon::start_with(config, &[]).await
    }

    pub async fn start_with(config: &str, env: &[(&str, &str)]) -> Daemon {
        ensure_image();
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = format!("t{:08x}", rand_u32());
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // A short grace unless the test sets one, so that the orderly stop of `Drop` does not
        // wait long for a task the test left running.
        let mut server = format!("[server]\nlisten = \"{addr}\"");
        if !config.contains("shutdown_grace") {
            server += "\nshutdown_grace = \"1s\"";
        }
        let config = if config.contains("[server]") {
            config.replacen("[server]", &server, 1)
        } else {
            format!("{server}\n\n{config}")
        };
        let config_path = dir.path().join("pools.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("daemon.log");
        let mut d = Daemon {
            child: None,
            addr: format!("http://{addr}"),
            instance,
            config_path,
            log_path,
            client: warmpool::client::Client::new(&format!("http://{addr}"), None),
            dir,
        };
        d.spawn(env);
        d.wait_healthy().await;
        d
    }

    /// Starts the process again on the same config and instance (after a stop or kill).
    pub async fn restart(&mut self) {
        self.spawn(&[]);
        self.wait_healthy().await;
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmpool"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("WARMPOOL_INSTANCE", &self.instance)
            .env("RUST_LOG", "warmpool=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn warmpool serve"));
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.get("/healthz").await {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy in 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` says every pool is at `min`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// GET, returning status and body parsed as JSON (or a JSON string of the raw text).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        deadline(format!("GET {path}"), async {
            let resp = self.client.request("GET", path, None).await?;
            let status = resp.status;
            let bytes = resp.bytes().await?;
            Ok((status, as_json(&bytes)))
        })
        .await
    }

    /// Raw text of a GET (e.g. /metrics).
    pub async fn get_text(&self, path: &str) -> String {
        deadline(format!("GET {path}"), async {
            let resp = self.client.request("GET", path, None).await.unwrap();
            String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned()
        })
        .await
    }

    /// POST of a raw body.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let (status, _, bytes) = self.request("POST", path, Some(body)).await;
        (status, as_json(&bytes))
    }

    /// One request with a raw body: status, response headers and raw body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, hyper::HeaderMap, Vec<u8>) {
        send(&self.client, method, path, body).await
    }

    /// Runs a task on `pool`; returns the status and JSON answer.
    pub async fn task(&self, pool: &str, body: Value) -> (u16, Value) {
        self.post_raw(
            &format!("/v1/pools/{pool}/tasks"),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(60))
            .expect("daemon did not stop in 60 s")
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit (`None`: it did not).
    fn stop_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the daemon leaves its containers behind.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // An orderly stop first: after a kill -9, containers still being created appear on the
        // shared engine after the sweep below and stay there.
        if self.child.is_some() {
            let _ = self.stop_within(Duration::from_secs(30));
        }
        self.kill9();
        for id in containers(&self.instance, None) {
            let _ = docker_try(&["rm", "-f", &id]);
        }
        for id in networks(&self.instance) {
            let _ = docker_try(&["network", "rm", &id]);
        }
    }
}

/// How long any one request of a test may take, its answer read in full: a lost task or a
/// hung daemon fails the test with the request named instead of hanging the run. No test
/// task runs longer than a few seconds; the slowest answer (a cold start on a loaded
/// 2-core machine) is well under this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `fut` for at most [`REQUEST_DEADLINE`], or panics naming `what`.
pub async fn deadline<T>(
    what: impl std::fmt::Display,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => {
            panic!("{what}: no answer within {REQUEST_DEADLINE:?} (a lost task or a hung daemon)")
        }
    }
}

/// A body parsed as JSON, or a JSON string of the raw text when it is not JSON.
pub fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// One request through `client` (e.g. one with a token, or one moved into a spawned task):
/// status, response headers and raw body.
pub async fn send(
    client: &warmpool::client::Client,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    deadline(format!("{method} {path}"), async {
        let resp = client.request(method, path, body).await.unwrap();
        let status = resp.status;
        let headers = resp.headers.clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    })
    .await
}

/// A request with an optional JSON body through `client`: status and JSON answer.
pub async fn call(
    client: &warmpool::client::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, bytes) = send(
        client,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await;
    (status, as_json(&bytes))
}

/// Runs a task on `pool` through `client`; returns the status and JSON answer.
pub async fn run_task(client: &warmpool::client::Client, pool: &str, body: Value) -> (u16, Value) {
    call(
        client,
        "POST",
        &format!("/v1/pools/{pool}/tasks"),
        Some(body),
    )
    .await
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}
