//! Owns the pools: cleans up after a previous run, warms each pool, keeps it converged with
//! one level-triggered reconcile loop per pool, routes tasks and sessions, and shuts
//! everything down.
//!
//! The supervisor never touches a pool's members: each loop observes the pool's counts,
//! decides a target with [`scaling::decide`], and asks the pool to converge to it (kube-rs'
//! reconcile → action, with the pool carrying the action out). Files: `adopt.rs` (a previous
//! run's containers, the reaper), `reload.rs` (applying a new config), `shutdown.rs`.

mod adopt;
mod reload;
mod shutdown;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PoolConfig};
use crate::exec::TaskEvent;
use crate::metrics::{Metrics, ScaleDirection};
use crate::pool::{Counts, Desired, Factory, Pool, Pools, Wakes};
use crate::runtime::{ContainerSpec, Runtime};
use crate::scaling;
use crate::session::{Session, SessionError, SessionInfo, Sessions};

pub use crate::pool::SHIM_IN_CONTAINER;
pub use crate::task::{SubmitError, TaskReport, TaskRequest};
pub use shutdown::{confirm_pause, confirm_wait_over, Leftovers, CONFIRM_MAX, CONFIRM_TIMEOUT};

/// Why a pool's reconcile ran: logged with what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The loop's first look, when the pool was created.
    Start,
    /// `min(scale_interval, health_check_interval / 20)` passed.
    Tick,
    /// The pool woke its loop, for these reasons.
    Woken(Wakes),
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

/// The daemon's core: pools, sessions, their loops, and the engine they run on. Built by
/// [`Supervisor::new`], started by [`Supervisor::start`], stopped by `shutdown`.
pub struct Supervisor {
    /// Random per run; labels every container this run creates.
    pub daemon_id: String,
    /// The installation this daemon belongs to (`WARMPOOL_INSTANCE`, default "default").
    pub instance: String,
    /// The container engine, removals bounded ([`crate::runtime::bounded`]).
    pub runtime: Arc<dyn Runtime>,
    /// The daemon's metrics, rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    pools: Arc<Pools>,
    factory: Factory,
    engine_up: AtomicBool,
    /// Set once every configured pool exists; before that the daemon is not ready.
    started: AtomicBool,
    /// Cancelled when shutdown begins: every loop spawned at start ends on it.
    stop: CancellationToken,
    /// The loops spawned at start (and by reloads), joined at shutdown.
    loops: TaskTracker,
    /// Every task in flight holds a clone; shutdown drops this one and waits for the channel
    /// to close, which is "every task is done" (mini-redis' shutdown_complete).
    tasks_tx: parking_lot::Mutex<Option<mpsc::Sender<()>>>,
    tasks_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// The live sessions.
    pub sessions: Sessions,
    reload_lock: tokio::sync::Mutex<()>,
    /// The wall-clock time at a tokio instant: schedules are read on this clock, so a
    /// simulation under paused time can say what time of day its trace starts at.
    wall_origin: parking_lot::Mutex<(Instant, chrono::DateTime<chrono::Utc>)>,
    /// `[server] trace_file`: where every task that ran is recorded, when set.
    trace: parking_lot::RwLock<Option<Arc<crate::simulate::record::TraceRecorder>>>,
}

