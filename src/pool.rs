//! One pool: its containers and their states, the FIFO queue of tasks waiting for one, and the
//! lease that hands a container to exactly one task at a time.
//!
//! Every claim and hand-off happens in one critical section under the pool's lock (never
//! across an `.await`), so two tasks can never get the same container; and a [`Lease`] puts
//! its container back or retires it when dropped, on every path, cancellation included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::config::{ExecMode, OnExhausted, PoolConfig};
use crate::exec::{Conn, DockerExecConn, ShimConn};
use crate::metrics::{Acquisition, ContainerState, Metrics, RemoveReason};
use crate::runtime::{ContainerSpec, Runtime, RuntimeError};

/// Creates in flight at once per pool: the engine slows sharply when many start together.
const PARALLEL_CREATES: usize = 3;

/// Why a task got no container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "pool {pool} has {queued} tasks queued, its max_queue; retry later or raise max_queue"
    )]
    QueueFull { pool: String, queued: usize },
    #[error("no container of pool {pool} became free within acquire_timeout ({timeout:?}){hint}")]
    Timeout {
        pool: String,
        timeout: Duration,
        hint: String,
    },
    #[error("every container of pool {pool} is busy and it is at max ({max}); on_exhausted = \"fail\" refuses at once")]
    Exhausted { pool: String, max: usize },
    #[error("pool {0} is shutting down and takes no new tasks")]
    Closed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Idle,
    Busy,
    /// Taken out of rotation while its health probe runs.
    Probing,
    Retiring,
}

/// A live container of the pool.
pub struct Member {
    pub container: String,
    pub name: String,
    pub conn: Conn,
    pub state: MemberState,
    pub created: Instant,
    pub last_used: Instant,
    pub uses: u64,
    /// `max_age` with this container's jitter, so a pool does not renew all at once.
    pub max_age: Duration,
    pub spec_hash: String,
    /// Started beyond `max` by `on_exhausted = "cold"`: retired after its one task.
    pub extra: bool,
    /// A task ran since the workdir was last wiped; the next lease wipes it first.
    pub dirty: bool,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Lease>,
}

/// Counts at one instant, for the autoscaler, the API and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub idle: usize,
    pub busy: usize,
    pub starting: usize,
    /// Idle containers taken out of rotation for a moment while their health probe runs.
    pub probing: usize,
    /// Being removed for age, uses, scale down, shutdown, ...
    pub retiring: usize,
    /// Being removed because they failed: a failed probe, a dead agent, a timed-out task.
    pub unhealthy: usize,
    pub queued: usize,
    pub target: usize,
}

impl Counts {
    /// Containers that exist or are coming: what `min`/`max` bound.
    pub fn live(&self) -> usize {
        self.idle + self.busy + self.starting + self.probing
    }

    /// busy / live, over containers that can take tasks.
    pub fn utilization(&self) -> f64 {
        let up = self.idle + self.busy + self.probing;
        if up == 0 {
            if self.queued > 0 {
                1.0
            } else {
                0.0
            }
        } else {
            self.busy as f64 / up as f64
        }
    }
}

#[derive(Default)]
pub struct State {
    pub members: HashMap<u64, Member>,
    /// Idle members, most recently used last: taking from the end keeps hot containers hot
    /// and lets the others age out under idle_timeout.
    idle: Vec<u64>,
    waiters: VecDeque<Waiter>,
    pub starting: usize,
    pub retiring: usize,
    /// Retiring for [`RemoveReason::Unhealthy`]: shown as unhealthy until removed.
    pub retiring_unhealthy: usize,
    pub target: usize,
    next_id: u64,
    closed: bool,
    /// The last container start failure, shown to tasks that time out waiting.
    pub last_start_error: Option<String>,
    /// Consecutive start failures, for back-off.
    pub start_failures: u32,
    pub backoff_until: Option<Instant>,
    /// Names of containers being created, so the reaper leaves them alone.
    pub creating: HashSet<String>,
    /// Ids of retired containers whose removal is in flight, for the same reason (and so that
    /// a removal is counted once, under its real reason, not again as an orphan).
    pub removing: HashSet<String>,
    /// Containers this pool removed lately (ids, or names of failed starts), with when: the
    /// reaper may have listed one just before it went. It prunes what went before its listing.
    pub gone: Vec<(String, Instant)>,
}

