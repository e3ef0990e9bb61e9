//! Owns the pools: cleans up after a previous run, warms each pool, keeps it converged with
//! one level-triggered reconcile loop per pool, runs tasks, and shuts everything down.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{Config, ExecMode, NetworkMode, PoolConfig};
use crate::exec::{ExecError, TaskEvent, TaskExit, TaskSpec};
use crate::metrics::{HealthResult, Metrics, Outcome, RemoveReason, ScaleDirection};
use crate::pool::{AcquireError, Counts, Pool};
use crate::runtime::{
    ContainerSpec, ContainerSummary, Runtime, LABEL_DAEMON, LABEL_INSTANCE, LABEL_MANAGED,
    LABEL_POOL, LABEL_SPEC,
};
use crate::scaling;

/// How long shutdown waits for container starts and removals already in flight.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the shim binary sits inside every shim container.
pub const SHIM_IN_CONTAINER: &str = "/.warmpool/shim";

/// A task as submitted, before a pool's defaults fill it in.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub stdin: Bytes,
    pub timeout: Option<Duration>,
}

/// What the caller gets back for a task that ran.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task_id: String,
    pub pool: String,
    pub container: String,
    pub exit: TaskExit,
    pub queued: Duration,
    pub run: Duration,
    pub cold_start: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("the container engine is unreachable and pool {0} has no idle container; retry when it is back")]
    EngineDown(String),
}

pub struct Supervisor {
    pub daemon_id: String,
    /// The installation this daemon belongs to (`WARMPOOL_INSTANCE`, default "default").
    pub instance: String,
    pub runtime: Arc<dyn Runtime>,
    pub metrics: Arc<Metrics>,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    /// Host path of the shim binary, bind-mounted read-only into shim containers.
    shim_path: Option<PathBuf>,
    engine_up: AtomicBool,
    /// Networks this daemon created (or reused) for `isolated` pools; shutdown removes them.
    networks: parking_lot::Mutex<std::collections::BTreeSet<String>>,
    /// Set once every configured pool exists; before that the daemon is not ready.
    started: AtomicBool,
    stop: watch::Sender<bool>,
    pub sessions: crate::session::Sessions,
    reload_lock: tokio::sync::Mutex<()>,
    /// A handle on ourselves, for background work started from `&self`.
    me: Weak<Supervisor>,
}