impl Supervisor {
    /// A supervisor with no pool yet; `shim_path` is the host's shim binary, `instance` the
    /// installation (`WARMPOOL_INSTANCE`), `max_sessions` the bound on live sessions.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
        shim_path: Option<PathBuf>,
        instance: &str,
        max_sessions: usize,
    ) -> Arc<Supervisor> {
        let daemon_id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        // One bound on removals for everything that shares this engine (runtime/bounded.rs).
        let runtime: Arc<dyn Runtime> = Arc::new(crate::runtime::bounded::Bounded::new(runtime));
        let pools = Arc::new(Pools::default());
        let (tasks_tx, tasks_rx) = mpsc::channel(1);
        Arc::new(Supervisor {
            factory: Factory::new(
                runtime.clone(),
                daemon_id.clone(),
                instance.to_string(),
                shim_path,
            ),
            sessions: Sessions::new(
                pools.clone(),
                runtime.clone(),
                metrics.clone(),
                max_sessions,
            ),
            daemon_id,
            instance: instance.to_string(),
            runtime,
            metrics,
            pools,
            engine_up: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            loops: TaskTracker::new(),
            tasks_tx: parking_lot::Mutex::new(Some(tasks_tx)),
            tasks_rx: tokio::sync::Mutex::new(tasks_rx),
            reload_lock: tokio::sync::Mutex::new(()),
            wall_origin: parking_lot::Mutex::new((Instant::now(), chrono::Utc::now())),
            trace: parking_lot::RwLock::new(None),
        })
    }

    /// Says that the tokio instant `now` is the wall-clock time `wall` (the simulator: the
    /// trace's start).
    pub fn set_wall_clock(&self, wall: chrono::DateTime<chrono::Utc>) {
        *self.wall_origin.lock() = (Instant::now(), wall);
    }

    /// The wall-clock time now, on the supervisor's clock (see [`Supervisor::set_wall_clock`]).
    pub fn wall_clock(&self) -> chrono::DateTime<chrono::Utc> {
        let (at, wall) = *self.wall_origin.lock();
        wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
    }

    /// Records every task that runs from now on in `recorder` (`[server] trace_file`).
    pub fn set_trace_recorder(
        &self,
        recorder: Option<Arc<crate::simulate::record::TraceRecorder>>,
    ) {
        *self.trace.write() = recorder;
    }

    /// The pool of that name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, in name order.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.list()
    }

    /// Every configured pool exists (start-up is over).
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// The engine answered its last ping.
    pub fn engine_up(&self) -> bool {
        self.engine_up.load(Ordering::Acquire)
    }

    fn set_engine_up(&self, up: bool) {
        self.engine_up.store(up, Ordering::Release);
        self.metrics.set_engine_up(up);
    }

    /// Ready when the engine answers, no pool is failed and every pool has at least `min`
    /// containers up.
    ///
    /// Errors: why not, for `/readyz`; every failed pool is named, with the engine's words.
    pub fn ready(&self) -> Result<(), String> {
        if !self.is_started() {
            return Err("the daemon is still starting (cleaning up, creating pools)".into());
        }
        if !self.engine_up() {
            return Err("the container engine does not answer".into());
        }
        let failed: Vec<String> = self
            .pools()
            .iter()
            .filter_map(|p| {
                p.failure().map(|f| {
                    format!(
                        "pool {} is failed: the container engine refuses to start its containers: {}; what to do: {}",
                        p.name, f.reason, f.hint
                    )
                })
            })
            .collect();
        if !failed.is_empty() {
            return Err(failed.join(" | "));
        }
        for pool in self.pools() {
            let up = pool.counts().up();
            let min = pool.config().min;
            if up < min {
                return Err(format!(
                    "pool {} has {up} of its min {min} containers up",
                    pool.name
                ));
            }
        }
        Ok(())
    }

    /// The container spec a pool's config asks for.
    pub fn container_spec(&self, cfg: &PoolConfig) -> ContainerSpec {
        self.factory.container_spec(cfg)
    }

    /// Overrides the engine address that decides where persistent workspaces live (host
    /// directories for a local engine, engine volumes for a remote one); before
    /// [`Supervisor::start`]. The daemon's `[docker] host` otherwise; tests play a remote
    /// engine with it.
    pub fn set_engine_host(&self, host: &str) {
        self.factory.set_engine_host(host);
    }

    /// The bridge network of an `isolated` pool.
    pub fn isolated_network(&self, pool: &str) -> String {
        self.factory.isolated_network(pool)
    }

    /// Creates networks and pools, takes back what a previous run left that still fits
    /// (idle containers of the same spec, live sessions) and removes the rest, then starts
    /// the loops. Waits for the engine when it is not there yet.
    ///
    /// Errors: a pool's network cannot be set up.
    pub async fn start(self: &Arc<Self>, config: &Config) -> anyhow::Result<()> {
        self.wait_for_engine().await;
        let leftovers = self.list_ours().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not list the containers a previous run left; none is adopted now, and the reaper removes them within health_check_interval");
            Vec::new()
        });
        for cfg in config.pools.values() {
            self.create_pool(cfg.clone()).await?;
        }
        self.adopt_or_remove(leftovers).await;
        self.sessions.record_unrecorded_volumes().await;
        self.sessions.restore_workspaces();
        for pool in self.pools() {
            self.spawn_pool_loop(pool);
        }
        self.started.store(true, Ordering::Release);
        let sup = self.clone();
        self.loops.spawn(async move { sup.watch_engine().await });
        let sup = self.clone();
        self.loops.spawn(async move { sup.reap_loop().await });
        self.loops
            .spawn(self.sessions.clone().reap_idle(self.stop.clone()));
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

    fn spawn_pool_loop(self: &Arc<Self>, pool: Arc<Pool>) {
        let sup = self.clone();
        self.loops.spawn(async move { sup.pool_loop(pool).await });
    }

    /// One pool's level-triggered loop: wake on a tick or on demand, look, converge.
    async fn pool_loop(self: Arc<Self>, pool: Arc<Pool>) {
        let mut memory = scaling::Memory {
            target: pool.counts().target,
            low_since: None,
        };
        let mut forecaster = scaling::Forecaster::default();
        // Probe rounds run often, each taking the idle members due (pool/health.rs), so
        // probes are spread over the interval.
        let round = crate::pool::health_round_period;
        let mut next_health = Instant::now() + round(pool.config().health_check_interval);
        let mut next_scale = Instant::now();
        let mut cause = Cause::Start;
        let mut prewarm_was = 0;
        loop {
            let cfg = pool.config();
            if self.stop.is_cancelled() || pool.is_closed() {
                return;
            }
            // Utilization is judged every scale_interval; queued tasks are acted on at once.
            let look = Instant::now() >= next_scale;
            if look {
                next_scale = Instant::now() + cfg.scale_interval;
            }
            let (prewarm, prewarm_until) = pool.prewarm_floor();
            memory = self.reconcile(
                &pool,
                &cfg,
                memory,
                &mut forecaster,
                look,
                cause,
                (prewarm, prewarm_was),
            );
            prewarm_was = prewarm;
            if Instant::now() >= next_health {
                next_health = Instant::now() + round(cfg.health_check_interval);
                pool.check_health();
            }
            let mut tick = cfg.scale_interval.min(round(cfg.health_check_interval));
            // A pre-warm floor falls back when it ends, not at the next tick after.
            if let Some(until) = prewarm_until {
                tick = tick.min(until.saturating_duration_since(Instant::now()));
            }
            cause = tokio::select! {
                _ = tokio::time::sleep(tick) => Cause::Tick,
                why = pool.woken() => Cause::Woken(why),
                _ = self.stop.cancelled() => return,
            };
        }
    }

    /// Observe → decide → converge: reads the pool's counts, lets the autoscaler decide a
    /// target (every scale_interval, or at once when tasks queue), raises it to the floor of
    /// the policies (spare, schedule, forecast; at every look and wake-up), and has the pool
    /// converge to it. Each step is logged and metered. `prewarm` is the pre-warm floor now
    /// and at the previous look (`POST /v1/pools/{pool}/prewarm`).
    #[allow(clippy::too_many_arguments)]
    fn reconcile(
        &self,
        pool: &Pool,
        cfg: &PoolConfig,
        memory: scaling::Memory,
        forecaster: &mut scaling::Forecaster,
        look: bool,
        cause: Cause,
        (prewarm, prewarm_was): (usize, usize),
    ) -> scaling::Memory {
        // Observe.
        let c = pool.counts();
        // The policies' floor. The forecast is computed (and shown) even when `predictive`
        // is off, so an operator can watch it before turning it on.
        let now = Instant::now();
        let params = scaling::ForecastParams {
            hold: cfg.forecast_window,
            ..Default::default()
        };
        forecaster.observe(now, self.metrics.demand(&pool.name), &params);
        let forecast = forecaster.forecast(now, &params);
        self.metrics.set_forecast(&pool.name, forecast as i64);
        let lead = cfg.scale_interval + Duration::from_secs_f64(forecaster.create_time());
        let floor = scaling::policy_floor(
            scaling::spare_floor(c.busy, c.queued, cfg.spare),
            scaling::schedule_floor(&cfg.schedule, self.wall_clock(), lead),
            if cfg.predictive { forecast } else { 0 },
            cfg.min,
            cfg.max,
        );
        let obs = scaling::Observation {
            busy: c.busy,
            live: c.live(),
            queued: c.queued,
            min: cfg.min,
            max: cfg.max,
            scale_up_threshold: cfg.scale_up_threshold,
            scale_down_threshold: cfg.scale_down_threshold,
            floor,
            shrink_to_forecast: cfg.predictive,
        };
        tracing::trace!(pool = %pool.name, ?cause, ?c, "observed");
        // The pool's target wins over ours: a reload may have clamped it.
        let memory = scaling::Memory {
            target: c.target,
            ..memory
        };
        // Decide.
        let (memory, step) = if look || c.queued > 0 {
            scaling::decide(
                &obs,
                memory,
                Instant::now(),
                scaling::stabilization_window(cfg.scale_interval),
            )
        } else {
            (memory, None)
        };
        // The pre-warm floor, a separate input of the pure decision: the target rises to it
        // at once, and falls back to what demand and the policies ask when it ends.
        let (mut memory, step) = match scaling::floor(&obs, memory, prewarm, prewarm_was) {
            (floored, Some(s)) => (floored, Some(s)),
            (floored, None) => (floored, step),
        };
        if floor > memory.target {
            memory.target = floor;
            memory.low_since = None;
        }
        // One event per change of the target, whichever rule changed it.
        let step = match memory.target.cmp(&c.target) {
            std::cmp::Ordering::Greater => Some(scaling::Step::Up),
            std::cmp::Ordering::Less if step.is_some() => Some(scaling::Step::Down),
            _ => None,
        };
        if let Some(step) = step {
            let dir = match step {
                scaling::Step::Up => ScaleDirection::Up,
                scaling::Step::Down => ScaleDirection::Down,
            };
            self.metrics.scaled(&pool.name, dir);
            tracing::info!(pool = %pool.name, from = c.target, to = memory.target, "scaling {}", dir.as_str());
        }
        // Converge.
        let plan = pool.converge(Desired {
            target: memory.target,
            engine_up: self.engine_up(),
            // idle_timeout keeps the highest floor in force, the policies' or a pre-warm's.
            floor: floor.max(prewarm.min(cfg.max)),
        });
        // The pool chose to be smaller (idle_timeout): that lowers the target, so it is a
        // scale down like the autoscaler's, counted the same way.
        for (from, to) in &plan.lowered {
            self.metrics.scaled(&pool.name, ScaleDirection::Down);
            tracing::info!(pool = %pool.name, from, to, "scaling down (idle_timeout)");
        }
        memory.target = plan.target;
        if !plan.retire.is_empty() || plan.start > 0 {
            tracing::debug!(pool = %pool.name, ?cause, utilization = c.utilization(), target = plan.target, retired = ?plan.retire, started = plan.start, "reconciled");
        }
        memory
    }

    /// Pings the engine; on an outage marks it down (readyz fails, starts pause) and wakes
    /// every pool when it is back so they rebuild.
    async fn watch_engine(self: Arc<Self>) {
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
                        pool.engine_back();
                    } else {
                        pool.wake(crate::pool::Wake::Engine);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(if up { 5 } else { 1 })) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// A token held for as long as a task is in flight; `None` once shutdown began.
    fn task_token(&self) -> Option<mpsc::Sender<()>> {
        self.tasks_tx.lock().clone()
    }

    /// Runs one task on a pool: queue, claim, run, and give the container back or retire it.
    ///
    /// Errors: see [`SubmitError`].
    pub async fn submit(
        &self,
        pool_name: &str,
        request: TaskRequest,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SubmitError> {
        let _in_flight = self.task_token();
        let arrived = Instant::now();
        let pool = self
            .pool(pool_name)
            .ok_or_else(|| SubmitError::UnknownPool(pool_name.to_string()))?;
        let result = crate::task::submit(&self.metrics, pool, self.engine_up(), request, out).await;
        if let (Ok(report), Some(trace)) = (&result, self.trace.read().as_ref()) {
            trace.record(pool_name, arrived, report.run);
        }
        result
    }

    /// Creates a session, or returns the live one of that id (`false` = it existed).
    ///
    /// Errors: see [`Sessions::create`].
    pub fn create_session(
        &self,
        pool: &str,
        id: Option<String>,
        idle_timeout: Option<Duration>,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        self.sessions.create(pool, id, idle_timeout)
    }

    /// Ends a session: runs `session_end_command`, removes its container.
    ///
    /// Errors: see [`Sessions::end`].
    pub async fn end_session(&self, id: &str) -> Result<SessionInfo, SessionError> {
        self.sessions.end(id).await
    }

    /// Runs a task in a session's container.
    ///
    /// Errors: see [`Sessions::run_task`].
    pub async fn session_task(
        &self,
        pool: &str,
        id: &str,
        request: TaskRequest,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SessionError> {
        let _in_flight = self.task_token();
        self.sessions.run_task(pool, id, request, out).await
    }

    /// Runs a helper command in a session's container (file transfer).
    ///
    /// Errors: see [`Sessions::exec`].
    pub async fn session_exec(
        &self,
        id: &str,
        argv: Vec<String>,
        stdin: bytes::Bytes,
        max_output: u64,
    ) -> Result<(crate::exec::TaskExit, Vec<u8>, Vec<u8>), SessionError> {
        self.sessions.exec(id, argv, stdin, max_output).await
    }

    /// Pool status for the API.
    pub fn status(&self) -> Vec<(Arc<PoolConfig>, Counts)> {
        self.pools()
            .iter()
            .map(|p| (p.config(), p.counts()))
            .collect()
    }
}
