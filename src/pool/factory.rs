//! Where containers come from: the container spec a pool's config asks for, the networks of
//! `isolated` pools, create → connect (a socket directory or attach) → start → greeting, and
//! re-connecting to a container a previous run left (adoption).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{ExecMode, ExecTransport, NetworkMode, PoolConfig};
use crate::exec::direct::{self, SocketDir, LABEL_SOCKET, SOCKET_DIR_IN_CONTAINER, SOCKET_NAME};
use crate::exec::{Conn, DockerExecConn, ShimConn, ADOPT_PING_TIMEOUT, START_TIMEOUT};
use crate::metrics::{Metrics, RemoveReason};
use crate::runtime::{
    ContainerSpec, Runtime, RuntimeError, LABEL_DAEMON, LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL,
    LABEL_SPEC,
};
use crate::workspace::slot_mount;

/// Where the shim binary sits inside every shim container.
pub const SHIM_IN_CONTAINER: &str = "/.warmpool/shim";

/// Builds the specs and networks of one daemon's pools; remembers the networks it made so
/// shutdown removes them.
pub struct Factory {
    runtime: Arc<dyn Runtime>,
    daemon_id: String,
    instance: String,
    /// Host path of the shim binary, bind-mounted read-only into shim containers.
    shim_path: Option<PathBuf>,
    /// Networks this daemon created (or reused) for `isolated` pools; shutdown removes them.
    networks: Mutex<BTreeSet<String>>,
    /// Host directory of the direct transport's socket directories ([`direct::run_root`]).
    run_root: PathBuf,
    /// Whether `run_root` was set up (and swept of a previous run's leftovers): once.
    run_root_ready: Mutex<Option<Result<(), String>>>,
    /// Pools whose fallback to `attach` was logged, with why, so a reload does not repeat it.
    fallbacks_logged: Mutex<BTreeSet<(String, String)>>,
    /// The engine's address, which decides where persistent workspaces live
    /// ([`crate::workspace::home_for`]).
    engine_host: Mutex<String>,
}

impl Factory {
    /// `daemon_id` and `instance` label every container; `shim_path` is the host's shim
    /// binary (`None`: shim pools cannot start, docker-exec ones can).
    pub fn new(
        runtime: Arc<dyn Runtime>,
        daemon_id: String,
        instance: String,
        shim_path: Option<PathBuf>,
    ) -> Factory {
        Factory {
            runtime,
            daemon_id,
            run_root: direct::run_root(&instance),
            instance,
            shim_path,
            networks: Mutex::default(),
            run_root_ready: Mutex::default(),
            fallbacks_logged: Mutex::default(),
            engine_host: Mutex::new(direct::engine_host()),
        }
    }

    /// Overrides the engine address the workspaces' placement is decided by (the daemon's
    /// `[docker] host` otherwise); before the pools start. Tests use it to play a remote engine.
    pub fn set_engine_host(&self, host: &str) {
        *self.engine_host.lock() = host.to_string();
    }

    /// Whether a shim pool's containers get the direct transport; logs, once per pool and
    /// reason, why not when `direct` was asked for.
    fn direct_transport(&self, cfg: &PoolConfig) -> bool {
        let why = match direct::decide(
            cfg.exec_transport,
            &direct::engine_host(),
            direct::daemon_uid(),
            &cfg.security.user,
        ) {
            Ok(_) => match self.prepare_run_root() {
                Ok(()) => return true,
                Err(e) => e,
            },
            Err(why) => why,
        };
        if cfg.exec_transport == ExecTransport::Direct
            && self
                .fallbacks_logged
                .lock()
                .insert((cfg.name.clone(), why.clone()))
        {
            tracing::info!(pool = %cfg.name, reason = %why, "exec_transport: using attach (the engine's attached stream) instead of direct");
        }
        false
    }

    fn prepare_run_root(&self) -> Result<(), String> {
        self.run_root_ready
            .lock()
            .get_or_insert_with(|| {
                direct::prepare_root(&self.run_root).map_err(|e| {
                    format!(
                        "cannot set up the socket directory {}: {e} (set WARMPOOL_RUN_DIR)",
                        self.run_root.display()
                    )
                })
            })
            .clone()
    }

