//! One pool: its containers and their states, the FIFO queue of tasks waiting for one, and the
//! lease that hands a container to exactly one task at a time.
//!
//! The pool owns its members: nothing outside this module reads or writes its state. Every
//! claim and hand-off happens in one critical section under the pool's lock (never across an
//! `.await`), so two tasks can never get the same container; a [`Lease`] puts its container
//! back or retires it when dropped, on every path, cancellation included. The reconcile loop
//! (in the supervisor) tells the pool what it should be ([`Desired`]); [`Pool::converge`]
//! decides how with the pure `plan` (state.rs) and carries it out.
//!
//! Files: `state.rs` (bookkeeping and the rules), `acquire.rs` (taking a member, the queue),
//! `lease.rs`, `factory.rs` (container specs, networks, create and connect, adoption),
//! `health.rs` (probes), `wake.rs` (why the loop woke).

mod acquire;
mod factory;
mod health;
mod lease;
mod state;
mod wake;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::PoolConfig;
use crate::exec::Conn;
use crate::metrics::{ContainerState, Metrics, RemoveReason};
use crate::runtime::{ContainerSpec, Runtime};
use lease::Home;
use state::{NewMember, Rules, State};

pub use factory::{reattach, Factory, SHIM_IN_CONTAINER};
pub use health::round_period as health_round_period;
pub use lease::Lease;
pub use state::{Counts, Desired, Failure, History, Plan};
pub use wake::{Wake, Wakes};

/// Creates in flight at once per pool: the engine slows sharply when many start together.
const PARALLEL_CREATES: usize = 3;

/// Why a task got no container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    /// `max_queue` tasks already wait.
    #[error(
        "pool {pool} has {queued} tasks queued, its max_queue; retry later or raise max_queue"
    )]
    QueueFull { pool: String, queued: usize },
    /// No container within `acquire_timeout`; `hint` carries the last start error.
    #[error("no container of pool {pool} became free within acquire_timeout ({timeout:?}){hint}")]
    Timeout {
        pool: String,
        timeout: Duration,
        hint: String,
    },
    /// `on_exhausted = "fail"` and the pool is at `max`.
    #[error("every container of pool {pool} is busy and it is at max ({max}); on_exhausted = \"fail\" refuses at once")]
    Exhausted { pool: String, max: usize },
    /// The pool is closed (shutdown, or a reload removed it).
    #[error("pool {0} is shutting down and takes no new tasks")]
    Closed(String),
    /// The pool is failed (the engine refuses its containers) and has no idle container.
    #[error(
        "pool {pool} is failed: the container engine refuses to start its containers: {}; \
         what to do: {}; it tries one start again every {}, at a reload and when the engine \
         comes back",
        failure.reason,
        failure.hint,
        humantime::format_duration(failure.retry_every)
    )]
    Failed { pool: String, failure: Failure },
}

/// Why a session's own container ([`Pool::start_for_session`]) was not started.
#[derive(Debug, thiserror::Error)]
pub enum SessionStartError {
    /// The pool starts nothing now: it is closed, or failed (the engine refuses its
    /// containers), answered as a pool task would be.
    #[error(transparent)]
    Pool(#[from] AcquireError),
    /// The engine did not create, start or connect it: its words and what to do.
    #[error("{0}")]
    Engine(String),
}

/// The pools of a daemon by name, shared by the supervisor and the sessions.
#[derive(Default)]
pub struct Pools(RwLock<BTreeMap<String, Arc<Pool>>>);

impl Pools {
    /// The pool of that name, if it exists (a reload may have removed it).
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.0.read().get(name).cloned()
    }

    /// Every pool, in name order.
    pub fn list(&self) -> Vec<Arc<Pool>> {
        self.0.read().values().cloned().collect()
    }

    /// Adds (or replaces) a pool under its name.
    pub fn insert(&self, pool: Arc<Pool>) {
        self.0.write().insert(pool.name.clone(), pool);
    }

