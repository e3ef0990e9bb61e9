//! The container engine, behind a small trait.
//!
//! Everything above this module speaks in terms of [`ContainerSpec`] and [`Runtime`], so the
//! pool logic can be driven by the in-memory `fake` engine (test builds only) under paused tokio time, while
//! [`docker`] (the only module that knows bollard) is exercised by the integration tests.

pub mod bounded;
pub mod docker;
pub mod engine;
#[cfg(test)]
pub mod fake;
pub mod oom;

pub use oom::oom_kills;

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

/// Label every warmpool container and network carries; start-up hygiene lists by it.
pub const LABEL_MANAGED: &str = "warmpool.managed";
pub const LABEL_POOL: &str = "warmpool.pool";
pub const LABEL_DAEMON: &str = "warmpool.daemon";
pub const LABEL_SPEC: &str = "warmpool.spec";
pub const LABEL_SESSION: &str = "warmpool.session";
/// Which warmpool installation owns the container, so several daemons can share an engine
/// (tests, benchmarks, staging next to production) without removing each other's.
pub const LABEL_INSTANCE: &str = "warmpool.instance";

/// Errors from the engine, classified by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine did not answer (socket gone, daemon down): pools wait and retry.
    #[error("container engine unreachable: {0}")]
    Unreachable(String),
    /// The thing named does not exist (container removed under us, missing image or path).
    #[error("not found: {0}")]
    NotFound(String),
    /// The engine refused the request; retrying the same request will not help. The text is
    /// the engine's own words, then what to do about it.
    #[error("container engine refused: {0}")]
    Refused(String),
    /// The request clashes with the engine's current state (a name in use, a removal in
    /// progress): the same request later, or under another name, can succeed.
    #[error("container engine conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// Whether the same request can never succeed until the config or the engine changes
    /// (an option the engine does not take, a runtime it lacks): a pool that gets this from
    /// a container start should report it once and stop retrying, not retry for ever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RuntimeError::Refused(_))
    }

    /// A refusal's two parts: the engine's own words, and what to do about it (the text
    /// after [`WHAT_TO_DO`], or [`FIX_AND_RELOAD`] when the refusal does not say). `None`
    /// for an error that is not permanent ([`RuntimeError::is_permanent`]).
    pub fn refusal(&self) -> Option<(String, String)> {
        let RuntimeError::Refused(text) = self else {
            return None;
        };
        Some(match text.split_once(WHAT_TO_DO) {
            Some((words, what)) => (words.to_string(), what.to_string()),
            None => (text.clone(), FIX_AND_RELOAD.to_string()),
        })
    }
}

/// What separates the engine's words from the fix in a [`RuntimeError::Refused`] text.
pub const WHAT_TO_DO: &str = "; what to do: ";

/// The fix of a refusal whose text names no better one.
pub const FIX_AND_RELOAD: &str =
    "fix the pool's configuration (docs/configuration.md) or the engine, then reload";

/// Everything the engine needs to create one pool container. Hashing it (see
/// [`ContainerSpec::hash`]) tells a reload or a restarted daemon whether an existing container
/// still matches its pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    pub image: String,
    /// Entrypoint argv (the shim, or a keep-alive loop for `docker-exec` pools).
    pub entrypoint: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: i64,
    pub user: String,
    pub read_only_rootfs: bool,
    /// Mount point to tmpfs options.
    pub tmpfs: BTreeMap<String, String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub runtime: Option<String>,
    /// Engine network mode: `none` or a network name.
    pub network: String,
    /// `host:container:ro` bind mounts (the shim binary).
    pub binds: Vec<String>,
    pub workdir: String,
    /// Keep stdin open so the daemon can attach to the shim, and re-attach after a restart.
    pub open_stdin: bool,
    /// The pool's `mounts` (binds, volumes, tmpfs), as the engine's Mounts.
    pub mounts: Vec<crate::config::Mount>,
    /// Persistent workspaces: the record root (`<workspace_root>/<instance>`) and where the
    /// workspaces live (see `crate::workspace`): with [`Home::HostDir`]
    /// every container gets a slot of its own under the root, bind-mounted at /workspace;
    /// with [`Home::Volume`] warm containers get nothing, and a session's
    /// container is created with its volume mounted.
    pub workspace: Option<WorkspaceSpec>,
}