pub struct Pool {
    pub name: String,
    cfg: RwLock<Arc<PoolConfig>>,
    spec: RwLock<Arc<ContainerSpec>>,
    /// The spec's hash, computed once per config rather than on every release.
    spec_hash: RwLock<Arc<str>>,
    pub state: Mutex<State>,
    pub runtime: Arc<dyn Runtime>,
    pub metrics: Arc<Metrics>,
    /// Wakes the pool's reconcile loop early (a task queued, a container died).
    pub wake: Notify,
    creates: Semaphore,
}

impl Pool {
    pub fn new(
        cfg: PoolConfig,
        spec: ContainerSpec,
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        metrics.init_pool(&cfg.name);
        let pool = Arc::new(Pool {
            name: cfg.name.clone(),
            state: Mutex::new(State {
                target: cfg.warm.max(cfg.min),
                ..Default::default()
            }),
            cfg: RwLock::new(Arc::new(cfg)),
            spec_hash: RwLock::new(spec.hash().into()),
            spec: RwLock::new(Arc::new(spec)),
            runtime,
            metrics,
            wake: Notify::new(),
            creates: Semaphore::new(PARALLEL_CREATES),
        });
        pool.publish(&pool.state.lock());
        pool
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.cfg.read().clone()
    }

    pub fn spec(&self) -> Arc<ContainerSpec> {
        self.spec.read().clone()
    }

    pub fn spec_hash(&self) -> Arc<str> {
        self.spec_hash.read().clone()
    }

    /// Applies a new config (and spec); members of another spec are replaced by the loop.
    pub fn set_config(&self, cfg: PoolConfig, spec: ContainerSpec) {
        *self.cfg.write() = Arc::new(cfg);
        *self.spec_hash.write() = spec.hash().into();
        *self.spec.write() = Arc::new(spec);
        self.wake.notify_one();
    }

    pub fn counts(&self) -> Counts {
        counts(&self.state.lock())
    }