    /// Takes a pool out; tasks already holding it go on with it.
    pub fn remove(&self, name: &str) -> Option<Arc<Pool>> {
        self.0.write().remove(name)
    }
}

/// One pool of containers of one spec. Shared as `Arc<Pool>`; every method takes `&self`.
pub struct Pool {
    /// The pool's name, as in pools.toml; the `pool` label of every metric.
    pub name: String,
    cfg: RwLock<Arc<PoolConfig>>,
    spec: RwLock<Arc<ContainerSpec>>,
    /// The spec's hash, computed once per config rather than on every release.
    spec_hash: RwLock<Arc<str>>,
    state: Mutex<State>,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
    /// Wakes the pool's reconcile loop early; `wakes` says why.
    notify: Notify,
    wakes: AtomicU8,
    creates: Semaphore,
    /// The pool's background work (starts, removals, probes), so shutdown can join it.
    work: TaskTracker,
    /// The counts as last published, for waiting on them without polling.
    counts: watch::Sender<Counts>,
    me: Weak<Pool>,
}

impl Pool {
    /// A pool with no container yet; its target starts at `max(warm, min)`.
    pub fn new(
        cfg: PoolConfig,
        spec: ContainerSpec,
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        metrics.init_pool(&cfg.name);
        let pool = Arc::new_cyclic(|me| Pool {
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
            notify: Notify::new(),
            wakes: AtomicU8::new(0),
            creates: Semaphore::new(PARALLEL_CREATES),
            work: TaskTracker::new(),
            counts: watch::Sender::new(Counts::default()),
            me: me.clone(),
        });
        pool.publish(&pool.state.lock());
        pool
    }

    fn me(&self) -> Arc<Pool> {
        self.me.upgrade().expect("a pool outlives its own calls")
    }

    /// The pool's current config (a reload may replace it at any time).
    pub fn config(&self) -> Arc<PoolConfig> {
        self.cfg.read().clone()
    }

    /// The container spec new containers are created with.
    pub fn spec(&self) -> Arc<ContainerSpec> {
        self.spec.read().clone()
    }

    /// The hash of [`Pool::spec`]; a member of another hash is stale.
    pub fn spec_hash(&self) -> Arc<str> {
        self.spec_hash.read().clone()
    }

    /// Applies a new config (and spec): the target is clamped to the new bounds at once;
    /// members of another spec are replaced by the loop, surge first. A failed pool is
    /// failed no more: the loop tries its starts again at once.
    pub fn set_config(&self, cfg: PoolConfig, spec: ContainerSpec) {
        let (min, max) = (cfg.min, cfg.max);
        *self.cfg.write() = Arc::new(cfg);
        *self.spec_hash.write() = spec.hash().into();
        *self.spec.write() = Arc::new(spec);
        {
            let mut st = self.state.lock();
            st.target = st.target.clamp(min, max.max(min));
            self.clear_failure_locked(&mut st, "its configuration changed");
            self.publish(&st);
        }
        self.wake(Wake::Config);
    }

    /// Why the pool is failed, if it is: the engine refused its last container start for
    /// good (docs/operations.md, "A failed pool").
    pub fn failure(&self) -> Option<Failure> {
        self.state.lock().failure.clone()
    }

    /// Something that may have fixed a failed pool happened (a reload, the engine back):
    /// it is failed no more and starts again at once, without back-off; if the engine
    /// still refuses, the first start fails it again, and says so once.
    pub fn retry_failed(&self, why: &str) {
        let cleared = {
            let mut st = self.state.lock();
            let cleared = self.clear_failure_locked(&mut st, why);
            self.publish(&st);
            cleared
        };
        if cleared {
            self.wake(Wake::Config);
        }
    }

    /// Clears the failure and the back-off; true when the pool was failed.
    fn clear_failure_locked(&self, st: &mut State, why: &str) -> bool {
        if st.failure.take().is_none() {
            return false;
        }
        st.start_failures = 0;
        st.backoff_until = None;
        tracing::info!(pool = %self.name, "pool no longer failed ({why}); starting containers again");
        true
    }

