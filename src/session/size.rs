//! What one session may ask for beyond its pool's defaults (`POST /v1/sessions`): its own
//! memory, CPUs and pids limit within the pool's `session_max_*` bounds, applied to the
//! claimed warm container by the engine's live update (no new container).

use crate::config::PoolConfig;
use crate::runtime::Limits;

/// Docker refuses a smaller memory limit.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// A session's own settings, as asked; each `None` keeps the pool's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionOptions {
    /// Bytes of memory (swap included), at most the pool's `session_max_memory`.
    pub memory: Option<u64>,
    /// CPUs, at most the pool's `session_max_cpus`.
    pub cpus: Option<f64>,
    /// Processes, at most the pool's `session_max_pids`.
    pub pids_limit: Option<i64>,
    /// Tasks of the session that may run at once, at most the pool's `max_concurrent_tasks`.
    pub max_concurrent_tasks: Option<usize>,
}

fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// The limits `opts` asks of `cfg`'s bounds.
///
/// Errors: a value over its bound, one the pool does not let sessions set, or one that makes
/// no sense (below Docker's minimum memory, no CPU, no process); the message names the field,
/// the value, the bound and the fix.
pub fn limits_for(cfg: &PoolConfig, opts: &SessionOptions) -> Result<Limits, String> {
    let pool = &cfg.name;
    let unset = |field: &str, key: &str| {
        format!(
            "{field} cannot be set for sessions of pool {pool}: it has no {key}; set {key} in \
             [pools.{pool}] of pools.toml, or leave {field} out for the pool's own"
        )
    };
    let mut limits = Limits::default();
    if let Some(m) = opts.memory {
        let bound = cfg
            .session_max_memory
            .ok_or_else(|| unset("memory", "session_max_memory"))?;
        if m < MIN_MEMORY {
            return Err(format!(
                "memory ({}) is below Docker's minimum of 6MiB: ask for more",
                human(m)
            ));
        }
        if m > bound {
            return Err(format!(
                "memory ({}) is above pool {pool}'s session_max_memory ({}): ask for at most {}, \
                 or raise session_max_memory in pools.toml",
                human(m),
                human(bound),
                human(bound)
            ));
        }
        limits.memory_bytes = Some(m);
    }
    if let Some(c) = opts.cpus {
        let bound = cfg
            .session_max_cpus
            .ok_or_else(|| unset("cpus", "session_max_cpus"))?;
        if !(c.is_finite() && c > 0.0) {
            return Err(format!(
                "cpus ({c}) must be a number of CPUs above 0, such as 0.5 or 2"
            ));
        }
        if c > bound {
            return Err(format!(
                "cpus ({c}) is above pool {pool}'s session_max_cpus ({bound}): ask for at most \
                 {bound}, or raise session_max_cpus in pools.toml"
            ));
        }
        limits.nano_cpus = Some((c * 1e9) as i64);
    }
    if let Some(p) = opts.pids_limit {
        let bound = cfg
            .session_max_pids
            .ok_or_else(|| unset("pids_limit", "session_max_pids"))?;
        if p < 1 {
            return Err(format!("pids_limit ({p}) must be at least 1"));
        }
        if p > bound {
            return Err(format!(
                "pids_limit ({p}) is above pool {pool}'s session_max_pids ({bound}): ask for at \
                 most {bound}, or raise session_max_pids in pools.toml"
            ));
        }
        limits.pids_limit = Some(p);
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PoolConfig {
        let mut c = PoolConfig::new("coder", "img");
        c.session_max_memory = Some(2 << 30);
        c.session_max_cpus = Some(2.0);
        c.session_max_pids = Some(512);
        c
    }

    #[test]
    fn within_the_bounds_the_limits_are_asked_as_given() {
        let opts = SessionOptions {
            memory: Some(1 << 30),
            cpus: Some(1.5),
            pids_limit: Some(100),
            ..Default::default()
        };
        let l = limits_for(&cfg(), &opts).unwrap();
        assert_eq!(l.memory_bytes, Some(1 << 30));
        assert_eq!(l.nano_cpus, Some(1_500_000_000));
        assert_eq!(l.pids_limit, Some(100));
        assert!(limits_for(&cfg(), &SessionOptions::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn over_a_bound_or_without_one_the_message_names_field_bound_and_fix() {
        let over = |opts: SessionOptions| limits_for(&cfg(), &opts).unwrap_err();
        let e = over(SessionOptions {
            memory: Some(4 << 30),
            ..Default::default()
        });
        assert!(
            e.contains("memory (4GiB)") && e.contains("session_max_memory (2GiB)"),
            "{e}"
        );
        let e = over(SessionOptions {
            cpus: Some(3.0),
            ..Default::default()
        });
        assert!(
            e.contains("cpus (3)") && e.contains("session_max_cpus (2)"),
            "{e}"
        );
        let e = over(SessionOptions {
            pids_limit: Some(513),
            ..Default::default()
        });
        assert!(
            e.contains("pids_limit (513)") && e.contains("session_max_pids (512)"),
            "{e}"
        );
        let e = limits_for(
            &PoolConfig::new("coder", "img"),
            &SessionOptions {
                cpus: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("set session_max_cpus in [pools.coder]"), "{e}");
    }
}
