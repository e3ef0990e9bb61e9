//! The pool keys: one table for `[defaults]` / `[pools.NAME]`, one for their `security`
//! sub-table, and the rules between keys that only the merged pool can check.
//!
//! To add a pool key, add one entry to the `keys` of `PoolConfig` below (doc comment,
//! field, type, built-in default, reader with its hints), and document it in
//! docs/configuration.md. Everything else (reading, merging, unknown-key suggestions,
//! the key list) follows from the table.

use std::collections::BTreeMap;
use std::time::Duration;

use super::checks::{
    check_absolute, check_capability, check_description, check_image, check_network, check_runtime,
    check_user, check_workdir,
};
use super::keys::settings;
use super::mounts::{read_mounts, within, Mount};
use super::read::{closest, join, layered, Ctx, Pos, Slot};
use super::suggest::Section;
use super::values::{
    ExecMode, ExecTransport, NetworkMode, OnExhausted, WorkspaceMode, DOCKER_MIN_MEMORY, MIB,
};
use crate::scaling::ScheduleFloor;

/// Where a persistent workspace appears in a session's container: `session_workspace =
/// "persistent"` keeps the workdir and the pool's mounts clear of it (docs/configuration.md).
pub const WORKSPACE_PATH: &str = "/workspace";

type Env = BTreeMap<String, String>;