/// Where a persistent pool's session workspaces live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// Host directories under the root, moved by rename into the slot (a bind mount) of the
    /// warm container a session claims: a local engine.
    HostDir,
    /// One engine named volume per session ([`crate::workspace::volume_name`]), mounted at
    /// [`crate::config::WORKSPACE_PATH`] of a container created for the session (a cold
    /// start per resume): a remote engine.
    Volume {
        /// The daemon's instance, which names and labels the volumes.
        instance: String,
    },
}

/// A persistent pool's workspaces, as its container spec carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSpec {
    /// `<workspace_root>/<instance>` on the daemon's host: the workspaces' records (and,
    /// with [`Home::HostDir`], their files).
    pub root: String,
    pub home: Home,
}

impl ContainerSpec {
    /// A stable hash of everything that shapes the container except per-container labels,
    /// so two daemons (or a reload) agree on whether a container is still current.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut labels = self.labels.clone();
        labels.remove(LABEL_DAEMON);
        labels.remove(LABEL_SPEC);
        labels.remove(LABEL_SESSION);
        labels.remove(LABEL_INSTANCE);
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{}|{:?}|{}|{}",
            self.image,
            self.entrypoint,
            self.env,
            labels,
            self.memory_bytes,
            self.nano_cpus,
            self.pids_limit,
            self.user,
            self.read_only_rootfs,
            self.tmpfs,
            self.cap_drop,
            self.no_new_privileges,
            self.runtime,
            self.network,
            self.binds,
            self.workdir,
            self.open_stdin,
        );
        // Appended only when set, so pools without mounts keep the hash they had before.
        let text = if self.mounts.is_empty() {
            text
        } else {
            format!("{text}|{:?}", self.mounts)
        };
        let text = match &self.workspace {
            None => text,
            Some(ws) if ws.home == Home::HostDir => {
                format!("{text}|workspace:{}", ws.root)
            }
            Some(ws) => format!("{text}|workspace-volume:{}", ws.root),
        };
        let digest = Sha256::digest(text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether each container of this spec gets a workspace slot (a host directory at
    /// /workspace): persistent workspaces with a local engine.
    pub fn has_slot(&self) -> bool {
        self.workspace
            .as_ref()
            .is_some_and(|w| w.home == Home::HostDir)
    }
}

/// What [`Runtime::inspect_process`] tells of a container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inspected {
    pub labels: BTreeMap<String, String>,
    /// The host pid of its main process (`State.Pid`); `None` when it does not run or the
    /// engine does not say (0).
    pub pid: Option<u32>,
}

/// An engine named volume warmpool made (labelled `warmpool.managed=true`).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSummary {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Resource limits changed on a running container (the engine's live update): what a
/// session asked for. `None` leaves that limit as it is.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Limits {
    /// Bytes of memory, swap included.
    pub memory_bytes: Option<u64>,
    /// Billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Processes.
    pub pids_limit: Option<i64>,
}

impl Limits {
    /// No limit is asked for.
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.nano_cpus.is_none() && self.pids_limit.is_none()
    }
}

/// A container as the engine lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Engine state: created, running, exited, dead, ...
    pub state: String,
    /// When the engine created it (Unix seconds), if it says: a restarted daemon ages an
    /// adopted container from here, not from the adoption.
    pub created: Option<i64>,
}

/// The container's stdio after attach: bytes the container wrote to stdout, and its stdin.
/// What it writes to stderr is logged by the runtime (it is the shim's own diagnostics).
pub struct Attached {
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
}