    /// Raises the pool's floor to `containers` for `duration` (`POST /v1/pools/{pool}/prewarm`),
    /// replacing any earlier floor; 0 clears it. The loop acts on it at once.
    ///
    /// Errors: `containers` above the pool's `max`, as a message naming both and the fix.
    pub fn set_prewarm(&self, containers: usize, duration: Duration) -> Result<(), String> {
        let max = self.config().max;
        if containers > max {
            return Err(format!(
                "containers ({containers}) is above pool {}'s max ({max}): ask for at most {max}, or raise max in pools.toml",
                self.name
            ));
        }
        {
            let mut st = self.state.lock();
            st.prewarm = (containers > 0).then(|| (containers, Instant::now() + duration));
            self.publish(&st);
        }
        self.wake(Wake::Prewarm);
        Ok(())
    }

    /// The pre-warm floor in force now (0 for none), and when it ends; a floor past its end
    /// is cleared here.
    pub fn prewarm_floor(&self) -> (usize, Option<Instant>) {
        let mut st = self.state.lock();
        match st.prewarm {
            Some((n, until)) if Instant::now() < until => (n, Some(until)),
            Some(_) => {
                st.prewarm = None;
                self.publish(&st);
                (0, None)
            }
            None => (0, None),
        }
    }

    /// The pool's counts now.
    pub fn counts(&self) -> Counts {
        self.state.lock().counts()
    }