settings! {
    /// One pool, fully resolved: built-in defaults, then `[defaults]`, then `[pools.NAME]`,
    /// key by key (`env` is merged variable by variable, `security` key by key).
    #[derive(Debug, Clone, PartialEq)]
    pub struct PoolConfig, layer Layer, keys LAYER_KEYS, section Section::Layer {
        given {
            /// The `NAME` of `[pools.NAME]`: `[a-z0-9][a-z0-9_-]*`, at most 32 characters,
            /// because it ends up in container names, network names and metric labels.
            name: String,
        }
        keys {
            /// The image reference every container of the pool runs. Required, in the pool or
            /// in `[defaults]`; there is no built-in.
            image: String = String::new(),
                |cx, e| cx.text(e, "an image reference such as \"warmpool/agent:latest\"", check_image);
            /// What the pool is for, in a sentence for people and models ("Python 3.12, pytest,
            /// git; for running a repo's tests"): shown in `GET /v1/pools` and in the MCP tools'
            /// descriptions. Changes no container. At most 1,000 characters.
            description: Option<String> = None,
                |cx, e| cx.text(e, "a sentence saying what the pool is for", check_description)
                    .map(Some);
            /// Never fewer live containers than this; 0 creates them on the first task.
            min: usize = 1, |cx, e| cx.count(e, 0, "");
            /// Never more live containers than this (at least 1), except with
            /// `on_exhausted = "cold"`.
            max: usize = 10, |cx, e| cx.count(e, 1, ": a pool needs room for one container");
            /// Containers created at start, `min <= warm <= max`; when unset it follows
            /// `min` and `max` (see `resolve`).
            warm: usize = 2, |cx, e| cx.count(e, 0, "");
            /// How often the supervisor probes each idle container.
            health_check_interval: Duration = Duration::from_secs(30),
                |cx, e| cx.duration(e, Some("the supervisor would probe without pause; \"30s\" is usual"));
            /// How long one health probe (the shim's ping, then `health_cmd`) may take before
            /// it counts as failed.
            health_check_timeout: Duration = Duration::from_secs(5),
                |cx, e| cx.duration(e, Some("every probe would fail at once; \"5s\" is usual"));
            /// A container is replaced after this age (with jitter), never while busy.
            max_age: Duration = Duration::from_secs(3600),
                |cx, e| cx.duration(e, Some("every container would be replaced as soon as it started; \
                                             set a long age such as \"24h\" instead"));
            /// A container is replaced after this many tasks; 1 gives a fresh one per task.
            max_uses: u64 = 100, |cx, e| cx.count(e, 1, ": 1 gives a fresh container per task");
            /// Idle containers above `min` are removed after this.
            idle_timeout: Duration = Duration::from_secs(600),
                |cx, e| cx.duration(e, Some("idle containers above min would be removed at once; \
                                             set a short timeout such as \"1m\" instead"));
            /// Utilization (busy / live containers, a fraction in (0, 1]) above which the
            /// autoscaler adds containers.
            scale_up_threshold: f64 = 0.8, |cx, e| cx.fraction(e);
            /// Utilization below which the autoscaler removes containers; must be below
            /// `scale_up_threshold`.
            scale_down_threshold: f64 = 0.2, |cx, e| cx.fraction(e);
            /// Idle containers kept beyond the busy ones (and one per queued task), between
            /// `min` and `max`; 0 turns the policy off.
            spare: usize = 0, |cx, e| cx.count(e, 0, "");
            /// Forecast the next interval's concurrency from the arrival rate and the task
            /// durations, and start containers before the tasks arrive.
            predictive: bool = true, |cx, e| cx.boolean(e);
            /// How long the forecast remembers a peak: the pool does not shrink below the
            /// highest forecast of this window.
            forecast_window: Duration = Duration::from_secs(180),
                |cx, e| cx.duration(e, None);
            /// Floors by time of day: from each match of `cron` (UTC), for `for`, at least
            /// `min` containers.
            schedule: Vec<ScheduleFloor> = Vec::new(), |cx, e| cx.schedule(e);
            /// How often the autoscaler looks.
            scale_interval: Duration = Duration::from_secs(5),
                |cx, e| cx.duration(e, Some("the autoscaler would run without pause; \"5s\" is usual"));
            /// The default and the upper bound of a task's own timeout.
            task_timeout: Duration = Duration::from_secs(300),
                |cx, e| cx.duration(e, Some("every task would time out at once"));
            /// How long a task may queue for a free container under `on_exhausted = "wait"`.
            acquire_timeout: Duration = Duration::from_secs(30),
                |cx, e| cx.duration(e, Some("to refuse tasks at once when no container is free, set \
                                             on_exhausted = \"fail\" instead"));
            /// What a task gets when every container is busy and the pool is at `max`.
            on_exhausted: OnExhausted = OnExhausted::Wait,
                |cx, e| cx.choice(e, &[
                    ("wait", OnExhausted::Wait),
                    ("fail", OnExhausted::Fail),
                    ("cold", OnExhausted::Cold),
                ]);
            /// Queued tasks beyond this are refused at once.
            max_queue: usize = 1000, |cx, e| cx.count(e, 0, "");
            /// Bytes kept per output stream of a task; the rest is drained and dropped.
            max_output: u64 = 4 * MIB,
                |cx, e| cx.size(e, 1, " (it bounds what a task's output may cost the daemon; to \
                                       discard output, redirect it in the command)");
            /// Docker's `--pids-limit` for each container; there is no unlimited setting.
            pids_limit: i64 = 256,
                |cx, e| cx.count(e, 1, ": it caps the processes of one container (there is no \
                                       unlimited setting)");
            /// The tasks' working directory: absolute, not `/`, and a tmpfs of its own.
            workdir: String = "/work".to_string(),
                |cx, e| cx.text(e, "an absolute path such as \"/work\"", check_workdir);
            /// How tasks are run in a container.
            exec: ExecMode = ExecMode::Shim,
                |cx, e| cx.choice(e, &[("shim", ExecMode::Shim), ("docker-exec", ExecMode::DockerExec)]);
            /// How the daemon reaches a shim pool's shims: `direct` (a unix socket in a host
            /// directory of each container's own, no engine process in a task's path) where the
            /// engine is local, else `attach` (the container's attached stdio, via the engine).
            exec_transport: ExecTransport = ExecTransport::Direct,
                |cx, e| cx.choice(e, &[("direct", ExecTransport::Direct), ("attach", ExecTransport::Attach)]);
            /// An extra in-container probe, as argv; the shim's ping is always done.
            health_cmd: Option<Vec<String>> = None, |cx, e| cx.argv(e).map(Some);
            /// A session with no task for this long is ended.
            session_idle_timeout: Duration = Duration::from_secs(300),
                |cx, e| cx.duration(e, Some("every session would end as soon as it started"));
            /// Whether the workdir is wiped between tasks of different sessions.
            reset_workdir: bool = true, |cx, e| cx.boolean(e);
            /// Run, as argv, in the container when a session ends.
            session_end_command: Option<Vec<String>> = None, |cx, e| cx.argv(e).map(Some);
            /// Bytes; `None` leaves the container unlimited, as Docker does. At least
            /// Docker's minimum of 6MiB.
            memory: Option<u64> = None,
                |cx, e| cx.size(e, DOCKER_MIN_MEMORY, " (Docker's minimum); leave memory out for no limit")
                    .map(Some);
            /// A number of CPUs above 0 (`0.5`, `2`); `None` for no limit.
            cpus: Option<f64> = None, |cx, e| cx.cpus(e).map(Some);
            /// `none`, `isolated` (a bridge of the pool's own) or an existing network.
            network: NetworkMode = NetworkMode::None,
                |cx, e| cx.text(e, "\"none\", \"isolated\" or the name of an existing network", check_network)
                    .map(NetworkMode::from);
            /// Environment of every task; a pool's variables are added to those of
            /// `[defaults]`, replacing only those of the same name.
            env: Env = Env::new(), |cx, e| cx.env(e), merge union_env;
            /// Tasks of one session that may run at once (1: one at a time, in arrival
            /// order); a session may ask for fewer.
            max_concurrent_tasks: usize = 1,
                |cx, e| cx.count(e, 1, ": 1 runs a session's tasks one at a time");
            /// The most memory one session may ask for (`POST /v1/sessions {"memory": ...}`);
            /// unset: sessions may not set memory.
            session_max_memory: Option<u64> = None,
                |cx, e| cx.size(e, DOCKER_MIN_MEMORY, " (Docker's minimum); leave it out to keep sessions at the pool's memory")
                    .map(Some);
            /// The most CPUs one session may ask for; unset: sessions may not set cpus.
            session_max_cpus: Option<f64> = None, |cx, e| cx.cpus(e).map(Some);
            /// The largest pids limit one session may ask for; unset: sessions may not set it.
            session_max_pids: Option<i64> = None,
                |cx, e| cx.count(e, 1, ": it bounds the pids_limit a session may ask for").map(Some);
            /// `ephemeral`: a session's files go with its container. `persistent`: a host
            /// directory at /workspace that outlives it (idle ends, restarts, reloads).
            session_workspace: WorkspaceMode = WorkspaceMode::Ephemeral,
                |cx, e| cx.choice(e, &[
                    ("ephemeral", WorkspaceMode::Ephemeral),
                    ("persistent", WorkspaceMode::Persistent),
                ]);
            /// Host directory under which persistent workspaces live (one directory per
            /// daemon instance), on the engine's host.
            workspace_root: String = "/var/lib/warmpool/workspaces".to_string(),
                |cx, e| cx.text(e, "an absolute host path such as \"/var/lib/warmpool/workspaces\"", check_absolute);
            /// A persistent workspace unused for this long is removed.
            workspace_ttl: Duration = Duration::from_secs(7 * 24 * 3600),
                |cx, e| cx.duration(e, Some("every workspace would be removed at once"));
            /// The most bytes one persistent workspace may hold: measured while each task runs
            /// and after it (a task that passes it is killed), a session over it gets no new
            /// task (507). Unset: no bound.
            workspace_max_size: Option<u64> = None,
                |cx, e| cx.size(e, 1, "; leave it out for no bound").map(Some);
            /// Bind mounts, named volumes and tmpfs of every container; a pool's list
            /// replaces that of `[defaults]`.
            mounts: Vec<Mount> = Vec::new(), |cx, e| read_mounts(cx, e);
        }
        tables {
            /// `[defaults.security]` / `[pools.NAME.security]`, merged key by key.
            security: SecurityConfig, layer SecurityLayer;
        }
    }
}