    /// The container spec a pool's config asks for; its hash (label `warmpool.spec`) is what
    /// tells a current container from one a reload made stale.
    pub fn container_spec(&self, cfg: &PoolConfig) -> ContainerSpec {
        let mut labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_POOL.to_string(), cfg.name.clone()),
            (LABEL_DAEMON.to_string(), self.daemon_id.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ]);
        let user_ids = cfg.security.user.split(':').collect::<Vec<_>>();
        let owner = match (user_ids.first(), user_ids.get(1)) {
            (Some(u), Some(g)) if u.parse::<u32>().is_ok() && g.parse::<u32>().is_ok() => {
                format!(",uid={u},gid={g}")
            }
            (Some(u), None) if u.parse::<u32>().is_ok() => format!(",uid={u},gid={u}"),
            _ => String::new(),
        };
        // The tmpfs belong to the task user, so a read-only root still leaves it room to work.
        let tmpfs = BTreeMap::from([
            (
                "/tmp".to_string(),
                format!("rw,exec,nosuid,size=256m,mode=1777{owner}"),
            ),
            (
                cfg.workdir.clone(),
                format!("rw,exec,nosuid,size=1g,mode=0755{owner}"),
            ),
        ]);
        let (entrypoint, binds) = match (cfg.exec, &self.shim_path) {
            // The run root stands for the container's own directory under it, which
            // `create_and_connect` makes once it knows the container's name.
            (ExecMode::Shim, Some(path)) if self.direct_transport(cfg) => (
                vec![
                    SHIM_IN_CONTAINER.to_string(),
                    "--listen".to_string(),
                    format!("{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}"),
                ],
                vec![
                    format!("{}:{}:ro", path.display(), SHIM_IN_CONTAINER),
                    format!("{}:{}", self.run_root.display(), SOCKET_DIR_IN_CONTAINER),
                ],
            ),
            (ExecMode::Shim, Some(path)) => (
                vec![SHIM_IN_CONTAINER.to_string()],
                vec![format!("{}:{}:ro", path.display(), SHIM_IN_CONTAINER)],
            ),
            // docker-exec pools only need a main process that stays up and ends on TERM.
            _ => (
                vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done".to_string(),
                ],
                vec![],
            ),
        };
        let network = match &cfg.network {
            NetworkMode::None => "none".to_string(),
            NetworkMode::Isolated => self.isolated_network(&cfg.name),
            NetworkMode::Named(n) => n.clone(),
        };
        let mut spec = ContainerSpec {
            image: cfg.image.clone(),
            entrypoint,
            env: cfg.env.clone(),
            labels: BTreeMap::new(),
            memory_bytes: cfg.memory,
            nano_cpus: cfg.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: cfg.pids_limit,
            user: cfg.security.user.clone(),
            read_only_rootfs: cfg.security.read_only_rootfs,
            tmpfs,
            cap_drop: cfg.security.cap_drop.clone(),
            no_new_privileges: cfg.security.no_new_privileges,
            runtime: cfg.security.runtime.clone(),
            network,
            binds,
            workdir: cfg.workdir.clone(),
            open_stdin: false,
            mounts: cfg.mounts.clone(),
            workspace: (cfg.session_workspace == crate::config::WorkspaceMode::Persistent).then(
                || crate::workspace::WorkspaceSpec {
                    root: format!(
                        "{}/{}",
                        cfg.workspace_root.trim_end_matches('/'),
                        self.instance
                    ),
                    home: crate::workspace::home_for(&self.engine_host.lock(), &self.instance),
                },
            ),
        };
        // The attach transport talks over the container's stdin.
        spec.open_stdin = cfg.exec == ExecMode::Shim && !is_direct(&spec);
        spec.labels = labels.clone();
        labels.insert(LABEL_SPEC.to_string(), spec.hash());
        spec.labels = labels;
        spec
    }

    /// `warmpool-<pool>`, or `warmpool-<instance>-<pool>` beside other installations: the
    /// bridge of an `isolated` pool.
    pub fn isolated_network(&self, pool: &str) -> String {
        if self.instance == "default" {
            format!("warmpool-{pool}")
        } else {
            format!("warmpool-{}-{pool}", self.instance)
        }
    }

    /// Creates (or reuses) the bridge of an `isolated` pool.
    ///
    /// Errors: the engine refused to create it; the message names the pool and network.
    pub async fn ensure_isolated_network(&self, pool: &str) -> anyhow::Result<()> {
        let labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_POOL.to_string(), pool.to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ]);
        let net = self.isolated_network(pool);
        // Recorded first: a start cut short right after the create still removes it.
        self.networks.lock().insert(net.clone());
        self.runtime
            .ensure_network(&net, &labels)
            .await
            .map_err(|e| {
                anyhow::anyhow!("pool {pool}: cannot create its isolated network {net}: {e}")
            })
    }

    /// What a pool needs before its first container: its network, when it has its own, or
    /// the named one it joins. A missing image is not checked here: the first create says
    /// so, and makes the pool failed ([`describe_start_error`]) until the image is there.
    ///
    /// Errors: the isolated network cannot be created, or the named one does not exist.
    pub async fn prepare(&self, cfg: &PoolConfig) -> anyhow::Result<()> {
        match &cfg.network {
            NetworkMode::Isolated => self.ensure_isolated_network(&cfg.name).await?,
            NetworkMode::Named(n) => {
                if !self.runtime.network_exists(n).await.unwrap_or(true) {
                    anyhow::bail!(
                        "pool {}: network {n:?} does not exist; create it (docker network create {n}) or use network = \"isolated\"",
                        cfg.name
                    );
                }
            }
            NetworkMode::None => {}
        }
        Ok(())
    }

    /// Removes the isolated network of a pool a reload removed.
    pub async fn remove_network_of(&self, pool: &str) {
        let net = self.isolated_network(pool);
        if let Err(e) = self.runtime.remove_network(&net).await {
            tracing::warn!(network = %net, error = %e, "could not remove the removed pool's network");
        }
        self.networks.lock().remove(&net);
    }

    /// Removes every network this daemon set up, including one of a pool whose setup a
    /// signal or an error cut short before the pool existed; and, the last thing of a
    /// shutdown, this instance's run root of socket directories if nothing is left in it.
    pub async fn remove_networks(&self) {
        if self.run_root_ready.lock().is_some() {
            // Only succeeds when empty: a directory still there is a container's still here.
            let _ = std::fs::remove_dir(&self.run_root);
        }
        let nets: Vec<String> = self.networks.lock().iter().cloned().collect();
        for net in nets {
            // The engine may still hold an endpoint of a container it no longer shows
            // ("has active endpoints" just after a burst of removals): asked again on a
            // back-off, for at most NETWORK_REMOVE_TIMEOUT.
            let deadline = tokio::time::Instant::now() + NETWORK_REMOVE_TIMEOUT;
            let mut pause = std::time::Duration::from_millis(100);
            loop {
                match self.runtime.remove_network(&net).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() + pause >= deadline => {
                        tracing::warn!(network = %net, error = %e, "could not remove network");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(network = %net, error = %e, "network removal refused; asking again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(2));
                    }
                }
            }
        }
    }
}

