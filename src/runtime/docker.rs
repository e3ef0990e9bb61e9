//! [`Runtime`] on the Docker Engine API through bollard. Nothing else in warmpool imports
//! bollard, so engine quirks stay here.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::{
    Attached, ContainerSpec, ContainerSummary, ExecChunk, ExecSpec, ExecStarted, Limits, Runtime,
    RuntimeError, LABEL_MANAGED,
};

/// The Docker engine. The client is made on first use, so a daemon started before the
/// engine (or its socket) exists waits for it instead of failing.
pub struct DockerRuntime {
    host: String,
    docker: parking_lot::RwLock<Option<Docker>>,
}

impl DockerRuntime {
    /// For `host` (`unix://...`, `tcp://...`), or `DOCKER_HOST`, or the local socket. It
    /// speaks API 1.41, that of Docker 20.10, which every later engine still serves.
    pub fn new(host: Option<&str>) -> Self {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        DockerRuntime {
            host,
            docker: parking_lot::RwLock::new(None),
        }
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
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        E::DockerResponseServerError {
            status_code,
            message,
        } if status_code < 500 => RuntimeError::Refused(message),
        E::DockerResponseServerError { message, .. } => RuntimeError::Other(message),
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

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.client()?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if self.network_exists(name).await? {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            )])),
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
        let host_config = HostConfig {
            memory: spec.memory_bytes.map(|m| m as i64),
            // Without a swap limit equal to memory, the container could swap past its limit.
            memory_swap: spec.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.nano_cpus,
            pids_limit: Some(spec.pids_limit),
            readonly_rootfs: Some(spec.read_only_rootfs),
            tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
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
        self.client()?
            .update_container(id, body)
            .await
            .map_err(map_err)
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.client()?.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_err(e) {
                RuntimeError::NotFound(_) => Ok(()),
                // "removal already in progress": someone else is doing our job.
                RuntimeError::Refused(m) if m.contains("in progress") => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let list = self
            .client()?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(managed_filter()),
                ..Default::default()
            }))
            .await
            .map_err(map_err)?;
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
            })
            .collect())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        let info = self
            .client()?
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(map_err)?;
        Ok(info.state.and_then(|s| s.running).unwrap_or(false))
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
        match started {
            StartExecResults::Attached { output, input } => {
                let output = output
                    .filter_map(|item| async move {
                        match item {
                            Ok(LogOutput::StdOut { message })
                            | Ok(LogOutput::Console { message }) => {
                                Some(Ok(ExecChunk::Stdout(message)))
                            }
                            Ok(LogOutput::StdErr { message }) => {
                                Some(Ok(ExecChunk::Stderr(message)))
                            }
                            Ok(LogOutput::StdIn { .. }) => None,
                            Err(e) => Some(Err(map_err(e))),
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
            Ok(info.exit_code)
        }
    }
}
