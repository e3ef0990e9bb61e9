//! [`Runtime`] on the Docker Engine API through bollard. Nothing else in warmpool imports
//! bollard, so engine quirks stay here.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::engine::{classify, Engine, PodmanHost, ACCEPT_UNENFORCED_LIMITS_ENV};
use super::{
    Attached, ContainerSpec, ContainerSummary, ExecChunk, ExecSpec, ExecStarted, Inspected, Limits,
    Runtime, RuntimeError, VolumeSummary, LABEL_MANAGED,
};

/// The Docker engine. The client is made on first use, so a daemon started before the
/// engine (or its socket) exists waits for it instead of failing.
pub struct DockerRuntime {
    host: String,
    docker: parking_lot::RwLock<Option<Docker>>,
    /// Which engine answers (Docker or Podman), asked once it first answers.
    engine: tokio::sync::OnceCell<Engine>,
}

/// Labels and pid out of a container's inspect answer (`Config.Labels`, `State.Pid`).
fn inspected_from_json(info: &serde_json::Value) -> Inspected {
    let labels = info["Config"]["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let pid = info["State"]["Pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    Inspected { labels, pid }
}

impl DockerRuntime {
    /// The containers labelled managed by warmpool, through bollard's typed listing.
    async fn list_managed_typed(&self) -> Result<Vec<ContainerSummary>, ListError> {
        let list = self
            .client()
            .map_err(ListError::Engine)?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(managed_filter()),
                ..Default::default()
            }))
            .await
            .map_err(|e| match e {
                bollard::errors::Error::JsonDataError { message, .. }
                    if message.contains("unknown variant") =>
                {
                    ListError::UnreadableState(message)
                }
                e => ListError::Engine(map_err(e)),
            })?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: c
                    .state
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                created: c.created,
            })
            .collect())
    }

    /// For `host` (`unix://...`, `tcp://...`), or `DOCKER_HOST`, or the local socket. It
    /// speaks API 1.41, that of Docker 20.10, which every later engine still serves.
    pub fn new(host: Option<&str>) -> Self {
        let host = crate::config::engine_address(host);
        DockerRuntime {
            host,
            docker: parking_lot::RwLock::new(None),
            engine: tokio::sync::OnceCell::new(),
        }
    }

    /// The engine behind the socket, from its version answer (and `/info` for rootless),
    /// asked once. Logged, since every difference handled here depends on it.
    pub async fn engine(&self) -> Result<Engine, RuntimeError> {
        self.engine
            .get_or_try_init(|| async {
                let docker = self.client()?;
                let version = docker.version().await.map_err(map_err)?;
                let components: Vec<String> = version
                    .components
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone())
                    .collect();
                // Only for `SecurityOptions`; an answer bollard cannot read is not rootless.
                let security = match docker.info().await {
                    Ok(info) => info.security_options.unwrap_or_default(),
                    Err(e) => {
                        tracing::debug!(error = %e, "engine info unreadable");
                        vec![]
                    }
                };
                let mut engine = Engine::detect(
                    version.platform.as_ref().map(|p| p.name.as_str()),
                    &components,
                    version.version.as_deref(),
                    &security,
                );
                if engine.is_podman() {
                    match self.get_json("/v4.0.0/libpod/info").await {
                        Ok(info) => {
                            engine = engine.with_podman_host(PodmanHost::from_libpod_info(&info))
                        }
                        Err(e) => tracing::warn!(error = %e, "Podman's /libpod/info unreadable"),
                    }
                }
                tracing::info!(
                    engine = %engine.describe(),
                    cgroups = engine.cgroup_version.as_deref().unwrap_or("-"),
                    host = %self.host,
                    "container engine"
                );
                Ok(engine)
            })
            .await
            .cloned()
    }

    /// One GET outside the Docker API that bollard speaks (Podman's `/libpod/...`), as JSON.
    async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        use http_body_util::BodyExt;
        use hyper_util::rt::TokioIo;
        async fn send<S>(io: S, path: &str) -> Result<Vec<u8>, String>
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header("host", "warmpool")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(body.to_vec())
        }
        let host = self.host.as_str();
        let request = async {
            if let Some(path_) = host.strip_prefix("unix://") {
                let io = tokio::net::UnixStream::connect(path_)
                    .await
                    .map_err(|e| e.to_string())?;
                send(io, path).await
            } else {
                let addr = host
                    .trim_start_matches("tcp://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                let io = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())?;
                send(io, path).await
            }
        };
        let body = tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), request)
            .await
            .map_err(|_| "request timed out".to_string())??;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    fn client(&self) -> Result<Docker, RuntimeError> {
        if let Some(d) = self.docker.read().as_ref() {
            return Ok(d.clone());
        }
        let host = self.host.as_str();
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, &BASELINE_API)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, &BASELINE_API)
        } else {
            Docker::connect_with_host(host)
        }
        .map_err(map_err)?;
        *self.docker.write() = Some(docker.clone());
        Ok(docker)
    }
}