/// How long shutdown keeps asking the engine to remove a network it still finds in use.
const NETWORK_REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a container start failed: a message for the tasks that wait and, when the engine
/// refused the container for good ([`RuntimeError::is_permanent`]), the engine's words and
/// the fix, which make the pool failed rather than back off and retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StartError {
    /// The whole story, for logs and a task's `no_container` hint.
    pub(super) message: String,
    /// `(engine's words, what to do)` when retrying the same start cannot help.
    pub(super) refusal: Option<(String, String)>,
}

impl StartError {
    /// A start that no retry of the same request gets past: the engine's (or the daemon's)
    /// `words` and the `fix`, which make the pool failed.
    pub(super) fn refused(words: String, fix: String) -> Self {
        StartError {
            message: format!("{words}{}{fix}", crate::runtime::WHAT_TO_DO),
            refusal: Some((words, fix)),
        }
    }
}

impl From<String> for StartError {
    /// A failure the engine did not refuse (a socket directory, a shim that did not greet):
    /// the next start may succeed.
    fn from(message: String) -> Self {
        StartError {
            message,
            refusal: None,
        }
    }
}

impl From<RuntimeError> for StartError {
    fn from(e: RuntimeError) -> Self {
        StartError {
            refusal: e.refusal(),
            message: e.to_string(),
        }
    }
}

