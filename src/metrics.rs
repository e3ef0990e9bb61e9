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

/// Defines a label enum with `as_str` and an `ALL` list in one place, so adding a variant
/// can never forget one of the two.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in a fixed order; used to pre-create and to remove series.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value exactly as the metrics contract spells it.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// `state` label of `warmpool_containers`: where a pool's containers are in their lifecycle.
    ContainerState {
        /// Created, not yet ready for tasks.
        Starting => "starting",
        /// Ready and free (a health probe in flight included: it takes about a millisecond).
        Idle => "idle",
        /// Running a task (or having its workdir wiped after one), or held by a session.
        Busy => "busy",
        /// Failed (its health probe, its agent died, its task timed out) and being removed;
        /// its replacement is started at once.
        Unhealthy => "unhealthy",
        /// Being removed for any other reason (age, uses, scale down, shutdown, ...).
        Retiring => "retiring",
    }
}

label_enum! {
    /// `outcome` label of `warmpool_tasks_total`: how a task ended.
    Outcome {
        /// Ran and exited 0.
        Ok => "ok",
        /// Ran and exited non-zero or by a signal (the task's fault, not warmpool's).
        NonzeroExit => "nonzero_exit",
        /// Killed at its timeout.
        Timeout => "timeout",
        /// warmpool or the engine failed while running it.
        Error => "error",
        /// Never ran: queue full, no container within `acquire_timeout`, or shutting down.
        Rejected => "rejected",
    }
}

label_enum! {
    /// `result` label of `warmpool_acquisitions_total`: warm hit rate = warm / all.
    Acquisition {
        /// An already running container was handed out.
        Warm => "warm",
        /// A container had to be created for this task.
        Cold => "cold",
    }
}

label_enum! {
    /// `reason` label of `warmpool_containers_removed_total`: why a container went away.
    RemoveReason {
        /// Reached `max_age`.
        Age => "age",
        /// Reached `max_uses`.
        Uses => "uses",
        /// Failed its health check.
        Unhealthy => "unhealthy",
        /// Idle above `min` for longer than `idle_timeout`.
        Idle => "idle",
        /// The autoscaler lowered the target.
        ScaleDown => "scale_down",
        /// Its session ended; session containers are never reused.
        SessionEnd => "session_end",
        /// The daemon is stopping.
        Shutdown => "shutdown",
        /// A reload changed or removed the pool.
        Reload => "reload",
        /// Left behind by an earlier run of the daemon.
        Orphan => "orphan",
    }
}

label_enum! {
    /// `result` label of `warmpool_health_checks_total`.
    HealthResult {
        /// The in-container probe answered.
        Healthy => "healthy",
        /// The probe failed or timed out.
        Unhealthy => "unhealthy",
    }
}

label_enum! {
    /// `direction` label of `warmpool_scale_events_total`.
    ScaleDirection {
        /// The autoscaler raised the target.
        Up => "up",
        /// The autoscaler lowered the target.
        Down => "down",
    }
}