settings! {
    /// Locked down by default: task commands are untrusted agent output.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SecurityConfig, layer SecurityLayer, keys SECURITY_KEYS, section Section::Security {
        given {}
        keys {
            /// Mount the image read-only; the workdir and /tmp are tmpfs either way.
            read_only_rootfs: bool = true, |cx, e| cx.boolean(e);
            /// Capabilities dropped, upper-case as Docker writes them (`ALL`, `NET_RAW`).
            /// A pool's list replaces the defaults' list.
            cap_drop: Vec<String> = vec!["ALL".to_string()],
                |cx, e| cx.list(e, "a list of capabilities such as [\"ALL\"]", check_capability);
            /// Docker's `no-new-privileges` security option.
            no_new_privileges: bool = true, |cx, e| cx.boolean(e);
            /// `uid[:gid]` or `name[:group]`, as Docker's `--user`.
            user: String = "1000:1000".to_string(),
                |cx, e| cx.text(e, "a user such as \"1000:1000\"", check_user);
            /// An OCI runtime the engine knows (`runsc`); `None` for the engine's default.
            runtime: Option<String> = None,
                |cx, e| cx.text(e, "the name of an OCI runtime such as \"runsc\"", check_runtime)
                    .map(Some);
        }
        tables {}
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig::builtin()
    }
}