/// create → attach → start → greeting. Whatever fails, nothing is left behind; the error
/// says whether the engine refused the container for good.
pub(super) async fn create_and_connect(
    runtime: &Arc<dyn Runtime>,
    metrics: &Metrics,
    pool: &str,
    name: &str,
    spec: &ContainerSpec,
    exec: ExecMode,
) -> Result<(String, Conn), StartError> {
    // Persistent workspaces in host directories: a slot of its own, bind-mounted at
    // /workspace, its key labelled. (In engine volumes: nothing here; a session's container
    // gets its volume when made for it, `Pool::start_for_session`.)
    let with_slot;
    let spec = match spec.workspace.as_ref().filter(|_| spec.has_slot()) {
        Some(ws) => {
            let root = std::path::Path::new(&ws.root);
            let dir = crate::workspace::prepare_slot(root, name, &spec.user).map_err(|e| {
                format!(
                    "cannot create the workspace slot under {}: {e}; check workspace_root",
                    root.display()
                )
            })?;
            let mut s = spec.clone();
            // In mount mode (a shared root) the slot is an rslave bind, so a workspace bound
            // onto it later reaches the container (`workspace::slot_mount`).
            let propagation = if runtime.shares_mounts() && slot_mount::enable(root) {
                format!(":{}", slot_mount::SLOT_PROPAGATION)
            } else {
                String::new()
            };
            s.binds.push(format!(
                "{}:{}{propagation}",
                dir.display(),
                crate::workspace::WORKSPACE_PATH
            ));
            s.labels
                .insert(crate::workspace::LABEL_SLOT.to_string(), name.to_string());
            with_slot = s;
            &with_slot
        }
        None => spec,
    };
    // Direct: the container's own socket directory, made before the container so the engine
    // mounts it rather than creating it; removed again whatever fails below.
    let mut socket_dir = None;
    let direct_spec;
    let spec = match (exec, direct_root(spec)) {
        (ExecMode::Shim, Some(root)) => {
            let owner = direct::decide(
                ExecTransport::Direct,
                &direct::engine_host(),
                direct::daemon_uid(),
                &spec.user,
            )?;
            let dir = SocketDir::create(&root, name, owner).map_err(|e| {
                format!(
                    "cannot create the socket directory {}: {e}",
                    root.join(name).display()
                )
            })?;
            let mut s = spec.clone();
            for bind in &mut s.binds {
                if bind.ends_with(&format!(":{SOCKET_DIR_IN_CONTAINER}")) {
                    *bind = format!("{}:{SOCKET_DIR_IN_CONTAINER}", dir.dir.display());
                }
            }
            s.labels
                .insert(LABEL_SOCKET.to_string(), dir.socket().display().to_string());
            socket_dir = Some(dir);
            direct_spec = s;
            &direct_spec
        }
        _ => spec,
    };
    let id = runtime
        .create(name, spec)
        .await
        .map_err(|e| describe_start_error(&spec.image, e))?;
    // Counted as soon as it exists on the engine, so a failed start is created and removed
    // like any other container, and created - removed is what the engine holds.
    metrics.created(pool);
    let result: Result<Conn, StartError> = async {
        match exec {
            ExecMode::Shim if socket_dir.is_some() => {
                runtime.start(&id).await?;
                let dir = socket_dir.take();
                let socket = dir.as_ref().map(SocketDir::socket).unwrap_or_default();
                let conn = direct::connect(runtime, &id, &socket, dir, Some(START_TIMEOUT))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Shim(conn))
            }
            ExecMode::Shim => {
                let attached = runtime.attach(&id).await?;
                runtime.start(&id).await?;
                let conn = ShimConn::connect(attached, Some(START_TIMEOUT))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Shim(conn))
            }
            ExecMode::DockerExec => {
                runtime.start(&id).await?;
                Ok(Conn::DockerExec(DockerExecConn {
                    runtime: runtime.clone(),
                    container: id.clone(),
                }))
            }
        }
    }
    .await;
    match result {
        Ok(conn) => Ok((id, conn)),
        Err(mut e) => {
            // An engine that does not see the slot root as shared: its next container gets a
            // plain bind, so this refusal is not for good (the pool starts another, as after
            // any failed start).
            if slot_mount::is_propagation_refusal(&e.message) {
                if let Some(ws) = spec.workspace.as_ref() {
                    slot_mount::disable(std::path::Path::new(&ws.root), &e.message);
                    e.refusal = None;
                }
            }
            // It never served: it failed, as a container that fails its probe does.
            if runtime.remove(&id).await.is_ok() {
                metrics.removed(pool, RemoveReason::Unhealthy);
            }
            Err(e)
        }
    }
}