    /// Takes an idle container, or queues for one up to `acquire_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let cfg = self.config();
        let started = Instant::now();
        let (waiter_id, mut rx) = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(AcquireError::Closed(self.name.clone()));
            }
            if let Some(lease) = self.take_idle(&mut st) {
                self.acquired(Acquisition::Warm, started);
                self.publish(&st);
                return Ok(lease);
            }
            let c = counts(&st);
            let at_max = c.live() >= cfg.max && st.waiters.len() >= c.starting;
            if cfg.on_exhausted == OnExhausted::Fail && at_max {
                return Err(AcquireError::Exhausted {
                    pool: self.name.clone(),
                    max: cfg.max,
                });
            }
            if st.waiters.len() >= cfg.max_queue {
                return Err(AcquireError::QueueFull {
                    pool: self.name.clone(),
                    queued: st.waiters.len(),
                });
            }
            // Only for a task that will wait for it: a refused one must not start a container.
            if cfg.on_exhausted == OnExhausted::Cold && at_max {
                st.starting += 1;
                self.spawn_start(true);
            }
            let (tx, rx) = oneshot::channel();
            st.next_id += 1;
            let id = st.next_id;
            st.waiters.push_back(Waiter { id, tx });
            self.publish(&st);
            (id, rx)
        };
        // Demand: let the reconcile loop grow the pool now rather than at its next tick.
        self.wake.notify_one();
        let waited = tokio::time::timeout(cfg.acquire_timeout, &mut rx).await;
        let lease = match waited {
            Ok(Ok(lease)) => lease,
            Ok(Err(_)) => return Err(AcquireError::Closed(self.name.clone())),
            Err(_) => {
                let mut st = self.state.lock();
                let before = st.waiters.len();
                st.waiters.retain(|w| w.id != waiter_id);
                if st.waiters.len() == before {
                    // Handed a container in the same instant: it is in the channel, use it.
                    drop(st);
                    match rx.try_recv() {
                        Ok(lease) => lease,
                        Err(_) => return Err(AcquireError::Closed(self.name.clone())),
                    }
                } else {
                    self.publish(&st);
                    let hint = st
                        .last_start_error
                        .as_ref()
                        .map(|e| format!("; the last container start failed: {e}"))
                        .unwrap_or_default();
                    return Err(AcquireError::Timeout {
                        pool: self.name.clone(),
                        timeout: cfg.acquire_timeout,
                        hint,
                    });
                }
            }
        };
        // Cold only when the container was started while this task waited; one that
        // another task (or a workdir reset, or a health probe) handed back is warm.
        let how = if lease.cold {
            Acquisition::Cold
        } else {
            Acquisition::Warm
        };
        self.acquired(how, started);
        Ok(lease)
    }

    fn acquired(&self, kind: Acquisition, started: Instant) {
        self.metrics
            .acquired(&self.name, kind, started.elapsed().as_secs_f64());
    }

    /// Claims an idle member in the caller's critical section.
    fn take_idle(self: &Arc<Self>, st: &mut State) -> Option<Lease> {
        while let Some(id) = st.idle.pop() {
            let Some(m) = st.members.get_mut(&id) else {
                continue;
            };
            if m.state != MemberState::Idle {
                continue;
            }
            if m.conn.is_dead() {
                // Found dead on the way out: replace it (the loop starts the replacement).
                self.retire_locked(st, id, RemoveReason::Unhealthy);
                self.wake.notify_one();
                continue;
            }
            m.state = MemberState::Busy;
            return Some(self.lease(id, m));
        }
        None
    }

    fn lease(self: &Arc<Self>, id: u64, m: &Member) -> Lease {
        Lease {
            pool: self.clone(),
            member: id,
            container: m.container.clone(),
            conn: m.conn.clone(),
            dirty: m.dirty,
            task_started: false,
            outcome: None,
            armed: true,
            cold: false,
        }
    }

    /// A member became available: hand it to the first waiter still waiting, else idle it.
    /// `fresh` says it was just started, so a waiter that gets it had a cold start.
    fn offer(self: &Arc<Self>, st: &mut State, id: u64, fresh: bool) {
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        m.state = MemberState::Busy;
        while let Some(w) = st.waiters.pop_front() {
            let m = &st.members[&id];
            let mut lease = self.lease(id, m);
            lease.cold = fresh;
            match w.tx.send(lease) {
                Ok(()) => return,
                // That waiter gave up; its lease must not run Drop under our lock.
                Err(mut lease) => lease.armed = false,
            }
        }
        let m = st.members.get_mut(&id).expect("member present");
        m.state = MemberState::Idle;
        st.idle.push(id);
    }

    /// Where a lease ends: back to idle, or retired. The workdir is wiped when the container
    /// is next leased, not here, so a client's next task finds its container idle at once.
    fn release(self: &Arc<Self>, id: u64, used: bool, dirty: bool, retire: Option<RemoveReason>) {
        let cfg = self.config();
        let mut st = self.state.lock();
        let closed = st.closed;
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if used {
            m.uses += 1;
            m.last_used = Instant::now();
        }
        m.dirty = dirty || (used && cfg.reset_workdir && matches!(m.conn, Conn::Shim(_)));
        let reason = retire.or_else(|| {
            if m.extra {
                Some(RemoveReason::ScaleDown)
            } else if m.uses >= cfg.max_uses {
                Some(RemoveReason::Uses)
            } else if m.created.elapsed() >= m.max_age {
                Some(RemoveReason::Age)
            } else if *m.spec_hash != *self.spec_hash() {
                Some(RemoveReason::Reload)
            } else if closed {
                Some(RemoveReason::Shutdown)
            } else if m.conn.is_dead() {
                Some(RemoveReason::Unhealthy)
            } else {
                None
            }
        });
        match reason {
            Some(reason) => {
                self.retire_locked(&mut st, id, reason);
                self.publish(&st);
                drop(st);
                self.wake.notify_one();
            }
            None => {
                self.offer(&mut st, id, false);
                self.publish(&st);
            }
        }
    }

    /// Takes a member out of the pool and removes its container in the background.
    pub fn retire_locked(self: &Arc<Self>, st: &mut State, id: u64, reason: RemoveReason) {
        let Some(m) = st.members.remove(&id) else {
            return;
        };
        st.idle.retain(|i| *i != id);
        let failed = reason == RemoveReason::Unhealthy;
        if failed {
            st.retiring_unhealthy += 1;
        } else {
            st.retiring += 1;
        }
        st.removing.insert(m.container.clone());
        tracing::debug!(pool = %self.name, container = %m.name, reason = reason.as_str(), "retiring container");
        st.removing.insert(m.container.clone());
        let pool = self.clone();
        tokio::spawn(async move {
            drop(m.conn);
            // Counted once it is gone; a failed removal is left to the reaper, which counts
            // it as an orphan when it succeeds.
            match pool.runtime.remove(&m.container).await {
                Ok(()) => pool.metrics.removed(&pool.name, reason),
                Err(e) => {
                    tracing::warn!(pool = %pool.name, container = %m.name, error = %e, "removing container failed; the reaper will retry");
                }
            }
            let mut st = pool.state.lock();
            st.removing.remove(&m.container);
            st.gone.push((m.container.clone(), Instant::now()));
            if failed {
                st.retiring_unhealthy -= 1;
            } else {
                st.retiring -= 1;
            }
            pool.publish(&st);
        });
    }

    /// Starts one container in the background; `st.starting` was already counted by the
    /// caller under the lock, so concurrent decisions see it.
    pub fn spawn_start(self: &Arc<Self>, extra: bool) {
        let pool = self.clone();
        tokio::spawn(async move {
            let _permit = pool.creates.acquire().await;
            if pool.is_closed() {
                // Shut down while this start waited for its turn: nothing to create.
                let mut st = pool.state.lock();
                st.starting -= 1;
                pool.publish(&st);
                return;
            }
            let begun = Instant::now();
            let spec = pool.spec();
            let spec_hash = spec.hash();
            let cfg = pool.config();
            let name = format!("warmpool-{}-{}", pool.name, short_id());
            pool.state.lock().creating.insert(name.clone());
            let result = pool.create_and_connect(&name, &spec, &cfg).await;
            let mut st = pool.state.lock();
            // Out of `creating` in the same critical section that makes it a member (or
            // records it gone), so the reaper always knows it.
            st.creating.remove(&name);
            st.starting -= 1;
            match result {
                Ok((container, conn)) => {
                    pool.metrics
                        .started(&pool.name, begun.elapsed().as_secs_f64());
                    st.start_failures = 0;
                    st.backoff_until = None;
                    st.last_start_error = None;
                    let id = add_member(&mut st, container, name, conn, &cfg, spec_hash, extra);
                    if st.closed {
                        pool.retire_locked(&mut st, id, RemoveReason::Shutdown);
                    } else {
                        pool.offer(&mut st, id, true);
                    }
                }
                Err(e) => {
                    st.gone.push((name, Instant::now()));
                    st.start_failures += 1;
                    let backoff =
                        Duration::from_millis(250) * 2u32.saturating_pow(st.start_failures.min(7));
                    st.backoff_until = Some(Instant::now() + backoff.min(Duration::from_secs(30)));
                    tracing::warn!(pool = %pool.name, error = %e, "container start failed");
                    st.last_start_error = Some(e);
                }
            }
            pool.publish(&st);
            drop(st);
            pool.wake.notify_one();
        });
    }

    /// create → attach → start → greeting. Whatever fails, nothing is left behind.
    async fn create_and_connect(
        &self,
        name: &str,
        spec: &ContainerSpec,
        cfg: &PoolConfig,
    ) -> Result<(String, Conn), String> {
        let id = self
            .runtime
            .create(name, spec)
            .await
            .map_err(|e| describe_start_error(&spec.image, e))?;
        // Counted as soon as it exists on the engine, so a failed start is created and
        // removed like any other container, and created - removed is what the engine holds.
        self.metrics.created(&self.name);
        let result = async {
            match cfg.exec {
                ExecMode::Shim => {
                    let attached = self.runtime.attach(&id).await.map_err(|e| e.to_string())?;
                    self.runtime.start(&id).await.map_err(|e| e.to_string())?;
                    let conn = ShimConn::connect(attached, Some(crate::exec::START_TIMEOUT))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Conn::Shim(conn))
                }
                ExecMode::DockerExec => {
                    self.runtime.start(&id).await.map_err(|e| e.to_string())?;
                    Ok(Conn::DockerExec(DockerExecConn {
                        runtime: self.runtime.clone(),
                        container: id.clone(),
                    }))
                }
            }
        }
        .await;
        match result {
            Ok(conn) => Ok((id, conn)),
            Err(e) => {
                // It never served: it failed, as a container that fails its probe does.
                if self.runtime.remove(&id).await.is_ok() {
                    self.metrics.removed(&self.name, RemoveReason::Unhealthy);
                }
                Err(e)
            }
        }
    }

    /// Refuses new tasks and fails the queued ones; running tasks go on.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        // Dropping the senders wakes every waiter with "closed".
        st.waiters.clear();
        self.publish(&st);
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Sets every gauge of this pool from the state, in one place.
    pub fn publish(&self, st: &State) {
        let c = counts(st);
        let cfg = self.config();
        let m = &self.metrics;
        let n = self.name.as_str();
        // A container whose probe is in flight is an idle one (it goes straight back unless
        // the probe fails); unhealthy ones are those being removed because they failed.
        for (state, value) in [
            (ContainerState::Idle, c.idle + c.probing),
            (ContainerState::Busy, c.busy),
            (ContainerState::Starting, c.starting),
            (ContainerState::Unhealthy, c.unhealthy),
            (ContainerState::Retiring, c.retiring),
        ] {
            m.containers
                .with_label_values(&[n, state.as_str()])
                .set(value as i64);
        }
        m.queue_length.with_label_values(&[n]).set(c.queued as i64);
        m.utilization.with_label_values(&[n]).set(c.utilization());
        m.pool_target.with_label_values(&[n]).set(c.target as i64);
        m.pool_min.with_label_values(&[n]).set(cfg.min as i64);
        m.pool_max.with_label_values(&[n]).set(cfg.max as i64);
    }

    /// Adds an already running, attached container (adoption after a restart).
    pub fn adopt(self: &Arc<Self>, container: String, name: String, conn: Conn, spec_hash: String) {
        let cfg = self.config();
        let mut st = self.state.lock();
        let id = add_member(&mut st, container, name, conn, &cfg, spec_hash, false);
        self.offer(&mut st, id, false);
        self.publish(&st);
    }

    /// Idle members, for the health checker: taken out of rotation while probed.
    pub fn take_for_probe(&self, older_than: Duration) -> Vec<(u64, Conn)> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let ids: Vec<u64> = st
            .idle
            .iter()
            .copied()
            .filter(|id| {
                st.members
                    .get(id)
                    .is_some_and(|m| now.duration_since(m.last_used) >= older_than)
            })
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let m = st.members.get_mut(&id).expect("idle member present");
            m.state = MemberState::Probing;
            out.push((id, m.conn.clone()));
        }
        st.idle.retain(|id| !out.iter().any(|(o, _)| o == id));
        self.publish(&st);
        out
    }

    /// The probe's verdict: back into rotation, or replaced.
    pub fn probed(self: &Arc<Self>, id: u64, healthy: bool) {
        let mut st = self.state.lock();
        if !st.members.contains_key(&id) {
            return;
        }
        if healthy {
            self.offer(&mut st, id, false);
        } else {
            self.retire_locked(&mut st, id, RemoveReason::Unhealthy);
        }
        self.publish(&st);
        drop(st);
        if !healthy {
            self.wake.notify_one();
        }
    }
}