/// The API version of Docker 20.10, which every later engine still serves.
const BASELINE_API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Per request; attached streams, once upgraded, are not bound by it.
const REQUEST_TIMEOUT_SECS: u64 = 120;

fn map_err(e: bollard::errors::Error) -> RuntimeError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => classify(status_code, message),
        E::IOError { err } => RuntimeError::Unreachable(err.to_string()),
        E::RequestTimeoutError => RuntimeError::Unreachable("request timed out".into()),
        E::SocketNotFoundError(p) => RuntimeError::Unreachable(format!("no socket at {p}")),
        other => {
            let text = other.to_string();
            // hyper's connection errors carry no type we can match without depending on it.
            if text.contains("connect") || text.contains("hyper") {
                RuntimeError::Unreachable(text)
            } else {
                RuntimeError::Other(text)
            }
        }
    }
}

/// Containers from the engine's `/containers/json` read as plain JSON (an array of Docker's
/// container summaries), taking any `State` string as it is.
///
/// Errors: the body is not an array of objects with an `Id`.
fn summaries_from_json(v: &serde_json::Value) -> Result<Vec<ContainerSummary>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("not a JSON array: {v:.200}"))?;
    list.iter()
        .map(|c| {
            let id = c["Id"]
                .as_str()
                .ok_or_else(|| format!("a container without an Id: {c:.200}"))?;
            Ok(ContainerSummary {
                id: id.to_string(),
                name: c["Names"][0]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                labels: c["Labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                state: c["State"].as_str().unwrap_or("unknown").to_string(),
                created: c["Created"].as_i64(),
            })
        })
        .collect()
}

/// Why a container listing failed.
enum ListError {
    /// A container's state is one bollard cannot read (Podman's `stopped`): bollard's words.
    UnreadableState(String),
    Engine(RuntimeError),
}

/// Podman's report of an exec it could not start, in Docker's words.
///
/// Docker writes `OCI runtime exec failed: ...` on the exec's stdout and exits 126/127, which
/// the exec layer recognises as "the command could not start". Podman writes
/// `Error: runc: exec failed: ...: OCI runtime attempted to invoke a command that was not
/// found` (or `... OCI permission denied`) on its stderr, followed by a line about its own
/// attach socket: that first line becomes Docker's stdout report, the rest is dropped.
fn podman_exec_failure(stderr: &[u8]) -> Option<bytes::Bytes> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().next()?;
    let rest = line.strip_prefix("Error: ")?;
    let oci = rest.contains("OCI runtime attempted to invoke a command that was not found")
        || rest.contains("OCI permission denied")
        || rest.contains("OCI runtime error");
    oci.then(|| bytes::Bytes::from(format!("OCI runtime exec failed: {rest}\n")))
}