impl PoolConfig {
    /// A pool with the built-in defaults, the single source of them; also handy for tests
    /// elsewhere in the daemon that need a pool without writing a file.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        PoolConfig {
            image: image.into(),
            ..PoolConfig::builtin(name.into())
        }
    }
}

/// `env` adds up across layers instead of being replaced, so `[defaults]` can set a
/// variable for every pool while a pool adds its own.
fn union_env(pool: &Slot<Env>, defaults: &Slot<Env>, builtin: Env) -> Env {
    let mut env = defaults.or(builtin);
    env.extend(pool.or(Env::new()));
    env
}

/// Merges the layers and checks what only the merged pool can tell. `header` is where
/// `[pools.NAME]` was written, for problems no single value is to blame for.
pub(super) fn resolve(
    cx: &mut Ctx<'_>,
    name: &str,
    header: Pos,
    p: &Layer,
    d: &Layer,
) -> PoolConfig {
    let b = PoolConfig::builtin(name.to_string());
    let mut pool = PoolConfig::merge(p, d, b.clone());
    let path = join("pools", name);

    if let Slot::Unset = layered(&p.image, &d.image) {
        let message = format!("{path}.image is not set: set image in [{path}] or in [defaults]");
        cx.report(header, message);
    }

    let (min, max, warm) = (
        layered(&p.min, &d.min),
        layered(&p.max, &d.max),
        layered(&p.warm, &d.warm),
    );
    let (min_v, max_v) = (pool.min, pool.max);
    let describe = |slot: &Slot<usize>, field: &str, builtin: usize| match slot {
        Slot::Set(s) => format!("{} ({})", s.path, s.shown),
        _ => format!("{field} ({builtin}, the built-in default)"),
    };
    if !min.is_bad() && !max.is_bad() && min_v > max_v {
        let at = closest(&[(min.rank(), min.at()), (max.rank(), max.at())], header);
        let message = format!(
            "{} is larger than {}: raise max or lower min",
            describe(min, "min", b.min),
            describe(max, "max", b.max)
        );
        cx.report(at, message);
    }
    // An unset warm follows min and max, so that `min = 5` alone does what it says
    // instead of failing on the built-in warm of 2.
    if !matches!(warm, Slot::Set(_)) {
        pool.warm = b.warm.max(min_v).min(max_v);
    }
    let order_ok = !min.is_bad() && !max.is_bad() && min_v <= max_v;
    if let (Slot::Set(w), true) = (warm, order_ok) {
        if w.value < min_v {
            let at = closest(&[(warm.rank(), warm.at()), (min.rank(), min.at())], header);
            let message = format!(
                "{} is smaller than {}: raise warm or lower min",
                describe(warm, "warm", b.warm),
                describe(min, "min", b.min)
            );
            cx.report(at, message);
        } else if w.value > max_v {
            let at = closest(&[(warm.rank(), warm.at()), (max.rank(), max.at())], header);
            let message = format!(
                "{} is larger than {}: lower warm or raise max",
                describe(warm, "warm", b.warm),
                describe(max, "max", b.max)
            );
            cx.report(at, message);
        }
    }

    let spare = layered(&p.spare, &d.spare);
    if let (Slot::Set(s), false) = (spare, max.is_bad()) {
        if s.value > max_v {
            let at = closest(
                &[(spare.rank(), spare.at()), (max.rank(), max.at())],
                header,
            );
            let message = format!(
                "{} ({}) is above {}: the pool could never keep that many idle; lower spare \
                 or raise max",
                s.path,
                s.shown,
                describe(max, "max", b.max)
            );
            cx.report(at, message);
        }
    }
    let schedule = layered(&p.schedule, &d.schedule);
    if let (Slot::Set(s), false) = (schedule, max.is_bad()) {
        for (i, f) in s.value.iter().enumerate() {
            if f.min > max_v {
                let message = format!(
                    "{}[{i}].min ({}) is above {}: the schedule would ask for more than the \
                     pool may have; lower the entry's min or raise max",
                    s.path,
                    f.min,
                    describe(max, "max", b.max)
                );
                cx.report(s.at, message);
            }
        }
    }

    // A mount must leave the workdir alone: it is a tmpfs of its own, wiped between tasks.
    if let Slot::Set(s) = layered(&p.mounts, &d.mounts) {
        let workdir = pool.workdir.trim_end_matches('/').to_string();
        for (i, m) in s.value.iter().enumerate() {
            let t = m.target.trim_end_matches('/');
            if within(t, &workdir) || within(&workdir, t) {
                let message = format!(
                    "{}[{i}].target ({:?}) overlaps the workdir ({workdir:?}), a tmpfs wiped between \
                     tasks: mount it outside, such as \"/data\"",
                    s.path, m.target
                );
                cx.report(s.at, message);
            }
        }
    }

    // A persistent workspace is mounted at /workspace: the workdir and mounts stay clear.
    let mode = layered(&p.session_workspace, &d.session_workspace);
    if let (Slot::Set(m), WorkspaceMode::Persistent) = (mode, pool.session_workspace) {
        let ws = WORKSPACE_PATH;
        let workdir = pool.workdir.trim_end_matches('/');
        if within(workdir, ws) || within(ws, workdir) {
            let message = format!(
                "{} (\"persistent\") mounts the workspace at {ws}, which overlaps the workdir \
                 ({workdir:?}): set workdir elsewhere, such as \"/work\"",
                m.path
            );
            cx.report(m.at, message);
        }
        for (i, mnt) in pool.mounts.iter().enumerate() {
            let t = mnt.target.trim_end_matches('/');
            if within(t, ws) || within(ws, t) {
                let message = format!(
                    "{} (\"persistent\") mounts the workspace at {ws}, which mounts[{i}].target \
                     ({:?}) overlaps: mount it elsewhere, such as \"/data\"",
                    m.path, mnt.target
                );
                cx.report(m.at, message);
            }
        }
    }

    let up = layered(&p.scale_up_threshold, &d.scale_up_threshold);
    let down = layered(&p.scale_down_threshold, &d.scale_down_threshold);
    let (up_v, down_v) = (pool.scale_up_threshold, pool.scale_down_threshold);
    if !up.is_bad() && !down.is_bad() && down_v >= up_v {
        let describe = |slot: &Slot<f64>, field: &str, builtin: f64| match slot {
            Slot::Set(s) => format!("{} ({})", s.path, s.shown),
            _ => format!("{field} ({builtin}, the built-in default)"),
        };
        let at = closest(&[(down.rank(), down.at()), (up.rank(), up.at())], header);
        let message = format!(
            "{} must be below {}: otherwise the pool would scale up and down at the same \
             utilization",
            describe(down, "scale_down_threshold", b.scale_down_threshold),
            describe(up, "scale_up_threshold", b.scale_up_threshold)
        );
        cx.report(at, message);
    }
    pool
}