pub fn counts(st: &State) -> Counts {
    let mut c = Counts {
        starting: st.starting,
        retiring: st.retiring,
        unhealthy: st.retiring_unhealthy,
        queued: st.waiters.len(),
        target: st.target,
        ..Default::default()
    };
    for m in st.members.values() {
        match m.state {
            MemberState::Idle => c.idle += 1,
            MemberState::Busy => c.busy += 1,
            MemberState::Probing => c.probing += 1,
            MemberState::Retiring => c.retiring += 1,
        }
    }
    c
}

/// A container's exclusive claim on one container. Dropped without a verdict after its
/// task began (the request was cancelled, the handler panicked), it retires the container:
/// the task may still be running in there.
pub struct Lease {
    pool: Arc<Pool>,
    member: u64,
    pub container: String,
    pub conn: Conn,
    /// The task waited for a container that was started while it waited (no running one
    /// was free). Waiting for a busy container to free up is not a cold start.
    pub cold: bool,
    /// The previous task's files are still in the workdir and /tmp: wipe before use.
    pub dirty: bool,
    task_started: bool,
    outcome: Option<RemoveReason>,
    armed: bool,
}

impl Lease {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// From here on, dropping the lease without [`Lease::finish`] retires the container.
    pub fn begin(&mut self) {
        self.task_started = true;
        self.outcome = Some(RemoveReason::Unhealthy);
    }