/// A pool's mount as the engine takes it. A tmpfs is world-writable with the sticky bit,
/// as /tmp is, so the task user can write to it.
fn engine_mount(m: &crate::config::Mount) -> bollard::models::Mount {
    use crate::config::MountKind;
    use bollard::models::{MountTmpfsOptions, MountType};
    let typ = match m.kind {
        MountKind::Bind => MountType::BIND,
        MountKind::Volume => MountType::VOLUME,
        MountKind::Tmpfs => MountType::TMPFS,
    };
    bollard::models::Mount {
        target: Some(m.target.clone()),
        source: m.source.clone(),
        typ: Some(typ),
        read_only: Some(m.read_only),
        tmpfs_options: (m.kind == MountKind::Tmpfs).then(|| MountTmpfsOptions {
            size_bytes: m.size.map(|b| b as i64),
            mode: Some(0o1777),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])])
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.client()?.ping().await.map(|_| ()).map_err(map_err)
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if self.network_exists(name).await? {
            return Ok(());
        }
        let engine = self.engine().await?;
        if engine.is_podman() {
            tracing::warn!(
                network = name,
                "Podman's bridges cannot keep one pool's containers from reaching each other \
                 (no enable_icc); pools stay apart from each other"
            );
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            options: Some(engine.network_options().into_iter().collect()),
            ..Default::default()
        };
        match self.client()?.create_network(request).await {
            Ok(_) => Ok(()),
            // Another pool start raced us to it: that is the network we wanted.
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn network_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        match self
            .client()?
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.client()?.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let engine = self.engine().await?;
        if let Some(refusal) = engine.runtime_refusal(spec) {
            return Err(refusal);
        }
        let unenforced = engine.unenforced_limits(spec);
        if !unenforced.is_empty() {
            let refusal = engine.limits_refusal(&unenforced);
            if std::env::var(ACCEPT_UNENFORCED_LIMITS_ENV).as_deref() != Ok("accept") {
                return Err(refusal);
            }
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "{ACCEPT_UNENFORCED_LIMITS_ENV}=accept: containers run without these \
                     limits: {refusal}"
                )
            });
        }
        let mut tmpfs: HashMap<String, String> = spec
            .tmpfs
            .iter()
            .map(|(path, options)| (path.clone(), engine.tmpfs_options(options)))
            .collect();
        let taken: Vec<&str> = spec.tmpfs.keys().map(String::as_str).collect();
        tmpfs.extend(engine.read_only_masks(spec.read_only_rootfs, &taken));
        let host_config = HostConfig {
            memory: spec.memory_bytes.map(|m| m as i64),
            // Without a swap limit equal to memory, the container could swap past its limit.
            memory_swap: spec.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.nano_cpus,
            pids_limit: Some(spec.pids_limit),
            readonly_rootfs: Some(spec.read_only_rootfs),
            tmpfs: Some(tmpfs),
            cap_drop: Some(spec.cap_drop.clone()),
            security_opt: spec
                .no_new_privileges
                .then(|| vec!["no-new-privileges".to_string()]),
            runtime: spec.runtime.clone(),
            network_mode: Some(spec.network.clone()),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            mounts: (!spec.mounts.is_empty())
                .then(|| spec.mounts.iter().map(engine_mount).collect()),
            // Task output must not pile up in the engine's log files.
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            init: Some(false),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(vec![]),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some(spec.user.clone()),
            working_dir: Some(spec.workdir.clone()),
            open_stdin: Some(spec.open_stdin),
            stdin_once: Some(false),
            attach_stdin: Some(spec.open_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            network_disabled: Some(spec.network == "none"),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let created = self
            .client()?
            .create_container(Some(options), body)
            .await
            .map_err(map_err)?;
        Ok(created.id)
    }

    async fn attach(&self, id: &str) -> Result<Attached, RuntimeError> {
        let options = AttachContainerOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            detach_keys: None,
        };
        let attached = self
            .client()?
            .attach_container(id, Some(options))
            .await
            .map_err(map_err)?;
        let short = id.chars().take(12).collect::<String>();
        // Demultiplex: stdout carries the shim's frames; stderr is its own diagnostics.
        let stdout = attached.output.filter_map(move |item| {
            let short = short.clone();
            async move {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(message))
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        // Debug-quoted: a task can write here too (it runs as the shim's user),
                        // and must not be able to forge log lines.
                        let text = String::from_utf8_lossy(&message);
                        tracing::warn!(container = %short, "shim: {:?}", text.trim_end());
                        None
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                }
            }
        });
        Ok(Attached {
            stdout: Box::pin(tokio_util::io::StreamReader::new(Box::pin(stdout))),
            stdin: attached.input,
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.client()?
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(map_err)
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        self.client()?
            .rename_container(
                id,
                bollard::query_parameters::RenameContainerOptions {
                    name: name.to_string(),
                },
            )
            .await
            .map_err(map_err)
    }

    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let memory = limits.memory_bytes.map(|m| m as i64);
        let body = bollard::models::ContainerUpdateBody {
            memory,
            // Swap equal to memory, as at create: the container cannot swap past its limit.
            memory_swap: memory,
            nano_cpus: limits.nano_cpus,
            pids_limit: limits.pids_limit,
            ..Default::default()
        };
        let answer = self.client()?.update_container(id, body).await;
        match answer {
            Ok(()) => Ok(()),
            // Podman 4's Docker API has no update endpoint: a bare 404 "Not Found", where a
            // missing container is a JSON "no such container".
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) if !message.contains("no such container") && self.engine().await?.is_podman() => {
                Err(RuntimeError::Refused(format!(
                    "{} cannot change a running container's limits: its Docker-compatible API \
                     has no container update (404 {message:?}), so a session's memory, cpus and \
                     pids_limit cannot be applied to a warm container{}leave memory, cpus and \
                     pids_limit out of the session on this engine, or size the pool itself \
                     (memory, cpus, pids_limit in pools.toml)",
                    self.engine().await?.describe(),
                    super::WHAT_TO_DO,
                )))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        super::oom::forget(id);
        // Docker's forced removal kills at once; Podman's stops first (SIGTERM, then its
        // 10 s stop timeout) and answers only then. A SIGKILL first makes both immediate;
        // a container that is not running or already gone is nobody's concern here.
        if self.engine().await?.is_podman() {
            let kill = bollard::query_parameters::KillContainerOptions {
                signal: "KILL".to_string(),
            };
            if let Err(e) = self.client()?.kill_container(id, Some(kill)).await {
                tracing::trace!(container = id, error = %e, "kill before removal");
            }
        }
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        let removed = match self.client()?.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(()),
                // "removal already in progress": someone else is doing our job.
                RuntimeError::Conflict(m) if m.contains("in progress") => Ok(()),
                other => Err(other),
            },
        };
        super::oom::forget(id);
        removed
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        match self.list_managed_typed().await {
            Ok(list) => Ok(list),
            Err(ListError::Engine(e)) => Err(e),
            // Podman before 5 lists a container whose process has ended but whose cleanup
            // has not run yet as `stopped`, a state Docker's API does not have, so bollard
            // cannot read the list at all (containers/podman#28359). A kill -9'd daemon's
            // attached containers all pass through it at once, when the next start lists
            // them to adopt or remove. The same listing, read as plain JSON, has them all.
            Err(ListError::UnreadableState(why)) => {
                tracing::debug!(error = %why, "the engine lists a container in a state the Docker API does not have; reading the list as plain JSON");
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("all", "true")
                    .append_pair(
                        "filters",
                        &serde_json::to_string(&managed_filter()).unwrap_or_default(),
                    )
                    .finish();
                self.get_json(&format!("/containers/json?{query}"))
                    .await
                    .and_then(|v| summaries_from_json(&v))
                    .map_err(|e| {
                        RuntimeError::Other(format!(
                            "the engine's container list names a state the Docker API does not have ({why}), and reading it as plain JSON failed too: {e}"
                        ))
                    })
            }
        }
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        let info = self
            .client()?
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        match info {
            Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
            // Podman has states Docker lacks (`stopped` between a kill and `exited`,
            // `stopping`, `configured`, `initialized`), which bollard's state enum cannot
            // read; none of them is running.
            Err(e) if e.to_string().contains("unknown variant") => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn inspect_process(&self, id: &str) -> Result<Option<Inspected>, RuntimeError> {
        // Plain JSON: Podman's states bollard cannot read do not matter here.
        let info = match self.get_json(&format!("/containers/{id}/json")).await {
            Err(e) if e.starts_with("404") => return Ok(None),
            other => other.map_err(|e| RuntimeError::Other(format!("inspect {id}: {e}")))?,
        };
        Ok(Some(inspected_from_json(&info)))
    }

    fn shares_mounts(&self) -> bool {
        crate::config::is_local_engine(&self.host)
    }

    async fn inspect_state(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        match self
            .client()?
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(info) => Ok(Some(
                info.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            )),
            // Podman's states Docker lacks (`stopped`, ...) are unreadable to bollard; the
            // same inspect read as plain JSON names them (containers/podman#28359).
            Err(bollard::errors::Error::JsonDataError { message, .. })
                if message.contains("unknown variant") =>
            {
                let info = match self.get_json(&format!("/containers/{id}/json")).await {
                    // Removed in between.
                    Err(e) if e.starts_with("404") => return Ok(None),
                    other => other,
                }
                .map_err(|e| {
                    RuntimeError::Other(format!(
                        "container {id}'s state is one the Docker API does not have \
                             ({message}), and reading it as plain JSON failed too: {e}"
                    ))
                })?;
                Ok(Some(
                    info["State"]["Status"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string(),
                ))
            }
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn exec_start(&self, id: &str, spec: &ExecSpec) -> Result<ExecStarted, RuntimeError> {
        let created = self
            .client()?
            .create_exec(
                id,
                CreateExecOptions {
                    attach_stdin: Some(spec.with_stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    env: Some(spec.env.clone()),
                    cmd: Some(spec.argv.clone()),
                    working_dir: spec.workdir.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(map_err)?;
        let started = self
            .client()?
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(map_err)?;
        let podman = self.engine().await?.is_podman();
        match started {
            StartExecResults::Attached { output, input } => {
                // Until the command has written anything, Podman's own report of a command
                // it could not start may come (on stderr).
                let mut first = true;
                let output = output
                    .filter_map(move |item| {
                        let was_first = std::mem::replace(&mut first, false);
                        async move {
                            match item {
                                Ok(LogOutput::StdOut { message })
                                | Ok(LogOutput::Console { message }) => {
                                    Some(Ok(ExecChunk::Stdout(message)))
                                }
                                Ok(LogOutput::StdErr { message }) if podman && was_first => {
                                    Some(Ok(podman_exec_failure(&message)
                                        .map(ExecChunk::Stdout)
                                        .unwrap_or(ExecChunk::Stderr(message))))
                                }
                                Ok(LogOutput::StdErr { message }) => {
                                    Some(Ok(ExecChunk::Stderr(message)))
                                }
                                Ok(LogOutput::StdIn { .. }) => None,
                                Err(e) => Some(Err(map_err(e))),
                            }
                        }
                    })
                    .boxed();
                Ok(ExecStarted {
                    exec_id: created.id,
                    output,
                    stdin: input,
                })
            }
            StartExecResults::Detached => Err(RuntimeError::Other(
                "engine started the exec detached".into(),
            )),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        let mut waits = self
            .client()?
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        match waits.next().await {
            Some(Ok(answer)) => Ok(answer.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(map_err(e)),
            None => Err(RuntimeError::Other(format!(
                "the engine ended the wait for container {id} without an exit code"
            ))),
        }
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, RuntimeError> {
        match self.client()?.inspect_volume(name).await {
            Ok(_) => return Ok(false),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.client()?
            .create_volume(request)
            .await
            .map(|_| true)
            .map_err(map_err)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .client()?
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeSummary>, RuntimeError> {
        let list = self
            .client()?
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                filters: Some(managed_filter()),
            }))
            .await
            .map_err(map_err)?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeSummary {
                name: v.name,
                labels: v.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn volume_sizes(&self) -> Result<BTreeMap<String, u64>, RuntimeError> {
        // Outside bollard's types, which read only the 1.52 answer: the engine's own API
        // version (unversioned path), so one that knows `type` walks only the volumes.
        let df = self
            .get_json("/system/df?type=volume")
            .await
            .map_err(RuntimeError::Other)?;
        Ok(super::engine::volume_sizes(&df))
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        let info = self
            .client()?
            .inspect_exec(exec_id)
            .await
            .map_err(map_err)?;
        if info.running.unwrap_or(false) {
            Ok(None)
        } else {
            // Not running and no exit code: not started yet. The attached start returns once
            // the stream is hijacked, which can be before the engine starts the process.
            if let (Some(code), Some(container)) = (info.exit_code, info.container_id.as_deref()) {
                if code > 128 && self.engine().await?.is_podman() {
                    self.settle_after_signal(container).await;
                }
            }
            Ok(info.exit_code)
        }
    }
}

impl DockerRuntime {
    /// An exec killed by a signal may have died with its container (`kill`, an OOM kill of
    /// the main process). Docker reports the container stopped at once; Podman only once its
    /// cleanup ran, some hundreds of milliseconds later, and the caller asks right after the
    /// exit code. So on Podman, wait (at most [`SIGNAL_SETTLE`]) for the container to be seen
    /// stopped before answering; a container that stays up costs that wait once.
    async fn settle_after_signal(&self, container: &str) {
        let deadline = tokio::time::Instant::now() + SIGNAL_SETTLE;
        while tokio::time::Instant::now() < deadline {
            match self.is_running(container).await {
                Ok(true) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                _ => return,
            }
        }
    }
}

/// How long an exec's death by signal waits for Podman to report its container's state.
const SIGNAL_SETTLE: std::time::Duration = std::time::Duration::from_millis(1000);

#[cfg(test)]
mod tests {
    use super::*;

    /// Podman 4.3's list of a container whose process just ended (state `stopped`, which
    /// bollard's typed listing rejects): read as plain JSON, it is there with its state.
    #[test]
    fn a_listing_with_podmans_stopped_state_is_read_as_plain_json() {
        let body = serde_json::json!([{
            "Id": "98bb0a82d853",
            "Names": ["/warmpool-ws-s-rv"],
            "Labels": {"warmpool.managed": "true", "warmpool.pool": "ws"},
            "State": "stopped",
            "Created": 1796006594,
            "Mounts": [{"Type": "volume", "Name": "warmpool-i-ws-rv"}]
        }]);
        let list = summaries_from_json(&body).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "98bb0a82d853");
        assert_eq!(list[0].name, "warmpool-ws-s-rv");
        assert_eq!(list[0].state, "stopped");
        assert_eq!(list[0].created, Some(1796006594));
        assert_eq!(list[0].labels["warmpool.pool"], "ws");
        let err = summaries_from_json(&serde_json::json!({"message": "no"})).unwrap_err();
        assert!(err.contains("not a JSON array"), "{err}");
        let err = summaries_from_json(&serde_json::json!([{"Names": []}])).unwrap_err();
        assert!(err.contains("without an Id"), "{err}");
    }

    #[test]
    fn podmans_exec_start_failure_reads_as_dockers() {
        let podman = b"Error: runc: exec failed: unable to start container process: exec: \
            \"/no/such/command\": stat /no/such/command: no such file or directory: OCI runtime \
            attempted to invoke a command that was not found\nError: read unixpacket \
            @->/proc/self/fd/16/attach: read: connection reset by peer\n";
        let out = podman_exec_failure(podman).expect("recognised");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("OCI runtime exec failed: runc: exec failed"),
            "{text}"
        );
        assert!(!text.contains("unixpacket"), "{text}");
        assert_eq!(podman_exec_failure(b"Error: my own message\n"), None);
        assert_eq!(podman_exec_failure(b"plain stderr"), None);
    }
}
