//! The value types of `pools.toml` that the rest of the daemon sees, and the size syntax.
//! Nothing here knows about files or positions, so it sits at the bottom of the module.

use std::fmt;

use serde::{Deserialize, Serialize};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const GIB: u64 = 1024 * MIB;
pub(super) const TIB: u64 = 1024 * GIB;

/// Docker refuses to create a container with a smaller memory limit, so catching it here
/// turns a failure at the first container start into a config error.
pub(super) const DOCKER_MIN_MEMORY: u64 = 6 * MIB;

/// The finest step warmpool keeps time in: the shim counts a task's timeout in whole
/// milliseconds and tokio's timers fire on millisecond ticks, so a shorter duration (other
/// than zero) cannot mean what it says. Fractions above it are rounded up.
pub const DURATION_STEP: std::time::Duration = std::time::Duration::from_millis(1);
/// The longest duration accepted anywhere (about 100 years): longer ones would overflow the
/// clock arithmetic of deadlines instead of meaning "very long".
pub const DURATION_MAX: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// What is wrong with a duration that warmpool cannot keep as written, as the end of a
/// sentence that names it (`timeout "900us" ...`); `None` when it can. Zero is left to the
/// caller, whose rule and message for it differ by setting. Every duration of pools.toml
/// and of the API goes through this.
pub fn duration_problem(d: std::time::Duration) -> Option<String> {
    if !d.is_zero() && d < DURATION_STEP {
        Some(
            "is shorter than a millisecond, the finest step warmpool keeps time in: write at least \"1ms\""
                .into(),
        )
    } else if d > DURATION_MAX {
        Some("is longer than 100 years: write a shorter duration".into())
    } else {
        None
    }
}

/// What a task gets when every container of its pool is busy and the pool is at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Queue for up to `acquire_timeout`, at most `max_queue` tasks deep.
    Wait,
    /// Refuse at once (503), for callers that would rather go elsewhere than wait.
    Fail,
    /// Start one container beyond `max` for this task and remove it afterwards.
    Cold,
}

impl OnExhausted {
    /// As written in `pools.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExhausted::Wait => "wait",
            OnExhausted::Fail => "fail",
            OnExhausted::Cold => "cold",
        }
    }
}

impl fmt::Display for OnExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a session's files outlive its container (`session_workspace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// The session's files live and die with its container (the workdir).
    Ephemeral,
    /// A host directory at /workspace that survives idle ends, container replacement,
    /// restarts and reloads, until deleted or past `workspace_ttl`.
    Persistent,
}

/// How a pool runs tasks in its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecMode {
    /// The in-container agent, the containers' entrypoint: about a millisecond a task.
    Shim,
    /// One `docker exec` a task (tens of milliseconds), for images the shim cannot run in.
    DockerExec,
}

impl ExecMode {
    /// As written in `pools.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecMode::Shim => "shim",
            ExecMode::DockerExec => "docker-exec",
        }
    }
}

impl fmt::Display for ExecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the daemon talks to a shim pool's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecTransport {
    /// A unix socket the shim listens on, in a host directory of the container's own: no
    /// engine process in a task's path. Needs a local engine; falls back to `Attach` otherwise.
    Direct,
    /// The container's attached stdin/stdout, through the engine: works with any engine.
    Attach,
}

impl ExecTransport {
    /// As written in `pools.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecTransport::Direct => "direct",
            ExecTransport::Attach => "attach",
        }
    }
}

impl fmt::Display for ExecTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network of a pool's containers. Serialized as the string written in `pools.toml`,
/// so status output reads like the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NetworkMode {
    /// No network at all; the shim needs none.
    None,
    /// A bridge network of the pool's own, so that pools cannot reach each other.
    Isolated,
    /// An existing network, created and owned by the operator.
    Named(String),
}

impl NetworkMode {
    /// As written in `pools.toml`; a named network is its name.
    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Isolated => "isolated",
            NetworkMode::Named(name) => name,
        }
    }
}

/// Any name other than `none` and `isolated` is a network the operator owns; whether it
/// exists is checked at start, not here, because config is pure.
impl From<String> for NetworkMode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "none" => NetworkMode::None,
            "isolated" => NetworkMode::Isolated,
            _ => NetworkMode::Named(s),
        }
    }
}

impl From<NetworkMode> for String {
    fn from(n: NetworkMode) -> Self {
        n.as_str().to_string()
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const SIZE_FORMS: &str = "write a whole number and a unit, such as \"512MiB\", \"1GiB\", \"4KiB\" \
     or \"100B\" (binary units B, KiB, MiB, GiB, TiB; decimal units KB, MB, GB, TB; \
     plain digits are bytes)";

/// Binary units are the documented form because that is what Docker means by memory;
/// decimal units are accepted because people write them, and the bare `M`/`G` of
/// `docker run -m` is refused because it is ambiguous between the two.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!("not a size: {SIZE_FORMS}"));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "m" | "g" | "t" => {
            let u = unit.to_ascii_uppercase();
            return Err(format!(
                "unit \"{unit}\" is ambiguous: write {u}iB (binary) or {u}B (decimal)"
            ));
        }
        _ => return Err(format!("unknown unit \"{unit}\": {SIZE_FORMS}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || (number.contains('.') && fraction.is_empty())
    {
        return Err(format!("not a size: {SIZE_FORMS}"));
    }
    let too_large = || "too large: sizes are at most 16EiB".to_string();
    if whole.len() > 20 || fraction.len() > 18 {
        return Err(too_large());
    }
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole * u128::from(multiplier);
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let part = fraction.parse::<u128>().unwrap_or(0) * u128::from(multiplier);
        if part % scale != 0 {
            return Err("not a whole number of bytes".to_string());
        }
        bytes += part / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

pub(super) fn human_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}