label_enum! {
    /// `result` label of `warmpool_config_reloads_total`.
    ReloadResult {
        /// The new pools.toml was valid and applied.
        Ok => "ok",
        /// The new pools.toml was refused; the old one stays in force.
        Error => "error",
    }
}

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
    pub registry: Registry,
    /// `warmpool_containers{pool,state}`.
    pub containers: IntGaugeVec,
    /// `warmpool_pool_target_containers{pool}`: what the autoscaler wants.
    pub pool_target: IntGaugeVec,
    /// `warmpool_pool_min_containers{pool}`.
    pub pool_min: IntGaugeVec,
    /// `warmpool_pool_max_containers{pool}`.
    pub pool_max: IntGaugeVec,
    /// `warmpool_pool_utilization_ratio{pool}`: busy / live, 0..1.
    pub utilization: GaugeVec,
    /// `warmpool_queue_length{pool}`: tasks waiting for a container.
    pub queue_length: IntGaugeVec,
    /// `warmpool_tasks_total{pool,outcome}`.
    pub tasks_total: IntCounterVec,
    /// `warmpool_task_duration_seconds{pool}`: run time of tasks that ran.
    pub task_duration: HistogramVec,
    /// `warmpool_queue_wait_seconds{pool}`: time in the queue before a container was free.
    pub queue_wait: HistogramVec,
    /// `warmpool_acquisitions_total{pool,result}`.
    pub acquisitions_total: IntCounterVec,
    /// `warmpool_acquire_seconds{pool}`: time to get a container, warm or cold.
    pub acquire_seconds: HistogramVec,
    /// `warmpool_container_start_seconds{pool}`: create + start until ready.
    pub container_start: HistogramVec,
    /// `warmpool_containers_created_total{pool}`.
    pub containers_created: IntCounterVec,
    /// `warmpool_containers_removed_total{pool,reason}`.
    pub containers_removed: IntCounterVec,
    /// `warmpool_health_checks_total{pool,result}`.
    pub health_checks: IntCounterVec,
    /// `warmpool_scale_events_total{pool,direction}`.
    pub scale_events: IntCounterVec,
    /// `warmpool_sessions{pool}`: live sessions.
    pub sessions: IntGaugeVec,
    /// `warmpool_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `warmpool_engine_up`: 1 when the container engine answers.
    pub engine_up: IntGauge,
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
                        "Busy containers divided by live containers of the pool (0 to 1).",
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
    fn pool_gauges(&self) -> [&IntGaugeVec; 5] {
        [
            &self.pool_target,
            &self.pool_min,
            &self.pool_max,
            &self.queue_length,
            &self.sessions,
        ]
    }

    /// The histograms (all labelled by `pool` alone).
    fn pool_histograms(&self) -> [&HistogramVec; 4] {
        [
            &self.task_duration,
            &self.queue_wait,
            &self.acquire_seconds,
            &self.container_start,
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

    /// Sets busy / live for the pool (0 when it has no live container).
    pub fn set_utilization(&self, pool: &str, ratio: f64) {
        self.utilization.with_label_values(&[pool]).set(ratio);
    }

    /// Sets how many tasks wait in the pool's queue.
    pub fn set_queue_length(&self, pool: &str, n: i64) {
        self.queue_length.with_label_values(&[pool]).set(n);
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
mod tests {
    use super::*;

    /// Every family name of DESIGN section 3.
    const CONTRACT: &[&str] = &[
        "warmpool_containers",
        "warmpool_pool_target_containers",
        "warmpool_pool_min_containers",
        "warmpool_pool_max_containers",
        "warmpool_pool_utilization_ratio",
        "warmpool_queue_length",
        "warmpool_tasks_total",
        "warmpool_task_duration_seconds",
        "warmpool_queue_wait_seconds",
        "warmpool_acquisitions_total",
        "warmpool_acquire_seconds",
        "warmpool_container_start_seconds",
        "warmpool_containers_created_total",
        "warmpool_containers_removed_total",
        "warmpool_health_checks_total",
        "warmpool_scale_events_total",
        "warmpool_sessions",
        "warmpool_config_reloads_total",
        "warmpool_engine_up",
    ];

    /// Lines of the rendered page that are samples (not HELP/TYPE comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// The value of the one sample whose line starts with `series` followed by a space.
    fn value(text: &str, series: &str) -> Option<f64> {
        samples(text).into_iter().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse().expect("numeric sample"))
        })
    }

    #[test]
    fn every_contract_family_is_rendered_after_init_pool() {
        let m = Metrics::new();
        m.init_pool("coder");
        let text = m.render();
        for name in CONTRACT {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
        // and nothing else with our prefix: the contract is exactly these names
        for line in text.lines().filter(|l| l.starts_with("# TYPE warmpool_")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(CONTRACT.contains(&name), "{name} is not in the contract");
        }
    }

    #[test]
    fn families_have_the_contract_types() {
        let m = Metrics::new();
        m.init_pool("coder");
        let text = m.render();
        let ty = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
                .map(str::to_owned)
        };
        for name in CONTRACT {
            let expected = if name.ends_with("_total") {
                "counter"
            } else if name.ends_with("_seconds") {
                "histogram"
            } else {
                "gauge"
            };
            assert_eq!(ty(name).as_deref(), Some(expected), "{name}");
        }
    }

    #[test]
    fn init_pool_creates_every_label_value_at_zero() {
        let m = Metrics::new();
        m.init_pool("coder");
        let text = m.render();
        let at_zero = |series: String| {
            assert_eq!(value(&text, &series), Some(0.0), "{series} in:\n{text}");
        };
        for s in ContainerState::ALL {
            at_zero(format!(
                "warmpool_containers{{pool=\"coder\",state=\"{s}\"}}"
            ));
        }
        for o in Outcome::ALL {
            at_zero(format!(
                "warmpool_tasks_total{{outcome=\"{o}\",pool=\"coder\"}}"
            ));
        }
        for r in Acquisition::ALL {
            at_zero(format!(
                "warmpool_acquisitions_total{{pool=\"coder\",result=\"{r}\"}}"
            ));
        }
        for r in RemoveReason::ALL {
            at_zero(format!(
                "warmpool_containers_removed_total{{pool=\"coder\",reason=\"{r}\"}}"
            ));
        }
        for r in HealthResult::ALL {
            at_zero(format!(
                "warmpool_health_checks_total{{pool=\"coder\",result=\"{r}\"}}"
            ));
        }
        for d in ScaleDirection::ALL {
            at_zero(format!(
                "warmpool_scale_events_total{{direction=\"{d}\",pool=\"coder\"}}"
            ));
        }
        for r in ReloadResult::ALL {
            at_zero(format!("warmpool_config_reloads_total{{result=\"{r}\"}}"));
        }
        at_zero("warmpool_task_duration_seconds_count{pool=\"coder\"}".into());
        at_zero("warmpool_container_start_seconds_count{pool=\"coder\"}".into());
        at_zero("warmpool_engine_up".into());
    }

    #[test]
    fn label_values_match_the_contract() {
        let all = |v: Vec<&'static str>| v.join("/");
        assert_eq!(
            all(ContainerState::ALL.iter().map(|x| x.as_str()).collect()),
            "starting/idle/busy/unhealthy/retiring"
        );
        assert_eq!(
            all(Outcome::ALL.iter().map(|x| x.as_str()).collect()),
            "ok/nonzero_exit/timeout/error/rejected"
        );
        assert_eq!(
            all(Acquisition::ALL.iter().map(|x| x.as_str()).collect()),
            "warm/cold"
        );
        assert_eq!(
            all(RemoveReason::ALL.iter().map(|x| x.as_str()).collect()),
            "age/uses/unhealthy/idle/scale_down/session_end/shutdown/reload/orphan"
        );
        assert_eq!(
            all(HealthResult::ALL.iter().map(|x| x.as_str()).collect()),
            "healthy/unhealthy"
        );
        assert_eq!(
            all(ScaleDirection::ALL.iter().map(|x| x.as_str()).collect()),
            "up/down"
        );
        assert_eq!(
            all(ReloadResult::ALL.iter().map(|x| x.as_str()).collect()),
            "ok/error"
        );
    }

    #[test]
    fn helpers_count_and_set() {
        let m = Metrics::new();
        m.init_pool("coder");
        m.task_done("coder", Outcome::Ok, 0.002);
        m.task_done("coder", Outcome::Ok, 0.004);
        m.task_done("coder", Outcome::Timeout, 30.0);
        m.task_rejected("coder");
        m.acquired("coder", Acquisition::Warm, 0.0003);
        m.acquired("coder", Acquisition::Cold, 0.3);
        m.acquired("coder", Acquisition::Warm, 0.0004);
        m.queue_waited("coder", 0.01);
        m.created("coder");
        m.started("coder", 0.29);
        m.removed("coder", RemoveReason::ScaleDown);
        m.removed("coder", RemoveReason::ScaleDown);
        m.health_checked("coder", HealthResult::Unhealthy);
        m.scaled("coder", ScaleDirection::Up);
        m.reloaded(ReloadResult::Error);
        m.set_containers("coder", ContainerState::Busy, 3);
        m.set_bounds("coder", 2, 8);
        m.set_target("coder", 4);
        m.set_utilization("coder", 0.75);
        m.set_queue_length("coder", 5);
        m.set_sessions("coder", 2);
        m.set_engine_up(true);

        let t = m.render();
        let v = |s: &str| value(&t, s).unwrap_or_else(|| panic!("{s} missing in:\n{t}"));
        assert_eq!(v(r#"warmpool_tasks_total{outcome="ok",pool="coder"}"#), 2.0);
        assert_eq!(
            v(r#"warmpool_tasks_total{outcome="timeout",pool="coder"}"#),
            1.0
        );
        assert_eq!(
            v(r#"warmpool_tasks_total{outcome="rejected",pool="coder"}"#),
            1.0
        );
        assert_eq!(
            v(r#"warmpool_tasks_total{outcome="error",pool="coder"}"#),
            0.0
        );
        // the rejected task is counted but does not enter the duration histogram
        assert_eq!(
            v(r#"warmpool_task_duration_seconds_count{pool="coder"}"#),
            3.0
        );
        assert_eq!(
            v(r#"warmpool_task_duration_seconds_bucket{pool="coder",le="0.005"}"#),
            2.0
        );
        assert_eq!(
            v(r#"warmpool_acquisitions_total{pool="coder",result="warm"}"#),
            2.0
        );
        assert_eq!(
            v(r#"warmpool_acquisitions_total{pool="coder",result="cold"}"#),
            1.0
        );
        assert_eq!(v(r#"warmpool_acquire_seconds_count{pool="coder"}"#), 3.0);
        assert_eq!(
            v(r#"warmpool_acquire_seconds_bucket{pool="coder",le="0.0005"}"#),
            2.0
        );
        assert_eq!(v(r#"warmpool_queue_wait_seconds_count{pool="coder"}"#), 1.0);
        assert_eq!(v(r#"warmpool_containers_created_total{pool="coder"}"#), 1.0);
        assert_eq!(
            v(r#"warmpool_container_start_seconds_count{pool="coder"}"#),
            1.0
        );
        assert_eq!(
            v(r#"warmpool_containers_removed_total{pool="coder",reason="scale_down"}"#),
            2.0
        );
        assert_eq!(
            v(r#"warmpool_health_checks_total{pool="coder",result="unhealthy"}"#),
            1.0
        );
        assert_eq!(
            v(r#"warmpool_scale_events_total{direction="up",pool="coder"}"#),
            1.0
        );
        assert_eq!(v(r#"warmpool_config_reloads_total{result="error"}"#), 1.0);
        assert_eq!(v(r#"warmpool_containers{pool="coder",state="busy"}"#), 3.0);
        assert_eq!(v(r#"warmpool_pool_min_containers{pool="coder"}"#), 2.0);
        assert_eq!(v(r#"warmpool_pool_max_containers{pool="coder"}"#), 8.0);
        assert_eq!(v(r#"warmpool_pool_target_containers{pool="coder"}"#), 4.0);
        assert_eq!(v(r#"warmpool_pool_utilization_ratio{pool="coder"}"#), 0.75);
        assert_eq!(v(r#"warmpool_queue_length{pool="coder"}"#), 5.0);
        assert_eq!(v(r#"warmpool_sessions{pool="coder"}"#), 2.0);
        assert_eq!(v("warmpool_engine_up"), 1.0);
    }

    #[test]
    fn forget_pool_removes_only_that_pool() {
        let m = Metrics::new();
        m.init_pool("coder");
        m.init_pool("tester");
        m.task_done("coder", Outcome::Ok, 0.1);
        m.set_containers("coder", ContainerState::Idle, 2);
        m.forget_pool("coder");
        let text = m.render();
        assert!(
            !text.contains("pool=\"coder\""),
            "coder series left:\n{text}"
        );
        assert!(text.contains("pool=\"tester\""));
        // families without a pool label survive
        assert!(text.contains("warmpool_config_reloads_total{result=\"ok\"} 0"));
        // and forgetting twice, or an unknown pool, is harmless
        m.forget_pool("coder");
        m.forget_pool("nope");
    }

    #[test]
    fn instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.init_pool("coder");
        a.created("coder");
        assert!(!b.render().contains("pool=\"coder\""));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_collector_is_registered() {
        let text = Metrics::new().render();
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }

    /// `promtool check metrics` lints names, types and HELP texts the way Prometheus
    /// maintainers expect; skipped with a note where promtool is not installed.
    #[test]
    fn rendered_text_passes_promtool() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let m = Metrics::new();
        m.init_pool("coder");
        m.task_done("coder", Outcome::Ok, 0.01);
        m.acquired("coder", Acquisition::Warm, 0.0002);
        let text = m.render();

        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("note: promtool not runnable ({e}); skipping `promtool check metrics`");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool check metrics:\n{report}");
        assert!(
            report.trim().is_empty(),
            "promtool lint findings:\n{report}"
        );
    }
}