impl Supervisor {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
        shim_path: Option<PathBuf>,
        instance: &str,
        max_sessions: usize,
    ) -> Arc<Supervisor> {
        let (stop, _) = watch::channel(false);
        Arc::new_cyclic(|me| Supervisor {
            daemon_id: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            instance: instance.to_string(),
            runtime,
            metrics,
            pools: RwLock::new(BTreeMap::new()),
            shim_path,
            engine_up: AtomicBool::new(false),
            networks: Default::default(),
            started: AtomicBool::new(false),
            stop,
            sessions: crate::session::Sessions::new(max_sessions),
            reload_lock: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    pub(crate) fn self_arc(&self) -> Arc<Supervisor> {
        self.me
            .upgrade()
            .expect("the supervisor outlives its own calls")
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.read().get(name).cloned()
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.read().values().cloned().collect()
    }

    /// Every configured pool exists (start-up is over).
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn engine_up(&self) -> bool {
        self.engine_up.load(Ordering::Acquire)
    }

    /// Ready when the engine answers and every pool has at least `min` containers up.
    pub fn ready(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Acquire) {
            return Err("the daemon is still starting (cleaning up, creating pools)".into());
        }
        if !self.engine_up() {
            return Err("the container engine does not answer".into());
        }
        for pool in self.pools() {
            let c = pool.counts();
            let min = pool.config().min;
            if c.idle + c.busy + c.probing < min {
                return Err(format!(
                    "pool {} has {} of its min {} containers up",
                    pool.name,
                    c.idle + c.busy + c.probing,
                    min
                ));
            }
        }
        Ok(())
    }

    /// The container spec a pool's config asks for.
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
            open_stdin: cfg.exec == ExecMode::Shim,
        };
        spec.labels = labels.clone();
        labels.insert(LABEL_SPEC.to_string(), spec.hash());
        spec.labels = labels;
        spec
    }

    /// Creates networks and pools, takes back what a previous run left that still fits
    /// (idle containers of the same spec, live sessions) and removes the rest, then starts
    /// the loops. Waits for the engine when it is not there yet.
    pub async fn start(self: &Arc<Self>, config: &Config) -> anyhow::Result<()> {
        self.wait_for_engine().await;
        let leftovers = self.list_ours().await.unwrap_or_default();
        for cfg in config.pools.values() {
            self.create_pool(cfg.clone()).await?;
        }
        self.adopt_or_remove(leftovers).await;
        for pool in self.pools() {
            let sup = self.clone();
            tokio::spawn(async move { sup.pool_loop(pool).await });
        }
        self.started.store(true, Ordering::Release);
        let sup = self.clone();
        tokio::spawn(async move { sup.watch_engine().await });
        let sup = self.clone();
        tokio::spawn(async move { sup.reap_loop().await });
        let sup = self.clone();
        tokio::spawn(async move { sup.session_reaper().await });
        Ok(())
    }

    async fn wait_for_engine(&self) {
        let mut logged = false;
        loop {
            match self.runtime.ping().await {
                Ok(()) => {
                    self.set_engine_up(true);
                    return;
                }
                Err(e) => {
                    self.set_engine_up(false);
                    if !logged {
                        tracing::error!(error = %e, "container engine unreachable; retrying every 2 s");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    fn set_engine_up(&self, up: bool) {
        self.engine_up.store(up, Ordering::Release);
        self.metrics.engine_up.set(up as i64);
    }

    /// Every container of this instance is from a previous run (this daemon has created
    /// nothing yet). Running shim containers that still fit are re-attached and adopted:
    /// idle ones of the current spec back into their pool, session ones into their session.
    /// The rest, stuck `created` and `exited` ones included, are removed.
    async fn adopt_or_remove(&self, list: Vec<ContainerSummary>) {
        let work = list.into_iter().map(|c| async move {
            let pool_name = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            if let Some(what) = self.try_adopt(&c, &pool_name).await {
                tracing::info!(container = %c.name, "adopted {what} left by a previous run");
                return;
            }
            tracing::info!(container = %c.name, state = %c.state, "removing a container left by a previous run");
            if self.runtime.remove(&c.id).await.is_ok() {
                self.metrics
                    .containers_removed
                    .with_label_values(&[&pool_name, RemoveReason::Orphan.as_str()])
                    .inc();
            }
        });
        futures_util::future::join_all(work).await;
    }

    async fn try_adopt(&self, c: &ContainerSummary, pool_name: &str) -> Option<&'static str> {
        let pool = self.pool(pool_name)?;
        let cfg = pool.config();
        if c.state != "running" || cfg.exec != ExecMode::Shim {
            return None;
        }
        let session = crate::session::session_of_name(pool_name, &c.name);
        let current = c.labels.get(LABEL_SPEC).map(String::as_str) == Some(&*pool.spec_hash());
        if session.is_none() && !current {
            return None;
        }
        let attached = self.runtime.attach(&c.id).await.ok()?;
        let conn = crate::exec::ShimConn::connect(attached, None).await.ok()?;
        let busy = conn.ping(crate::exec::ADOPT_PING_TIMEOUT).await.ok()?;
        let conn = crate::exec::Conn::Shim(conn);
        match session {
            Some(id) => {
                self.adopt_session(&id, pool_name, c.id.clone(), conn);
                Some("a session's container")
            }
            None if !busy => {
                pool.adopt(
                    c.id.clone(),
                    c.name.clone(),
                    conn,
                    pool.spec_hash().to_string(),
                );
                Some("an idle container")
            }
            None => None,
        }
    }

    /// Creates a pool's network when it needs its own, then the pool and its loop.
    pub async fn add_pool(self: &Arc<Self>, cfg: PoolConfig) -> anyhow::Result<()> {
        let pool = self.create_pool(cfg).await?;
        let sup = self.clone();
        tokio::spawn(async move { sup.pool_loop(pool).await });
        Ok(())
    }

    async fn ensure_isolated_network(&self, pool: &str) -> anyhow::Result<()> {
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

    /// Creates a pool's network when it needs its own, then the pool, without its loop.
    async fn create_pool(&self, cfg: PoolConfig) -> anyhow::Result<Arc<Pool>> {
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
        if !self.runtime.image_exists(&cfg.image).await.unwrap_or(true) {
            tracing::error!(pool = %cfg.name, image = %cfg.image, "image not found on the engine; tasks will fail until it is built or loaded (scripts/build-demo-image.sh builds warmpool/agent:latest)");
        }
        let spec = self.container_spec(&cfg);
        let pool = Pool::new(cfg, spec, self.runtime.clone(), self.metrics.clone());
        self.metrics
            .sessions
            .with_label_values(&[&pool.name])
            .set(0);
        self.pools.write().insert(pool.name.clone(), pool.clone());
        Ok(pool)
    }

    /// One pool's level-triggered loop: wake on a tick or on demand, look, converge.
    async fn pool_loop(self: Arc<Self>, pool: Arc<Pool>) {
        let mut stop = self.stop.subscribe();
        let mut memory = scaling::Memory {
            target: pool.counts().target,
            low_since: None,
        };
        let mut next_health = Instant::now() + pool.config().health_check_interval;
        let mut next_scale = Instant::now();
        loop {
            let cfg = pool.config();
            if *stop.borrow() || pool.is_closed() {
                return;
            }
            // Utilization is judged every scale_interval; queued tasks are acted on at once.
            let look = Instant::now() >= next_scale;
            if look {
                next_scale = Instant::now() + cfg.scale_interval;
            }
            memory = self.reconcile(&pool, &cfg, memory, look);
            if Instant::now() >= next_health {
                next_health = Instant::now() + cfg.health_check_interval;
                self.health_check(&pool, &cfg);
            }
            let tick = cfg.scale_interval.min(cfg.health_check_interval);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = pool.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Compares what is with what should be, and starts or retires containers to converge.
    fn reconcile(
        &self,
        pool: &Arc<Pool>,
        cfg: &PoolConfig,
        memory: scaling::Memory,
        look: bool,
    ) -> scaling::Memory {
        let now = Instant::now();
        let spec_hash = pool.spec_hash();
        let mut st = pool.state.lock();
        let c = crate::pool::counts(&st);
        let obs = scaling::Observation {
            busy: c.busy,
            live: c.live(),
            queued: c.queued,
            min: cfg.min,
            max: cfg.max,
            scale_up_threshold: cfg.scale_up_threshold,
            scale_down_threshold: cfg.scale_down_threshold,
        };
        let memory = memory_with_target(memory, st.target);
        let (mut memory, step) = if look || c.queued > 0 {
            scaling::decide(
                &obs,
                memory,
                now,
                scaling::stabilization_window(cfg.scale_interval),
            )
        } else {
            (memory, None)
        };
        if let Some(step) = step {
            let dir = match step {
                scaling::Step::Up => ScaleDirection::Up,
                scaling::Step::Down => ScaleDirection::Down,
            };
            self.metrics
                .scale_events
                .with_label_values(&[&pool.name, dir.as_str()])
                .inc();
            tracing::info!(pool = %pool.name, from = st.target, to = memory.target, "scaling {}", dir.as_str());
        }

        // Stale containers (dead, of an old spec, past their age) are replaced surge first:
        // one goes only when enough fresh ones are up without it. Busy stale ones retire when
        // their task ends, but count as stale now so their replacements start early.
        let desired = memory.target.max(cfg.min).min(cfg.max);
        let mut idle: Vec<(u64, Instant)> = Vec::new();
        let mut stale_idle: Vec<(u64, RemoveReason)> = Vec::new();
        let mut up = 0;
        let mut stale_busy = 0;
        for (id, m) in &st.members {
            up += 1;
            let reason = if m.conn.is_dead() {
                Some(RemoveReason::Unhealthy)
            } else if *m.spec_hash != *spec_hash {
                Some(RemoveReason::Reload)
            } else if now.duration_since(m.created) >= m.max_age {
                Some(RemoveReason::Age)
            } else {
                None
            };
            match (m.state, reason) {
                (crate::pool::MemberState::Idle, Some(r)) => stale_idle.push((*id, r)),
                (crate::pool::MemberState::Idle, None) => idle.push((*id, m.last_used)),
                (_, Some(_)) => stale_busy += 1,
                (_, None) => {}
            }
        }
        let mut fresh_up = up - stale_idle.len() - stale_busy;
        // Stale ones kept serving until their replacements are up.
        let mut keep = desired.saturating_sub(fresh_up + stale_busy);
        for (id, reason) in stale_idle {
            if reason != RemoveReason::Unhealthy && keep > 0 {
                keep -= 1;
                continue;
            }
            pool.retire_locked(&mut st, id, reason);
        }

        // Surplus fresh idle ones, least recently used first: scale-down, then idle timeout.
        idle.sort_by_key(|(_, last)| *last);
        for (id, last_used) in idle {
            if fresh_up > desired {
                pool.retire_locked(&mut st, id, RemoveReason::ScaleDown);
                fresh_up -= 1;
            } else if fresh_up > cfg.min && now.duration_since(last_used) >= cfg.idle_timeout {
                pool.retire_locked(&mut st, id, RemoveReason::Idle);
                fresh_up -= 1;
                // The pool chose to be smaller: do not start its replacement. That lowers the
                // target, so it is a scale down like the autoscaler's (counted the same way).
                let lowered = memory.target.min(fresh_up).max(cfg.min);
                if lowered < memory.target {
                    self.metrics.scaled(&pool.name, ScaleDirection::Down);
                    tracing::info!(pool = %pool.name, from = memory.target, to = lowered, "scaling down (idle_timeout)");
                }
                memory.target = lowered;
            }
        }

        // Start what is missing. Stale ones being replaced do not count toward max, so a
        // pool at max can still renew itself.
        let desired = memory.target.max(cfg.min).min(cfg.max);
        let have = fresh_up + st.starting;
        let backing_off = st.backoff_until.is_some_and(|t| now < t);
        if desired > have && !backing_off && self.engine_up() {
            for _ in 0..(desired - have) {
                st.starting += 1;
                pool.spawn_start(false);
            }
        }
        st.target = memory.target;
        pool.publish(&st);
        memory
    }

    /// Probes idle containers in the background; the verdict puts each back or replaces it.
    fn health_check(&self, pool: &Arc<Pool>, cfg: &PoolConfig) {
        let probes = pool.take_for_probe(Duration::ZERO);
        for (id, conn) in probes {
            let pool = pool.clone();
            let cmd = cfg.health_cmd.clone();
            tokio::spawn(async move {
                let result = conn.probe(cmd.as_deref(), crate::exec::PROBE_TIMEOUT).await;
                let healthy = result.is_ok();
                if let Err(e) = &result {
                    tracing::warn!(pool = %pool.name, error = %e, "health check failed; replacing the container");
                }
                let r = if healthy {
                    HealthResult::Healthy
                } else {
                    HealthResult::Unhealthy
                };
                pool.metrics
                    .health_checks
                    .with_label_values(&[&pool.name, r.as_str()])
                    .inc();
                pool.probed(id, healthy);
            });
        }
    }

    /// Pings the engine; on an outage marks it down (readyz fails, starts pause) and wakes
    /// every pool when it is back so they rebuild.
    async fn watch_engine(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let up = tokio::time::timeout(Duration::from_secs(5), self.runtime.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            let was = self.engine_up();
            self.set_engine_up(up);
            if up != was {
                if up {
                    tracing::info!("container engine reachable again");
                } else {
                    tracing::error!("container engine unreachable");
                }
                for pool in self.pools() {
                    if up {
                        // Failures from the outage say nothing about the engine now back.
                        let mut st = pool.state.lock();
                        st.start_failures = 0;
                        st.backoff_until = None;
                    }
                    pool.wake.notify_one();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(if up { 5 } else { 1 })) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Removes containers of this daemon that no pool knows (a failed start, a crash
    /// between create and start).
    async fn reap_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let interval = self
                .pools()
                .iter()
                .map(|p| p.config().health_check_interval)
                .min()
                .unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            self.reap_once().await;
        }
    }

    pub async fn reap_once(&self) {
        let listed_at = Instant::now();
        let Ok(list) = self.list_ours().await else {
            return;
        };
        // Known: members, containers being created or removed, and those removed while the
        // list was taken (a container removed during the listing may be in it; removing it
        // again would "succeed" and count it a second time, as an orphan).
        let mut known = HashSet::new();
        for pool in self.pools() {
            let mut st = pool.state.lock();
            known.extend(st.members.values().map(|m| m.container.clone()));
            known.extend(st.creating.iter().cloned());
            known.extend(st.removing.iter().cloned());
            known.extend(st.gone.iter().map(|(id, _)| id.clone()));
            // What went before the listing began cannot be in this listing or a later one.
            st.gone.retain(|(_, at)| *at >= listed_at);
        }
        known.extend(self.extra_known());
        for c in list {
            let ours = c.labels.get(LABEL_DAEMON) == Some(&self.daemon_id);
            if known.contains(&c.id) || known.contains(&c.name) {
                continue;
            }
            let pool = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            if ours || c.state != "running" {
                tracing::info!(container = %c.name, state = %c.state, "reaping a container no pool knows");
                if self.runtime.remove(&c.id).await.is_ok() {
                    self.metrics
                        .containers_removed
                        .with_label_values(&[&pool, RemoveReason::Orphan.as_str()])
                        .inc();
                }
            }
        }
    }

    /// Containers held outside the pools: sessions'.
    fn extra_known(&self) -> Vec<String> {
        self.sessions.containers()
    }

    /// Runs one task on a pool: queue, claim, run, and give the container back or retire it.
    pub async fn submit(
        &self,
        pool_name: &str,
        request: TaskRequest,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SubmitError> {
        let pool = self
            .pool(pool_name)
            .ok_or_else(|| SubmitError::UnknownPool(pool_name.to_string()))?;
        let cfg = pool.config();
        let task = build_task(&cfg, request)?;
        let task_id = format!("t-{}", ulid::Ulid::new());
        // Never the env, the argv or the stdin: they may hold secrets.
        let span = tracing::info_span!("task", pool = %pool.name, task_id = %task_id, container = tracing::field::Empty);
        self.run_task(pool, task, task_id, span.clone(), out)
            .instrument(span)
            .await
    }

    /// The rest of [`Supervisor::submit`], inside the task's span: every line logged on the
    /// way (the container retired after a timeout, ...) names the pool, task and container.
    async fn run_task(
        &self,
        pool: Arc<Pool>,
        mut task: TaskSpec,
        task_id: String,
        span: tracing::Span,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SubmitError> {
        let queued_at = Instant::now();
        // With the engine down no container can start: waiting would only delay the answer.
        if !self.engine_up() && pool.counts().idle == 0 {
            self.count_task(&pool.name, Outcome::Rejected, None);
            return Err(SubmitError::EngineDown(pool.name.clone()));
        }
        let mut lease = match pool.acquire().await {
            Ok(lease) => lease,
            Err(e) => {
                self.count_task(&pool.name, Outcome::Rejected, None);
                tracing::debug!(error = %e, "task refused");
                return Err(e.into());
            }
        };
        let queued = queued_at.elapsed();
        self.metrics
            .queue_wait
            .with_label_values(&[&pool.name])
            .observe(queued.as_secs_f64());
        span.record("container", short(&lease.container));
        lease.begin();
        let began = Instant::now();
        if lease.dirty {
            // The previous task's files go first, wiped by the shim in the same frame as this
            // task: a separate Reset would cost a round trip through the engine per task. A
            // failed wipe fails this task, and its container is replaced (the Err arm).
            task.reset = vec![pool.config().workdir.clone(), "/tmp".to_string()];
            lease.dirty = false;
        }
        let result = lease.conn.run(&task, &out).await;
        let run = began.elapsed();
        let container = lease.container.clone();
        let lease_cold = lease.cold;
        match result {
            Ok(exit) => {
                let outcome = outcome_of(&exit);
                if exit.timed_out {
                    // The process group was killed, but a timed-out container is never
                    // trusted again: whatever it was doing may have left it in a bad state.
                    lease.retire(RemoveReason::Unhealthy);
                } else {
                    lease.finish();
                }
                self.count_task(&pool.name, outcome, Some(run));
                tracing::debug!(exit_code = ?exit.exit_code, timed_out = exit.timed_out, run_ms = run.as_secs_f64() * 1e3, "task done");
                Ok(TaskReport {
                    task_id,
                    pool: pool.name.clone(),
                    container,
                    exit,
                    queued,
                    run,
                    cold_start: lease_cold,
                })
            }
            Err(e) => {
                lease.retire(RemoveReason::Unhealthy);
                pool.wake.notify_one();
                self.count_task(&pool.name, Outcome::Error, Some(run));
                tracing::warn!(error = %e, "task failed");
                Err(e.into())
            }
        }
    }

    pub(crate) fn count_task(&self, pool: &str, outcome: Outcome, run: Option<Duration>) {
        self.metrics
            .tasks_total
            .with_label_values(&[pool, outcome.as_str()])
            .inc();
        if let Some(run) = run {
            self.metrics
                .task_duration
                .with_label_values(&[pool])
                .observe(run.as_secs_f64());
        }
    }

    /// Stops taking tasks, lets running ones finish up to `grace`, then removes every
    /// container and network this daemon made.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        for pool in self.pools() {
            pool.close();
        }
        let deadline = Instant::now() + grace;
        // Sessions end like on DELETE (end command included), within the same grace.
        let _ = tokio::time::timeout(grace, self.end_all_sessions()).await;
        loop {
            let busy: usize = self.pools().iter().map(|p| p.counts().busy).sum();
            if busy == 0 || Instant::now() >= deadline {
                if busy > 0 {
                    tracing::warn!(
                        busy,
                        "shutdown grace over; removing containers with tasks still running"
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Containers still being created would otherwise appear after the sweep below, with
        // nobody left to remove them: closed pools retire them as they come up.
        self.settle(|c| c.starting == 0, "container starts").await;
        let mut ids = Vec::new();
        for pool in self.pools() {
            let mut st = pool.state.lock();
            let members: Vec<u64> = st.members.keys().copied().collect();
            for id in members {
                if let Some(m) = st.members.get(&id) {
                    ids.push((pool.name.clone(), m.container.clone()));
                }
            }
            st.members.clear();
        }
        let removals = ids.into_iter().map(|(pool, id)| {
            let runtime = self.runtime.clone();
            let metrics = self.metrics.clone();
            async move {
                if runtime.remove(&id).await.is_ok() {
                    metrics
                        .containers_removed
                        .with_label_values(&[&pool, RemoveReason::Shutdown.as_str()])
                        .inc();
                }
            }
        });
        futures_util::future::join_all(removals).await;
        self.settle(
            |c| c.retiring == 0 && c.unhealthy == 0,
            "container removals",
        )
        .await;
        // Whatever else carries our daemon id (a start that raced the shutdown).
        if let Ok(list) = self.list_ours().await {
            for c in list {
                if c.labels.get(LABEL_DAEMON) == Some(&self.daemon_id) {
                    let _ = self.runtime.remove(&c.id).await;
                }
            }
        }
        // Every network this daemon set up, including one of a pool whose setup a signal or
        // an error cut short before the pool existed.
        let nets: Vec<String> = self.networks.lock().iter().cloned().collect();
        for net in nets {
            if let Err(e) = self.runtime.remove_network(&net).await {
                tracing::warn!(network = %net, error = %e, "could not remove network");
            }
        }
    }

    /// Applies a new configuration: validated by the caller, applied as a difference. A new
    /// pool warms; a removed one stops taking tasks, lets its running ones finish, and goes;
    /// a changed container spec replaces containers one by one, surge first (the reconcile
    /// loop sees their old spec hash); sizing and timing changes touch no container.
    pub async fn reload(self: &Arc<Self>, new: &Config) -> Result<ReloadSummary, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        if !self.started.load(Ordering::Acquire) {
            // start() creates the pools of the file it read without this lock: a reload now
            // would race it (and may wait on an engine that is not there yet).
            return Err("the daemon is still starting (waiting for the engine or creating pools); reload once /readyz answers".into());
        }
        let mut summary = ReloadSummary::default();
        let current: Vec<String> = self.pools.read().keys().cloned().collect();
        for name in &current {
            if !new.pools.contains_key(name) {
                self.remove_pool(name).await;
                summary.removed.push(name.clone());
            }
        }
        for (name, cfg) in &new.pools {
            match self.pool(name) {
                None => {
                    self.add_pool(cfg.clone())
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    summary.added.push(name.clone());
                }
                Some(pool) => {
                    let old = pool.config();
                    if *old == *cfg {
                        continue;
                    }
                    if cfg.network == NetworkMode::Isolated && old.network != NetworkMode::Isolated
                    {
                        self.ensure_isolated_network(&cfg.name)
                            .await
                            .map_err(|e| format!("{e:#}"))?;
                    }
                    let spec = self.container_spec(cfg);
                    if *spec.hash() != *pool.spec_hash() {
                        summary.replaced.push(name.clone());
                    } else {
                        summary.retuned.push(name.clone());
                    }
                    pool.set_config(cfg.clone(), spec);
                    let mut st = pool.state.lock();
                    st.target = st.target.clamp(cfg.min, cfg.max.max(cfg.min));
                    pool.publish(&st);
                }
            }
        }
        self.sessions.set_max(new.server.max_sessions);
        Ok(summary)
    }

    /// Takes a pool out: no new tasks, queued ones refused, running ones finish (bounded by
    /// the pool's task timeout), then its containers, sessions and network go.
    async fn remove_pool(&self, name: &str) {
        let Some(pool) = self.pool(name) else {
            return;
        };
        pool.close();
        let deadline = Instant::now() + pool.config().task_timeout + Duration::from_secs(5);
        while pool.counts().busy > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Sessions end while their pool is still there to say what its session_end_command
        // is (state saving must not be skipped because the pool is going); the second pass
        // catches a session created on it in between.
        self.end_sessions_of(name).await;
        self.pools.write().remove(name);
        self.end_sessions_of(name).await;
        let ids: Vec<u64> = pool.state.lock().members.keys().copied().collect();
        {
            let mut st = pool.state.lock();
            for id in ids {
                pool.retire_locked(&mut st, id, RemoveReason::Reload);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pool.counts().retiring > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if pool.config().network == NetworkMode::Isolated {
            let net = self.isolated_network(name);
            if let Err(e) = self.runtime.remove_network(&net).await {
                tracing::warn!(network = %net, error = %e, "could not remove the removed pool's network");
            }
            self.networks.lock().remove(&net);
        }
        self.metrics.forget_pool(name);
        tracing::info!(pool = %name, "pool removed by reload");
    }

    /// Waits, up to a bound, until `done` holds for every pool's counts.
    async fn settle(&self, done: impl Fn(&Counts) -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !self.pools().iter().all(|p| done(&p.counts())) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "shutdown: {what} still in flight after {SETTLE_TIMEOUT:?}; going on"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn end_sessions_of(&self, pool: &str) {
        let ends = self
            .sessions
            .list()
            .into_iter()
            .filter(|s| s.pool == pool)
            .map(|s| async move {
                let _ = self.end_session(&s.id).await;
            });
        futures_util::future::join_all(ends).await;
    }

    /// Pool status for the API.
    pub fn status(&self) -> Vec<(Arc<PoolConfig>, Counts)> {
        self.pools()
            .iter()
            .map(|p| (p.config(), p.counts()))
            .collect()
    }
}

impl Supervisor {
    /// `warmpool-<pool>`, or `warmpool-<instance>-<pool>` beside other installations: the
    /// bridge of an `isolated` pool.
    pub fn isolated_network(&self, pool: &str) -> String {
        if self.instance == "default" {
            format!("warmpool-{pool}")
        } else {
            format!("warmpool-{}-{pool}", self.instance)
        }
    }

    /// Managed containers of this installation (any daemon run of it).
    async fn list_ours(&self) -> Result<Vec<ContainerSummary>, crate::runtime::RuntimeError> {
        let all = self.runtime.list_managed().await?;
        Ok(all
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_INSTANCE).map(String::as_str) == Some(self.instance.as_str())
            })
            .collect())
    }
}

fn memory_with_target(memory: scaling::Memory, target: usize) -> scaling::Memory {
    scaling::Memory { target, ..memory }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// What a reload changed, pool by pool.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Container spec changed: containers are being replaced, surge first.
    pub replaced: Vec<String>,
    /// Sizing or timing only: no container touched.
    pub retuned: Vec<String>,
}

/// How a task that ran is counted.
pub(crate) fn outcome_of(exit: &TaskExit) -> Outcome {
    if exit.timed_out {
        Outcome::Timeout
    } else if exit.exit_code == Some(0) {
        Outcome::Ok
    } else if exit.spawn_error.is_some() {
        Outcome::Error
    } else {
        Outcome::NonzeroExit
    }
}

/// Fills a request in from the pool's defaults and checks what the pool cannot know.
pub(crate) fn build_task(cfg: &PoolConfig, req: TaskRequest) -> Result<TaskSpec, SubmitError> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(SubmitError::Invalid(
            "the command is empty: give cmd as a non-empty argv array or shell as a string".into(),
        ));
    }
    if let Some(k) = req.env.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(SubmitError::Invalid(format!(
            "env key {k:?} is not a valid variable name (empty or contains '=')"
        )));
    }
    let timeout = match req.timeout {
        Some(t) if t.is_zero() => {
            return Err(SubmitError::Invalid("timeout must be more than 0s".into()))
        }
        Some(t) if t > cfg.task_timeout => {
            return Err(SubmitError::Invalid(format!(
                "timeout {} is longer than the pool's task_timeout {}; ask for less or raise task_timeout",
                humantime::format_duration(t),
                humantime::format_duration(cfg.task_timeout)
            )))
        }
        Some(t) => t,
        None => cfg.task_timeout,
    };
    let workdir = req.workdir.unwrap_or_else(|| cfg.workdir.clone());
    if !workdir.starts_with('/') {
        return Err(SubmitError::Invalid(format!(
            "workdir {workdir:?} must be an absolute path"
        )));
    }
    Ok(TaskSpec {
        argv: req.argv,
        env: req.env,
        workdir,
        stdin: req.stdin,
        timeout,
        max_output: cfg.max_output,
        reset: Vec::new(),
    })
}
