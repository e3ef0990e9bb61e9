//! Prometheus metrics of the daemon (DESIGN section 3, a contract).
//!
//! Every family lives in one typed [`Metrics`] struct on its own [`Registry`], not the
//! crate's global default registry, so that tests can build as many independent instances
//! as they like and nothing a dependency registers globally leaks into `/metrics`.
//!
//! Label values come from small enums ([`ContainerState`], [`Outcome`], ...) rather than
//! strings: a misspelt state at a call site would silently create a new series that no
//! dashboard or alert looks at, and the enums' `ALL` lists are what lets [`Metrics::init_pool`]
//! and [`Metrics::forget_pool`] touch every series of a pool.
//!
//! Series are labelled by `pool` only, never by container or task id: ids are unbounded and
//! would make the number of series grow without limit.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use labels::{
    Acquisition, ContainerState, HealthResult, Outcome, ReloadResult, RemoveReason, ScaleDirection,
};

mod labels;

/// Buckets for task, queue and acquire times: from well under a millisecond (a warm shim
/// task or a warm acquisition takes about 1 ms) up to the 5-minute default task timeout, so
/// the quantiles that matter on both ends fall inside a bucket rather than off its edge.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Buckets for container creation + start: a cold start is some hundreds of milliseconds
/// and slows to seconds when the engine is busy creating many at once.
const START_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric family of the metrics contract, registered on one private registry.
///
/// Cheap to share: the families are reference-counted internally, so wrap the struct in an
/// `Arc` and update it from wherever a state change happens.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders; holds the families below and the process collector.
    registry: Registry,
    /// `warmpool_containers{pool,state}`.
    containers: IntGaugeVec,
    /// `warmpool_pool_target_containers{pool}`: what the autoscaler wants.
    pool_target: IntGaugeVec,
    /// `warmpool_pool_forecast_containers{pool}`: what the forecast says the pool needs.
    pool_forecast: IntGaugeVec,
    /// `warmpool_pool_min_containers{pool}`.
    pool_min: IntGaugeVec,
    /// `warmpool_pool_max_containers{pool}`.
    pool_max: IntGaugeVec,
    /// `warmpool_pool_utilization_ratio{pool}`: `Counts::utilization`, 0..1.
    utilization: GaugeVec,
    /// `warmpool_queue_length{pool}`: tasks waiting for a container.
    queue_length: IntGaugeVec,
    /// `warmpool_tasks_total{pool,outcome}`.
    tasks_total: IntCounterVec,
    /// `warmpool_task_duration_seconds{pool}`: run time of tasks that ran.
    task_duration: HistogramVec,
    /// `warmpool_queue_wait_seconds{pool}`: time in the queue before a container was free.
    queue_wait: HistogramVec,
    /// `warmpool_acquisitions_total{pool,result}`.
    acquisitions_total: IntCounterVec,
    /// `warmpool_acquire_seconds{pool}`: time to get a container, warm or cold.
    acquire_seconds: HistogramVec,
    /// `warmpool_container_start_seconds{pool}`: create + start until ready.
    container_start: HistogramVec,
    /// `warmpool_workspace_resume_seconds{pool}`: bringing a persistent workspace into the
    /// session's container at a claim.
    workspace_resume: HistogramVec,
    /// `warmpool_containers_created_total{pool}`.
    containers_created: IntCounterVec,
    /// `warmpool_containers_removed_total{pool,reason}`.
    containers_removed: IntCounterVec,
    /// `warmpool_health_checks_total{pool,result}`.
    health_checks: IntCounterVec,
    /// `warmpool_scale_events_total{pool,direction}`.
    scale_events: IntCounterVec,
    /// `warmpool_sessions{pool}`: live sessions.
    sessions: IntGaugeVec,
    /// `warmpool_pool_prewarm_containers{pool}`: the pre-warm floor in force, 0 for none.
    prewarm: IntGaugeVec,
    /// `warmpool_pool_failed{pool}`: 1 while the engine refuses the pool's containers.
    pool_failed: IntGaugeVec,
    /// `warmpool_workspaces{pool}`: persistent workspaces kept.
    workspaces: IntGaugeVec,
    /// `warmpool_workspace_bytes{pool}`: bytes they hold.
    workspace_bytes: IntGaugeVec,
    /// `warmpool_config_reloads_total{result}`.
    config_reloads: IntCounterVec,
    /// `warmpool_engine_up`: 1 when the container engine answers.
    engine_up: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds and registers every family.
    ///
    /// Panics only if two families share a name, which is a bug in this file that the unit
    /// tests catch, so there is no `Result` to thread through the daemon's start-up.
    pub fn new() -> Metrics {
        let registry = Registry::new();

        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        }
        fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        }
        fn histogram_vec(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            reg(r, HistogramVec::new(opts, &["pool"]).expect("valid metric"))
        }

        let r = &registry;
        let m = Metrics {
            containers: gauge_vec(
                r,
                "warmpool_containers",
                "Containers of a pool by lifecycle state.",
                &["pool", "state"],
            ),
            pool_target: gauge_vec(
                r,
                "warmpool_pool_target_containers",
                "Number of containers the autoscaler currently wants for the pool.",
                &["pool"],
            ),
            pool_forecast: gauge_vec(
                r,
                "warmpool_pool_forecast_containers",
                "Containers the forecast says the pool needs for the next interval (held for forecast_window), whether or not predictive acts on it.",
                &["pool"],
            ),
            pool_min: gauge_vec(
                r,
                "warmpool_pool_min_containers",
                "Configured minimum number of containers of the pool.",
                &["pool"],
            ),
            pool_max: gauge_vec(
                r,
                "warmpool_pool_max_containers",
                "Configured maximum number of containers of the pool.",
                &["pool"],
            ),
            utilization: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "warmpool_pool_utilization_ratio",
                        "Busy containers plus queued tasks, divided by live containers of the pool, capped at 1.",
                    ),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            queue_length: gauge_vec(
                r,
                "warmpool_queue_length",
                "Tasks waiting for a free container of the pool.",
                &["pool"],
            ),
            tasks_total: counter_vec(
                r,
                "warmpool_tasks_total",
                "Tasks finished, by outcome (rejected tasks never ran).",
                &["pool", "outcome"],
            ),
            task_duration: histogram_vec(
                r,
                "warmpool_task_duration_seconds",
                "Run time of tasks that ran, from spawn to exit.",
                LATENCY_BUCKETS,
            ),
            queue_wait: histogram_vec(
                r,
                "warmpool_queue_wait_seconds",
                "Time tasks waited in the pool's queue for a container.",
                LATENCY_BUCKETS,
            ),
            acquisitions_total: counter_vec(
                r,
                "warmpool_acquisitions_total",
                "Containers handed to tasks, warm (already running) or cold (created for it).",
                &["pool", "result"],
            ),
            acquire_seconds: histogram_vec(
                r,
                "warmpool_acquire_seconds",
                "Time from a task's arrival until it holds a container.",
                LATENCY_BUCKETS,
            ),
            container_start: histogram_vec(
                r,
                "warmpool_container_start_seconds",
                "Time to create and start a container until it is ready for tasks.",
                START_BUCKETS,
            ),
            workspace_resume: histogram_vec(
                r,
                "warmpool_workspace_resume_seconds",
                "Time to bring a persistent session's workspace into its container at a claim: a bind mount (or renames) into a warm container, or a container created with its volume on a remote engine.",
                LATENCY_BUCKETS,
            ),
            containers_created: counter_vec(
                r,
                "warmpool_containers_created_total",
                "Containers created for the pool.",
                &["pool"],
            ),
            containers_removed: counter_vec(
                r,
                "warmpool_containers_removed_total",
                "Containers removed from the pool, by reason.",
                &["pool", "reason"],
            ),
            health_checks: counter_vec(
                r,
                "warmpool_health_checks_total",
                "Health checks of the pool's containers, by result.",
                &["pool", "result"],
            ),
            scale_events: counter_vec(
                r,
                "warmpool_scale_events_total",
                "Autoscaler changes of the pool's target, by direction.",
                &["pool", "direction"],
            ),
            sessions: gauge_vec(
                r,
                "warmpool_sessions",
                "Live sessions of the pool.",
                &["pool"],
            ),
            prewarm: gauge_vec(
                r,
                "warmpool_pool_prewarm_containers",
                "Pre-warm floor of the pool asked through the API, 0 when none is in force.",
                &["pool"],
            ),
            pool_failed: gauge_vec(
                r,
                "warmpool_pool_failed",
                "1 while the pool is failed: the engine refused its last container start for good; 0 otherwise.",
                &["pool"],
            ),
            workspaces: gauge_vec(
                r,
                "warmpool_workspaces",
                "Persistent session workspaces of the pool kept on the host.",
                &["pool"],
            ),
            workspace_bytes: gauge_vec(
                r,
                "warmpool_workspace_bytes",
                "Bytes held by the pool's persistent session workspaces.",
                &["pool"],
            ),
            config_reloads: counter_vec(
                r,
                "warmpool_config_reloads_total",
                "Reloads of pools.toml, by result.",
                &["result"],
            ),
            engine_up: reg(
                r,
                IntGauge::new(
                    "warmpool_engine_up",
                    "1 when the container engine answers, 0 when it does not.",
                )
                .expect("valid metric"),
            ),
            registry,
        };

        // Pool-independent series exist from the start, so rate() and alerts see them.
        for result in ReloadResult::ALL {
            m.config_reloads.with_label_values(&[result.as_str()]);
        }

        // process_* (CPU, memory, open fds) tell a leak in the daemon itself apart from a
        // problem in the pools. The collector only exists on Linux.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");

        m
    }

    /// The registry in the Prometheus text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would mean malformed families,
        // which `new` cannot produce, so an empty page is an acceptable fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates every series of `pool` at 0: every state, outcome, result, reason and
    /// direction, and the histograms.
    ///
    /// Series that appear only at their first event make `rate()` miss that first increase
    /// and leave dashboard panels and alerts empty ("no data" instead of 0) until then.
    pub fn init_pool(&self, pool: &str) {
        for state in ContainerState::ALL {
            self.containers.with_label_values(&[pool, state.as_str()]);
        }
        for outcome in Outcome::ALL {
            self.tasks_total
                .with_label_values(&[pool, outcome.as_str()]);
        }
        for result in Acquisition::ALL {
            self.acquisitions_total
                .with_label_values(&[pool, result.as_str()]);
        }
        for reason in RemoveReason::ALL {
            self.containers_removed
                .with_label_values(&[pool, reason.as_str()]);
        }
        for result in HealthResult::ALL {
            self.health_checks
                .with_label_values(&[pool, result.as_str()]);
        }
        for direction in ScaleDirection::ALL {
            self.scale_events
                .with_label_values(&[pool, direction.as_str()]);
        }
        for g in self.pool_gauges() {
            g.with_label_values(&[pool]);
        }
        self.utilization.with_label_values(&[pool]);
        self.containers_created.with_label_values(&[pool]);
        for h in self.pool_histograms() {
            h.with_label_values(&[pool]);
        }
    }

    /// Removes every series of `pool`, for a pool that a reload removed: otherwise its last
    /// gauge values would stay on the dashboard (and in alerts) forever.
    ///
    /// Call it after the pool's last container and task are gone; a later update for the
    /// pool would create its series again.
    pub fn forget_pool(&self, pool: &str) {
        // Removing a series that does not exist is not an error worth reporting here.
        for state in ContainerState::ALL {
            let _ = self.containers.remove_label_values(&[pool, state.as_str()]);
        }
        for outcome in Outcome::ALL {
            let _ = self
                .tasks_total
                .remove_label_values(&[pool, outcome.as_str()]);
        }
        for result in Acquisition::ALL {
            let _ = self
                .acquisitions_total
                .remove_label_values(&[pool, result.as_str()]);
        }
        for reason in RemoveReason::ALL {
            let _ = self
                .containers_removed
                .remove_label_values(&[pool, reason.as_str()]);
        }
        for result in HealthResult::ALL {
            let _ = self
                .health_checks
                .remove_label_values(&[pool, result.as_str()]);
        }
        for direction in ScaleDirection::ALL {
            let _ = self
                .scale_events
                .remove_label_values(&[pool, direction.as_str()]);
        }
        for g in self.pool_gauges() {
            let _ = g.remove_label_values(&[pool]);
        }
        let _ = self.utilization.remove_label_values(&[pool]);
        let _ = self.containers_created.remove_label_values(&[pool]);
        for h in self.pool_histograms() {
            let _ = h.remove_label_values(&[pool]);
        }
    }

    /// The integer gauges labelled by `pool` alone, so init and forget cannot miss one.
    fn pool_gauges(&self) -> [&IntGaugeVec; 10] {
        [
            &self.pool_target,
            &self.pool_forecast,
            &self.pool_min,
            &self.pool_max,
            &self.queue_length,
            &self.sessions,
            &self.prewarm,
            &self.pool_failed,
            &self.workspaces,
            &self.workspace_bytes,
        ]
    }

    /// The histograms (all labelled by `pool` alone).
    fn pool_histograms(&self) -> [&HistogramVec; 5] {
        [
            &self.task_duration,
            &self.queue_wait,
            &self.acquire_seconds,
            &self.container_start,
            &self.workspace_resume,
        ]
    }

    /// Sets how many of the pool's containers are in `state`.
    pub fn set_containers(&self, pool: &str, state: ContainerState, n: i64) {
        self.containers
            .with_label_values(&[pool, state.as_str()])
            .set(n);
    }

    /// Sets the pool's configured bounds (at start and after a reload).
    pub fn set_bounds(&self, pool: &str, min: i64, max: i64) {
        self.pool_min.with_label_values(&[pool]).set(min);
        self.pool_max.with_label_values(&[pool]).set(max);
    }

    /// Sets the autoscaler's current target for the pool.
    pub fn set_target(&self, pool: &str, target: i64) {
        self.pool_target.with_label_values(&[pool]).set(target);
    }

    /// Sets what the forecast says the pool needs (`warmpool_pool_forecast_containers`).
    pub fn set_forecast(&self, pool: &str, n: i64) {
        self.pool_forecast.with_label_values(&[pool]).set(n);
    }

    /// The pool's cumulative demand as counted here, for the forecast: arrivals (tasks that
    /// got a container or were refused), tasks that ran and their run time, container
    /// starts and their time.
    pub fn demand(&self, pool: &str) -> crate::scaling::Demand {
        let acquired: u64 = Acquisition::ALL
            .iter()
            .map(|a| {
                self.acquisitions_total
                    .with_label_values(&[pool, a.as_str()])
                    .get()
            })
            .sum();
        let rejected = self
            .tasks_total
            .with_label_values(&[pool, Outcome::Rejected.as_str()])
            .get();
        let tasks = self.task_duration.with_label_values(&[pool]);
        let starts = self.container_start.with_label_values(&[pool]);
        crate::scaling::Demand {
            arrivals: acquired + rejected,
            finished: tasks.get_sample_count(),
            task_seconds: tasks.get_sample_sum(),
            starts: starts.get_sample_count(),
            start_seconds: starts.get_sample_sum(),
        }
    }

    /// Sets the pool's utilization, `(busy + queued) / live` capped at 1 (see
    /// `scaling::utilization`).
    pub fn set_utilization(&self, pool: &str, ratio: f64) {
        self.utilization.with_label_values(&[pool]).set(ratio);
    }

    /// Sets how many tasks wait in the pool's queue.
    pub fn set_queue_length(&self, pool: &str, n: i64) {
        self.queue_length.with_label_values(&[pool]).set(n);
    }

    /// Sets the pool's pre-warm floor (0 when none is in force).
    pub fn set_prewarm(&self, pool: &str, n: i64) {
        self.prewarm.with_label_values(&[pool]).set(n);
    }

    /// Sets whether the pool is failed (the engine refuses its containers): 1 or 0.
    pub fn set_failed(&self, pool: &str, failed: bool) {
        self.pool_failed
            .with_label_values(&[pool])
            .set(i64::from(failed));
    }

    /// Sets the pool's persistent workspaces and the bytes they hold.
    pub fn set_workspaces(&self, pool: &str, n: i64, bytes: i64) {
        self.workspaces.with_label_values(&[pool]).set(n);
        self.workspace_bytes.with_label_values(&[pool]).set(bytes);
    }

    /// Sets how many sessions of the pool are live.
    pub fn set_sessions(&self, pool: &str, n: i64) {
        self.sessions.with_label_values(&[pool]).set(n);
    }

    /// Counts a finished task and records its run time.
    ///
    /// The duration of a `Rejected` task is ignored: it never ran, and a crowd of zeros
    /// would drag the duration quantiles down exactly when the pool is overloaded.
    pub fn task_done(&self, pool: &str, outcome: Outcome, seconds: f64) {
        self.tasks_total
            .with_label_values(&[pool, outcome.as_str()])
            .inc();
        if outcome != Outcome::Rejected {
            self.task_duration
                .with_label_values(&[pool])
                .observe(seconds);
        }
    }

    /// Counts a task refused before it ran (queue full, acquire timeout, shutting down).
    pub fn task_rejected(&self, pool: &str) {
        self.task_done(pool, Outcome::Rejected, 0.0);
    }

    /// Records how long a task waited in the queue (0 when a container was free at once).
    /// Records how long bringing a session's workspace into its container took (a claim of
    /// a `session_workspace = "persistent"` pool's session), in seconds.
    pub fn workspace_resumed(&self, pool: &str, seconds: f64) {
        self.workspace_resume
            .with_label_values(&[pool])
            .observe(seconds);
    }

    pub fn queue_waited(&self, pool: &str, seconds: f64) {
        self.queue_wait.with_label_values(&[pool]).observe(seconds);
    }

    /// Counts a container handed to a task and records how long getting it took.
    pub fn acquired(&self, pool: &str, how: Acquisition, seconds: f64) {
        self.acquisitions_total
            .with_label_values(&[pool, how.as_str()])
            .inc();
        self.acquire_seconds
            .with_label_values(&[pool])
            .observe(seconds);
    }

    /// Counts a container created for the pool (before it is started, so failed starts count).
    pub fn created(&self, pool: &str) {
        self.containers_created.with_label_values(&[pool]).inc();
    }

    /// Records how long a container took from create to ready.
    pub fn started(&self, pool: &str, seconds: f64) {
        self.container_start
            .with_label_values(&[pool])
            .observe(seconds);
    }

    /// Counts a container removed from the pool.
    pub fn removed(&self, pool: &str, reason: RemoveReason) {
        self.containers_removed
            .with_label_values(&[pool, reason.as_str()])
            .inc();
    }

    /// Counts one health check of one of the pool's containers.
    pub fn health_checked(&self, pool: &str, result: HealthResult) {
        self.health_checks
            .with_label_values(&[pool, result.as_str()])
            .inc();
    }

    /// Counts one change of the pool's target by the autoscaler.
    pub fn scaled(&self, pool: &str, direction: ScaleDirection) {
        self.scale_events
            .with_label_values(&[pool, direction.as_str()])
            .inc();
    }

    /// Counts one reload of pools.toml.
    pub fn reloaded(&self, result: ReloadResult) {
        self.config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Records whether the container engine answered its last probe.
    pub fn set_engine_up(&self, up: bool) {
        self.engine_up.set(i64::from(up));
    }
}

#[cfg(test)]
mod tests;