    /// Waits until the pool's counts satisfy `done`, at most `limit`; false when it did not
    /// happen in time. Woken by every change of the counts, not by polling.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&Counts) -> bool) -> bool {
        let mut rx = self.counts.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|c| done(c)))
            .await
            .is_ok();
        reached
    }

    /// Wakes the pool's reconcile loop now rather than at its next tick.
    pub fn wake(&self, why: Wake) {
        self.wakes.fetch_or(why.bit(), Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Resolves at the next [`Pool::wake`] (or at once if one came since the last call),
    /// with every reason given since.
    pub async fn woken(&self) -> Wakes {
        self.notify.notified().await;
        Wakes::from_bits(self.wakes.swap(0, Ordering::AcqRel))
    }

    /// Where a lease ends: back to idle, or retired ([`state::Member::retire_reason`]). The
    /// workdir is wiped when the container is next leased, not here, so a client's next task
    /// finds its container idle at once.
    fn release(&self, id: u64, used: bool, dirty: bool, verdict: Option<RemoveReason>) {
        let cfg = self.config();
        let spec_hash = self.spec_hash();
        let mut st = self.state.lock();
        let closed = st.closed;
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if used {
            m.uses += 1;
            m.last_used = Instant::now();
            m.last_checked = m.last_used;
        }
        m.dirty = dirty || (used && cfg.reset_workdir && matches!(m.conn, Conn::Shim(_)));
        let rules = Rules {
            spec_hash: &spec_hash,
            max_uses: cfg.max_uses,
            closed,
            now: Instant::now(),
        };
        match verdict.or_else(|| m.retire_reason(&rules)) {
            Some(reason) => {
                self.retire_locked(&mut st, id, reason);
                self.publish(&st);
                drop(st);
                self.wake(Wake::Retired);
            }
            None => {
                self.offer(&mut st, id, false);
                self.publish(&st);
            }
        }
    }

    /// Takes a member out of the pool and removes its container in the background.
    fn retire_locked(&self, st: &mut State, id: u64, reason: RemoveReason) {
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
        let pool = self.me();
        self.work.spawn(async move {
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
    fn spawn_start(&self, extra: bool) {
        let pool = self.me();
        self.work.spawn(async move {
            let _permit = pool.creates.acquire().await;
            {
                let mut st = pool.state.lock();
                // Shut down while this start waited for its turn, or the pool became failed
                // (a start before it was refused for good) and its retry is not due: the
                // engine would refuse this one too, so nothing to create.
                let waiting_retry = st.failure.is_some()
                    && st.backoff_until.is_some_and(|t| Instant::now() < t);
                if st.closed || waiting_retry {
                    st.starting -= 1;
                    pool.publish(&st);
                    return;
                }
            }
            let begun = Instant::now();
            let spec = pool.spec();
            let spec_hash = spec.hash();
            let cfg = pool.config();
            let name = factory::container_name(&pool.name);
            pool.state.lock().creating.insert(name.clone());
            let result = factory::create_and_connect(
                &pool.runtime,
                &pool.metrics,
                &pool.name,
                &name,
                &spec,
                cfg.exec,
            )
            .await;
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
                    if st.failure.take().is_some() {
                        tracing::info!(pool = %pool.name, "pool no longer failed: the engine started a container of it");
                    }
                    let new = NewMember {
                        container,
                        name,
                        conn,
                        spec_hash,
                        extra,
                        history: History::default(),
                    };
                    let id = st.add_member(new, cfg.max_age, cfg.health_check_interval);
                    if st.closed {
                        pool.retire_locked(&mut st, id, RemoveReason::Shutdown);
                    } else {
                        pool.offer(&mut st, id, true);
                    }
                }
                Err(e) => {
                    st.gone.push((name, Instant::now()));
                    match e.refusal {
                        Some((reason, hint)) => pool.refused_locked(&mut st, reason, hint, &cfg),
                        None => {
                            // Not refused: what failed the pool may be gone, so it backs
                            // off as after any failed start (and says so if it was failed).
                            if st.failure.take().is_some() {
                                tracing::info!(pool = %pool.name, error = %e.message, "pool no longer failed: the engine did not refuse its last start, which failed otherwise");
                            }
                            st.start_failures += 1;
                            st.backoff_until =
                                Some(Instant::now() + state::backoff(st.start_failures));
                            tracing::warn!(pool = %pool.name, error = %e.message, "container start failed");
                        }
                    }
                    st.last_start_error = Some(e.message);
                }
            }
            pool.publish(&st);
            drop(st);
            pool.wake(Wake::StartEnded);
        });
    }

    /// A container of this pool made for one session whose workspace is an engine volume
    /// (a remote engine, [`crate::workspace::Home::Volume`]): create → start → greeting of
    /// the pool's spec with `volume` mounted at /workspace and the session's `limits`, named
    /// `name` (a session container's name, which the caller has already made the session's
    /// so the reaper leaves it alone). A warm container cannot get a mount, so this is a cold
    /// start every time the session resumes. When `give_to_user` (the volume is new, empty
    /// and root-owned, or an earlier claim did not get that far), a helper of the same name
    /// first gives it to the task user.
    /// The container is not a member: the session owns it from here.
    ///
    /// Errors: [`SessionStartError::Pool`] when the pool is closed or failed (nothing is
    /// tried); [`SessionStartError::Engine`] when the start failed, and nothing is left
    /// behind (a failed create or start removes what was made, as a warm start does).
    pub async fn start_for_session(
        &self,
        name: &str,
        volume: &str,
        give_to_user: bool,
        limits: &crate::runtime::Limits,
    ) -> Result<(String, Conn), SessionStartError> {
        if self.is_closed() {
            return Err(AcquireError::Closed(self.name.clone()).into());
        }
        if let Some(failure) = self.failure() {
            return Err(AcquireError::Failed {
                pool: self.name.clone(),
                failure,
            }
            .into());
        }
        let pool_spec = self.spec();
        if give_to_user {
            factory::give_volume_to_user(&self.runtime, name, &pool_spec, volume)
                .await
                .map_err(SessionStartError::Engine)?;
        }
        let mut spec = (*pool_spec).clone();
        spec.mounts.push(factory::volume_mount(volume));
        spec.memory_bytes = limits.memory_bytes.or(spec.memory_bytes);
        spec.nano_cpus = limits.nano_cpus.or(spec.nano_cpus);
        spec.pids_limit = limits.pids_limit.unwrap_or(spec.pids_limit);
        let begun = Instant::now();
        let (container, conn) = factory::create_and_connect(
            &self.runtime,
            &self.metrics,
            &self.name,
            name,
            &spec,
            self.config().exec,
        )
        .await
        .map_err(|e| SessionStartError::Engine(e.message))?;
        self.metrics
            .started(&self.name, begun.elapsed().as_secs_f64());
        Ok((container, conn))
    }

    /// The engine refused a start for good: the pool is failed. Said once, at error level,
    /// when it becomes failed or the engine's words change; a periodic retry refused the
    /// same way is only a debug line. It tries one start again every
    /// `health_check_interval`; tasks queued now are answered at once ([`AcquireError::Failed`]).
    fn refused_locked(&self, st: &mut State, reason: String, hint: String, cfg: &PoolConfig) {
        let retry_every = cfg.health_check_interval;
        st.backoff_until = Some(Instant::now() + retry_every);
        let same = st.failure.as_ref().is_some_and(|f| f.reason == reason);
        if same {
            tracing::debug!(pool = %self.name, reason = %reason, "pool still failed: the engine refused the retry the same way");
        } else {
            tracing::error!(
                pool = %self.name,
                reason = %reason,
                what_to_do = %hint,
                retry_every = %humantime::format_duration(retry_every),
                "the container engine refuses to start this pool's containers (or the daemon, for a \
                 pool it cannot run on this engine); the pool is failed: \
                 it does not retry in a loop but tries one start every retry_every, at a reload and \
                 when the engine comes back; its tasks answer 503 pool_failed"
            );
            st.failure = Some(Failure {
                reason,
                hint,
                since: std::time::SystemTime::now(),
                retry_every,
            });
        }
        // Dropping their senders answers the queued tasks; they find the failure.
        st.waiters.clear();
    }

    /// Brings the pool toward `desired`: decides with the pure `plan` (state.rs) under the lock, then
    /// retires and starts what the plan says. Returns the plan, for the caller to log and
    /// meter. A closed pool does nothing.
    pub fn converge(&self, desired: Desired) -> Plan {
        let cfg = self.config();
        let spec_hash = self.spec_hash();
        let mut st = self.state.lock();
        if st.closed {
            return Plan {
                target: st.target,
                ..Plan::default()
            };
        }
        let plan = state::plan(&st, &cfg, &spec_hash, desired, Instant::now());
        for (id, reason) in &plan.retire {
            self.retire_locked(&mut st, *id, *reason);
        }
        st.starting += plan.start;
        for _ in 0..plan.start {
            self.spawn_start(false);
        }
        st.target = plan.target;
        self.publish(&st);
        plan
    }

    /// One round of health probes, in the background: the idle members due, a bounded share
    /// at a time ([`health::take_due`]); each verdict puts its container back or has it
    /// replaced, surge first.
    pub fn check_health(&self) {
        let cfg = self.config();
        let cmd = cfg.health_cmd.clone();
        let timeout = cfg.health_check_timeout;
        let probes = {
            let mut st = self.state.lock();
            let due = health::take_due(
                &mut st,
                Instant::now(),
                cfg.health_check_interval,
                &self.spec_hash(),
            );
            self.publish(&st);
            due
        };
        for (id, conn) in probes {
            let pool = self.me();
            let cmd = cmd.clone();
            self.work.spawn(async move {
                let result = health::probe(&pool.name, &conn, cmd.as_deref(), timeout).await;
                pool.metrics.health_checked(&pool.name, result);
                pool.probed(id, result == crate::metrics::HealthResult::Healthy);
            });
        }
    }

    /// The probe's verdict: back into rotation, or out of it until the loop has started its
    /// replacement and retires it (surge first, like any renewal).
    fn probed(&self, id: u64, healthy: bool) {
        let mut st = self.state.lock();
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if !healthy {
            m.failed_probe = true;
        }
        self.offer(&mut st, id, false);
        self.publish(&st);
    }

    /// Adds an already running, attached container of the current spec (adoption after a
    /// restart), with what it brings: its age, its uses, and that it must be wiped before its
    /// next task ([`History::adopted`]). It enters through [`Pool::offer`] like any other.
    pub fn adopt(&self, container: String, name: String, conn: Conn, history: History) {
        let cfg = self.config();
        let new = NewMember {
            container,
            name,
            conn,
            spec_hash: self.spec_hash().to_string(),
            extra: false,
            history,
        };
        let mut st = self.state.lock();
        let id = st.add_member(new, cfg.max_age, cfg.health_check_interval);
        self.offer(&mut st, id, false);
        self.publish(&st);
    }

    /// The engine answers again: failures from the outage say nothing about it now, and a
    /// refusal before it may be gone (the engine restarted, perhaps with the missing
    /// runtime installed), so a failed pool tries again at once.
    pub fn engine_back(&self) {
        {
            let mut st = self.state.lock();
            self.clear_failure_locked(&mut st, "the container engine is back");
            st.start_failures = 0;
            st.backoff_until = None;
            self.publish(&st);
        }
        self.wake(Wake::Engine);
    }

    /// Containers the pool knows (members, being created, being removed, removed lately),
    /// for the reaper, which took its listing at `listed_at`. What went before the listing
    /// began cannot be in it or a later one, so it is forgotten here.
    pub fn known_containers(&self, listed_at: Instant) -> Vec<String> {
        let mut st = self.state.lock();
        let mut known: Vec<String> = st.members.values().map(|m| m.container.clone()).collect();
        known.extend(st.creating.iter().cloned());
        known.extend(st.removing.iter().cloned());
        known.extend(st.gone.iter().map(|(id, _)| id.clone()));
        st.gone.retain(|(_, at)| *at >= listed_at);
        known
    }

    /// Containers whose removal this pool has in flight (queued behind the daemon's bound
    /// on removals, or in the engine): shutdown waits for them rather than asking again.
    pub fn removing_containers(&self) -> Vec<String> {
        self.state.lock().removing.iter().cloned().collect()
    }

    /// Refuses new tasks and fails the queued ones; running tasks go on.
    pub fn close(&self) {
        {
            let mut st = self.state.lock();
            st.closed = true;
            // Dropping the senders wakes every waiter with "closed".
            st.waiters.clear();
            self.publish(&st);
        }
        self.wake(Wake::Closed);
    }

    /// [`Pool::close`] was called: no new task is taken.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Retires every member, busy ones included (their tasks' leases find them gone).
    pub fn retire_all(&self, reason: RemoveReason) {
        let mut st = self.state.lock();
        let ids: Vec<u64> = st.members.keys().copied().collect();
        for id in ids {
            self.retire_locked(&mut st, id, reason);
        }
        self.publish(&st);
    }

    /// Joins the pool's background work: starts in flight (a closed pool retires what
    /// comes up), removals, probes. For a closed pool; waits at most `limit`, false when
    /// work was still running then.
    pub async fn join_work(&self, limit: Duration) -> bool {
        self.work.close();
        tokio::time::timeout(limit, self.work.wait()).await.is_ok()
    }

    /// Sets every gauge of this pool from the state, in one place.
    fn publish(&self, st: &State) {
        let c = st.counts();
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
            m.set_containers(n, state, value as i64);
        }
        m.set_queue_length(n, c.queued as i64);
        m.set_utilization(n, c.utilization());
        m.set_target(n, c.target as i64);
        m.set_bounds(n, cfg.min as i64, cfg.max as i64);
        m.set_prewarm(n, c.prewarm as i64);
        m.set_failed(n, c.failed);
        self.counts.send_replace(c);
    }
}

impl Home for Pool {
    fn home_name(&self) -> &str {
        &self.name
    }

    fn give_back(
        self: Arc<Self>,
        member: u64,
        used: bool,
        dirty: bool,
        retire: Option<RemoveReason>,
    ) {
        self.release(member, used, dirty, retire);
    }

    fn take_out(self: Arc<Self>, member: u64) {
        {
            let mut st = self.state.lock();
            if st.members.remove(&member).is_some() {
                st.idle.retain(|i| *i != member);
            }
            self.publish(&st);
        }
        self.wake(Wake::Retired);
    }
}