    /// The task ended cleanly: the container may serve again.
    pub fn finish(mut self) {
        self.outcome = None;
    }

    /// The container must not serve again (timed out, broken channel).
    pub fn retire(mut self, reason: RemoveReason) {
        self.outcome = Some(reason);
    }

    /// The container leaves the pool for good without being removed (a session takes it).
    pub fn detach(mut self) -> (String, Conn) {
        self.armed = false;
        let mut st = self.pool.state.lock();
        if let Some(m) = st.members.remove(&self.member) {
            st.idle.retain(|i| *i != self.member);
            drop(m);
        }
        self.pool.publish(&st);
        drop(st);
        self.pool.wake.notify_one();
        (self.container.clone(), self.conn.clone())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.pool.name)
            .field("container", &self.container)
            .field("cold", &self.cold)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(
                self.member,
                self.task_started,
                self.dirty,
                self.outcome.take(),
            );
        }
    }
}

/// Makes a running, attached container a member, busy until the caller offers it.
fn add_member(
    st: &mut State,
    container: String,
    name: String,
    conn: Conn,
    cfg: &PoolConfig,
    spec_hash: String,
    extra: bool,
) -> u64 {
    st.next_id += 1;
    let id = st.next_id;
    let now = Instant::now();
    st.members.insert(
        id,
        Member {
            container,
            name,
            conn,
            state: MemberState::Busy,
            created: now,
            last_used: now,
            uses: 0,
            max_age: jitter(cfg.max_age),
            spec_hash,
            extra,
            dirty: false,
        },
    );
    id
}

fn jitter(max_age: Duration) -> Duration {
    // Up to 10% earlier, so containers created together do not all expire together.
    let f = 1.0 - rand::random::<f64>() * 0.1;
    max_age.mul_f64(f)
}

fn short_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn describe_start_error(image: &str, e: RuntimeError) -> String {
    match e {
        RuntimeError::NotFound(m) if m.contains("image") || m.contains(image) => format!(
            "image {image} is not on the engine and cannot be pulled here ({m}); build or load it (scripts/build-demo-image.sh builds warmpool/agent:latest)"
        ),
        other => other.to_string(),
    }
}
