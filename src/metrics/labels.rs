//! The label values of the metrics contract, each a small enum: a misspelt value at a call
//! site would silently create a series no dashboard or alert looks at.

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