/// Docker's default capabilities but CHOWN: what the volume's owner helper drops.
const ALL_BUT_CHOWN: &[&str] = &[
    "AUDIT_WRITE",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// How long the volume's owner helper may take.
const OWNER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Gives a fresh (empty, root-owned) workspace volume to the pool's numeric task user, as a
/// workspace slot is on a local engine: a one-off container `name` of the pool's image runs
/// `chown uid:gid /workspace` as root with only CHOWN, no network, and is removed whatever
/// happens. A user name (ids only the image knows) is left alone.
///
/// Errors: the helper could not run or `chown` failed (the image needs a `chown`), with the fix.
pub(super) async fn give_volume_to_user(
    runtime: &Arc<dyn Runtime>,
    name: &str,
    pool_spec: &ContainerSpec,
    volume: &str,
) -> Result<(), String> {
    let Some((uid, gid)) = crate::workspace::numeric_owner(&pool_spec.user).filter(|o| o.0 != 0)
    else {
        return Ok(());
    };
    let mut labels = pool_spec.labels.clone();
    labels.remove(LABEL_SPEC);
    let spec = ContainerSpec {
        image: pool_spec.image.clone(),
        entrypoint: vec![
            "chown".to_string(),
            format!("{uid}:{gid}"),
            crate::workspace::WORKSPACE_PATH.to_string(),
        ],
        labels,
        memory_bytes: pool_spec.memory_bytes,
        nano_cpus: pool_spec.nano_cpus,
        pids_limit: pool_spec.pids_limit,
        user: "0:0".to_string(),
        read_only_rootfs: true,
        cap_drop: ALL_BUT_CHOWN.iter().map(|c| c.to_string()).collect(),
        no_new_privileges: true,
        runtime: pool_spec.runtime.clone(),
        network: "none".to_string(),
        workdir: "/".to_string(),
        mounts: vec![volume_mount(volume)],
        ..Default::default()
    };
    let id = runtime
        .create(name, &spec)
        .await
        .map_err(|e| describe_start_error(&spec.image, e).message)?;
    let ran = async {
        runtime.start(&id).await?;
        tokio::time::timeout(OWNER_TIMEOUT, runtime.wait(&id))
            .await
            .map_err(|_| RuntimeError::Other(format!("no exit within {OWNER_TIMEOUT:?}")))?
    }
    .await;
    let _ = runtime.remove(&id).await;
    match ran {
        Ok(0) => Ok(()),
        Ok(code) => Err(format!(
            "`chown {uid}:{gid} {}` exited {code} in a helper container of image {}: the \
             image needs a chown (coreutils or busybox) for a remote engine's workspace volume \
             to belong to security.user {:?}; add one to the image, or use a local engine",
            crate::workspace::WORKSPACE_PATH,
            spec.image,
            pool_spec.user
        )),
        Err(e) => Err(format!(
            "could not run `chown {uid}:{gid} {}` in a helper container of image {}, which gives \
             a remote engine's workspace volume to security.user {:?}: {e}; the image needs a \
             chown (coreutils or busybox): add one, or use a local engine",
            crate::workspace::WORKSPACE_PATH,
            spec.image,
            pool_spec.user
        )),
    }
}

/// A session's workspace volume, mounted read-write at /workspace.
pub(super) fn volume_mount(volume: &str) -> crate::config::Mount {
    crate::config::Mount {
        kind: crate::config::MountKind::Volume,
        source: Some(volume.to_string()),
        target: crate::workspace::WORKSPACE_PATH.to_string(),
        read_only: false,
        size: None,
    }
}

/// Re-attaches a running shim container a previous daemon run left, and asks its shim
/// whether a task runs in it. `None` when it does not answer: it is not worth adopting.
pub async fn reattach(runtime: &Arc<dyn Runtime>, container: &str) -> Option<(Conn, bool)> {
    let listed = runtime.list_managed().await.ok()?;
    let labels = &listed.iter().find(|c| c.id == container)?.labels;
    let conn = match labels.get(LABEL_SOCKET) {
        Some(socket) => {
            let socket = PathBuf::from(socket);
            // The directory goes with the connection, but only one under this instance's
            // run root: a label is not to be trusted to name what the daemon deletes.
            let instance = labels.get(LABEL_INSTANCE)?;
            let dir = socket
                .parent()
                .filter(|d| d.parent() == Some(direct::run_root(instance).as_path()))
                .map(|d| SocketDir {
                    dir: d.to_path_buf(),
                });
            direct::connect(runtime, container, &socket, dir, None)
                .await
                .ok()?
        }
        None => {
            let attached = runtime.attach(container).await.ok()?;
            ShimConn::connect(attached, None).await.ok()?
        }
    };
    let busy = conn.ping(ADOPT_PING_TIMEOUT).await.ok()?;
    Some((Conn::Shim(conn), busy))
}

/// Whether a spec is for the direct transport (the shim listens on a socket).
fn is_direct(spec: &ContainerSpec) -> bool {
    spec.entrypoint.iter().any(|a| a == "--listen")
}

/// A direct spec's run root: the host side of its socket directory's bind.
fn direct_root(spec: &ContainerSpec) -> Option<PathBuf> {
    if !is_direct(spec) {
        return None;
    }
    let suffix = format!(":{SOCKET_DIR_IN_CONTAINER}");
    spec.binds
        .iter()
        .find_map(|b| b.strip_suffix(&suffix))
        .map(PathBuf::from)
}

/// A fresh container's name: `warmpool-<pool>-<8 hex digits>`.
pub(super) fn container_name(pool: &str) -> String {
    format!("warmpool-{pool}-{:08x}", rand::random::<u32>())
}

/// A create's error as the pool sees it. The engine's 404 on a create is the image missing
/// (warmpool never pulls, docs/configuration.md `image`): no retry of the same create gets
/// past it, so it is a refusal that makes the pool failed, which retries once per
/// `health_check_interval` (and at once on a reload) and so recovers when the image is
/// built or loaded, while its tasks are answered at once with the fix.
fn describe_start_error(image: &str, e: RuntimeError) -> StartError {
    match e {
        RuntimeError::NotFound(m) if m.contains("image") || m.contains(image) => {
            let words = format!("image {image} is not on the engine ({m}); warmpool never pulls");
            let fix = format!(
                "build or load it on the engine (docker build -t {image} ..., docker load, or \
                 docker pull where a registry is reachable; scripts/build-demo-image.sh builds \
                 warmpool/agent:latest), or fix the pool's image in pools.toml and reload"
            );
            StartError::refused(words, fix)
        }
        other => other.into(),
    }
}