/// One `docker exec` request (the `docker-exec` way of running a task).
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub with_stdin: bool,
}

/// One chunk of an exec's output.
#[derive(Debug, Clone)]
pub enum ExecChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A started exec: its id (to poll for completion) and its streams.
pub struct ExecStarted {
    pub exec_id: String,
    pub output: BoxStream<'static, Result<ExecChunk, RuntimeError>>,
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
}

/// The operations warmpool needs from a container engine, and nothing more.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Cheap liveness probe of the engine itself.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Creates the bridge network unless it exists. `icc = false` keeps the pool's own
    /// containers from reaching each other as well as other pools.
    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError>;
    async fn network_exists(&self, name: &str) -> Result<bool, RuntimeError>;
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError>;
    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Attach to stdin/stdout; done before `start` so nothing the entrypoint writes is lost.
    async fn attach(&self, id: &str) -> Result<Attached, RuntimeError>;
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Renames a container; a session's claim renames its warm container so the session id
    /// survives a daemon restart (the engine cannot relabel a running container).
    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError>;
    /// Changes the limits of a running container in place (no restart, no new container).
    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError>;
    /// Force-removes; a container that is already gone is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container (any state) carrying `warmpool.managed=true`.
    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Whether the container's main process runs (engine view, not a health probe).
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError>;
    /// The container's state as the engine inspects it (`created`, `running`, `exited`,
    /// `removing`, `dead`, ...), or `None` when inspect does not find it. A listing can
    /// still show a container whose removal the engine has finished ("Removal In
    /// Progress" ghosts of a busy dockerd): what inspect finds is what exists.
    async fn inspect_state(&self, id: &str) -> Result<Option<String>, RuntimeError>;
    /// A container's labels and its main process's host pid, or `None` when inspect does
    /// not find it: one engine call, where a claim once listed every container.
    async fn inspect_process(&self, id: &str) -> Result<Option<Inspected>, RuntimeError> {
        Err(RuntimeError::Refused(format!(
            "this engine cannot inspect container {id}"
        )))
    }
    /// Whether this engine's containers are made in the daemon's own mount namespace (a
    /// local engine), so a mount the daemon makes under a container's `rslave` bind can
    /// reach it (`crate::workspace::slot_mount`). False unless the engine says so.
    fn shares_mounts(&self) -> bool {
        false
    }
    async fn exec_start(&self, id: &str, spec: &ExecSpec) -> Result<ExecStarted, RuntimeError>;
    /// `None` while the exec runs, its exit code once it ended.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError>;
    /// Waits for a started container's main process to end and returns its exit code.
    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        Err(RuntimeError::Refused(format!(
            "this engine cannot wait for container {id}"
        )))
    }
    /// Creates the named volume with these labels unless it exists; true when it was
    /// created now (it is empty).
    async fn ensure_volume(
        &self,
        name: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<bool, RuntimeError> {
        Err(RuntimeError::Refused(format!(
            "this engine has no named volumes (asked for {name})"
        )))
    }
    /// Removes the named volume; one that is already gone is not an error. The engine
    /// refuses one a container still mounts ([`RuntimeError::Conflict`]).
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Refused(format!(
            "this engine has no named volumes (asked to remove {name})"
        )))
    }
    /// Every volume carrying `warmpool.managed=true`.
    async fn list_volumes(&self) -> Result<Vec<VolumeSummary>, RuntimeError> {
        Ok(vec![])
    }
    /// Bytes of the engine's volumes by name, as its disk usage answer (`GET /system/df`)
    /// gives them: a volume whose size the engine does not know (a driver other than
    /// `local`) is missing. Costly on the engine (it walks every volume): asked per listing
    /// of workspaces and after each task of a session whose remote workspace is bounded.
    async fn volume_sizes(&self) -> Result<BTreeMap<String, u64>, RuntimeError> {
        Ok(BTreeMap::new())
    }
}
