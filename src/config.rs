//! `pools.toml`, the operators' contract (DESIGN.md section 1).
//!
//! The file is walked by hand over toml_edit's span-keeping tree instead of being handed to
//! serde: serde stops at the first problem and forgets where most values were written, while
//! an operator fixing a config wants every problem at once, each at its line and column and
//! each with the fix. Everything here is pure (only [`Config::load`] reads a file), so
//! `warmpool check` and a reload can refuse a bad file before any container is touched.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml_edit::{ImDocument, Item, TableLike, Value};

/// Loopback, so that a fresh install never exposes the API to the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Docker refuses to create a container with a smaller memory limit, so catching it here
/// turns a failure at the first container start into a config error.
const DOCKER_MIN_MEMORY: u64 = 6 * MIB;

/// The whole daemon configuration, with every pool already resolved so that the rest of
/// the daemon never has to know about `[defaults]` or built-in values.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub docker: DockerConfig,
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `None` only when the operator wrote `listen = ""` next to a `unix_socket`, so that a
    /// socket-only daemon opens no TCP port at all.
    pub listen: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Bytes; bounds the memory one upload can pin.
    pub max_request_body: u64,
    pub max_sessions: usize,
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070)),
            unix_socket: None,
            token_file: None,
            max_request_body: 16 * MIB,
            max_sessions: 1000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    /// `None` defers to `DOCKER_HOST` and then the local socket, as the docker CLI does.
    pub host: Option<String>,
}

/// One pool, fully resolved: built-in defaults, then `[defaults]`, then `[pools.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub image: String,
    pub min: usize,
    pub max: usize,
    pub warm: usize,
    pub health_check_interval: Duration,
    pub max_age: Duration,
    pub max_uses: u64,
    pub idle_timeout: Duration,
    pub scale_up_threshold: f64,
    pub scale_down_threshold: f64,
    pub scale_interval: Duration,
    pub task_timeout: Duration,
    pub acquire_timeout: Duration,
    pub on_exhausted: OnExhausted,
    pub max_queue: usize,
    /// Bytes per stream.
    pub max_output: u64,
    pub pids_limit: i64,
    pub workdir: String,
    pub exec: ExecMode,
    pub health_cmd: Option<Vec<String>>,
    pub session_idle_timeout: Duration,
    pub reset_workdir: bool,
    pub session_end_command: Option<Vec<String>>,
    /// Bytes; `None` leaves the container unlimited, as Docker does.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub network: NetworkMode,
    pub env: BTreeMap<String, String>,
    pub security: SecurityConfig,
}

impl PoolConfig {
    /// A pool with the built-in defaults, the single source of them; also handy for tests
    /// elsewhere in the daemon that need a pool without writing a file.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        PoolConfig {
            name: name.into(),
            image: image.into(),
            min: 1,
            max: 10,
            warm: 2,
            health_check_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
            max_uses: 100,
            idle_timeout: Duration::from_secs(600),
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
            scale_interval: Duration::from_secs(5),
            task_timeout: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(30),
            on_exhausted: OnExhausted::Wait,
            max_queue: 1000,
            max_output: 4 * MIB,
            pids_limit: 256,
            workdir: "/work".to_string(),
            exec: ExecMode::Shim,
            health_cmd: None,
            session_idle_timeout: Duration::from_secs(300),
            reset_workdir: true,
            session_end_command: None,
            memory: None,
            cpus: None,
            network: NetworkMode::None,
            env: BTreeMap::new(),
            security: SecurityConfig::default(),
        }
    }
}

/// What a task gets when every container of its pool is busy and the pool is at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    Wait,
    Fail,
    Cold,
}

impl OnExhausted {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecMode {
    Shim,
    DockerExec,
}

impl ExecMode {
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

/// Serialized as the string written in `pools.toml`, so status output reads like the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NetworkMode {
    None,
    /// A bridge network of the pool's own, so that pools cannot reach each other.
    Isolated,
    /// An existing network, created and owned by the operator.
    Named(String),
}

impl NetworkMode {
    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Isolated => "isolated",
            NetworkMode::Named(name) => name,
        }
    }
}

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

/// Locked down by default: task commands are untrusted agent output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    pub read_only_rootfs: bool,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub user: String,
    pub runtime: Option<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            read_only_rootfs: true,
            cap_drop: vec!["ALL".to_string()],
            no_new_privileges: true,
            user: "1000:1000".to_string(),
            runtime: None,
        }
    }
}

/// Why a config was refused. `Io` keeps its source in an `Arc` so the error can be cloned
/// (a reload keeps the last error around to report it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems of an invalid file, empty for an unreadable one.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One thing wrong with the file, placed where an editor can jump to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `file_name` only labels the problems, so tests and reloads can parse from memory.
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let mut cx = Ctx::new(text, file_name);
        let doc = match ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let at = cx.span_pos(e.span()).unwrap_or(Pos { line: 1, col: 1 });
                let message = e.message().trim().replace('\n', ": ");
                cx.report(at, format!("invalid TOML: {message}"));
                return Err(ConfigError::Invalid(cx.problems));
            }
        };
        let config = cx.document(doc.as_table());
        if cx.problems.is_empty() {
            Ok(config)
        } else {
            let mut problems = cx.problems;
            problems.sort_by_key(|p| (p.line, p.col));
            Err(ConfigError::Invalid(problems))
        }
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

// ---------------------------------------------------------------------------------------
// Reading: every key is checked where it is written, so a bad `[defaults]` value is
// reported once rather than once per pool that inherits it.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    line: usize,
    col: usize,
}

/// A value as one layer (`[defaults]` or `[pools.NAME]`) wrote it. `Bad` is kept apart
/// from `Unset` so that a broken value does not fall back to a default and then trip a
/// cross-field check the operator never wrote.
#[derive(Debug, Clone, Default)]
enum Slot<T> {
    #[default]
    Unset,
    Bad,
    Set(Setting<T>),
}

#[derive(Debug, Clone)]
struct Setting<T> {
    value: T,
    at: Pos,
    /// Where it was written (`defaults.min` or `pools.coder.min`), for messages.
    path: String,
    /// As written in the file, so messages quote the operator's own text.
    shown: String,
}

impl<T: Clone> Slot<T> {
    fn or(&self, builtin: T) -> T {
        match self {
            Slot::Set(s) => s.value.clone(),
            _ => builtin,
        }
    }

    fn opt(&self) -> Option<T> {
        match self {
            Slot::Set(s) => Some(s.value.clone()),
            _ => None,
        }
    }

    fn is_bad(&self) -> bool {
        matches!(self, Slot::Bad)
    }

    /// How close to the pool the value was written; problems point at the closest one.
    fn rank(&self) -> u8 {
        match self {
            Slot::Set(s) if s.path.starts_with("pools") => 2,
            Slot::Set(_) => 1,
            _ => 0,
        }
    }
}

fn layered<'s, T>(pool: &'s Slot<T>, defaults: &'s Slot<T>) -> &'s Slot<T> {
    match pool {
        Slot::Unset => defaults,
        other => other,
    }
}

#[derive(Default)]
struct Layer {
    image: Slot<String>,
    min: Slot<usize>,
    max: Slot<usize>,
    warm: Slot<usize>,
    health_check_interval: Slot<Duration>,
    max_age: Slot<Duration>,
    max_uses: Slot<u64>,
    idle_timeout: Slot<Duration>,
    scale_up_threshold: Slot<f64>,
    scale_down_threshold: Slot<f64>,
    scale_interval: Slot<Duration>,
    task_timeout: Slot<Duration>,
    acquire_timeout: Slot<Duration>,
    on_exhausted: Slot<OnExhausted>,
    max_queue: Slot<usize>,
    max_output: Slot<u64>,
    pids_limit: Slot<i64>,
    workdir: Slot<String>,
    exec: Slot<ExecMode>,
    health_cmd: Slot<Vec<String>>,
    session_idle_timeout: Slot<Duration>,
    reset_workdir: Slot<bool>,
    session_end_command: Slot<Vec<String>>,
    memory: Slot<u64>,
    cpus: Slot<f64>,
    network: Slot<NetworkMode>,
    env: Slot<BTreeMap<String, String>>,
    security: SecurityLayer,
}

#[derive(Default)]
struct SecurityLayer {
    read_only_rootfs: Slot<bool>,
    cap_drop: Slot<Vec<String>>,
    no_new_privileges: Slot<bool>,
    user: Slot<String>,
    runtime: Slot<String>,
}

/// The kinds of table, so an unknown key can be told where it belongs instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Top,
    Server,
    Docker,
    Layer,
    Security,
}

const TOP_KEYS: &[&str] = &["server", "docker", "defaults", "pools"];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "unix_socket",
    "token_file",
    "max_request_body",
    "max_sessions",
    "shutdown_grace",
];
const DOCKER_KEYS: &[&str] = &["host"];
const LAYER_KEYS: &[&str] = &[
    "image",
    "min",
    "max",
    "warm",
    "health_check_interval",
    "max_age",
    "max_uses",
    "idle_timeout",
    "scale_up_threshold",
    "scale_down_threshold",
    "scale_interval",
    "task_timeout",
    "acquire_timeout",
    "on_exhausted",
    "max_queue",
    "max_output",
    "pids_limit",
    "workdir",
    "exec",
    "health_cmd",
    "session_idle_timeout",
    "reset_workdir",
    "session_end_command",
    "memory",
    "cpus",
    "network",
    "env",
    "security",
];
const SECURITY_KEYS: &[&str] = &[
    "read_only_rootfs",
    "cap_drop",
    "no_new_privileges",
    "user",
    "runtime",
];

impl Section {
    const ALL: [Section; 5] = [
        Section::Top,
        Section::Server,
        Section::Docker,
        Section::Layer,
        Section::Security,
    ];

    fn keys(self) -> &'static [&'static str] {
        match self {
            Section::Top => TOP_KEYS,
            Section::Server => SERVER_KEYS,
            Section::Docker => DOCKER_KEYS,
            Section::Layer => LAYER_KEYS,
            Section::Security => SECURITY_KEYS,
        }
    }

    /// Where keys of `self` go, seen from a table of kind `from` at `prefix`.
    fn place(self, from: Section, prefix: &str) -> String {
        match (self, from) {
            (Section::Top, _) => "the top level".to_string(),
            (Section::Server, _) => "[server]".to_string(),
            (Section::Docker, _) => "[docker]".to_string(),
            (Section::Security, Section::Layer) => format!("[{prefix}.security]"),
            (Section::Security, _) => "[defaults.security] or [pools.NAME.security]".to_string(),
            (Section::Layer, Section::Security) => {
                format!("[{}]", prefix.strip_suffix(".security").unwrap_or(prefix))
            }
            (Section::Layer, _) => "[defaults] or [pools.NAME]".to_string(),
        }
    }
}

/// One key of a table with everything needed to report on it.
struct Entry<'d> {
    name: &'d str,
    path: String,
    key_at: Pos,
    /// The value, or the header of a table.
    at: Pos,
    item: &'d Item,
}

struct Ctx<'t> {
    text: &'t str,
    file: &'t str,
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
}

const NO_POOLS: &str = "no pools defined: add at least one [pools.NAME] table with an image";

type Check = fn(&str) -> Result<(), String>;

impl<'t> Ctx<'t> {
    fn new(text: &'t str, file: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            text,
            file,
            line_starts,
            problems: Vec::new(),
        }
    }

    fn pos(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset.saturating_sub(start), |s| s.chars().count());
        Pos { line, col: col + 1 }
    }

    fn span_pos(&self, span: Option<Range<usize>>) -> Option<Pos> {
        span.map(|r| self.pos(r.start))
    }

    fn value_pos(&self, v: &Value, fallback: Pos) -> Pos {
        self.span_pos(v.span()).unwrap_or(fallback)
    }

    /// Identical problems are dropped: a `[defaults]` value that conflicts with another
    /// `[defaults]` value would otherwise be reported once per pool.
    fn report(&mut self, at: Pos, message: impl Into<String>) {
        let problem = Problem {
            file: self.file.to_string(),
            line: at.line,
            col: at.col,
            message: message.into(),
        };
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// The value as the operator wrote it, kept short enough for one line.
    fn shown(&self, v: &Value) -> String {
        let raw = v
            .span()
            .and_then(|r| self.text.get(r))
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string().trim().to_string());
        let flat = if raw.contains('\n') {
            raw.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            raw
        };
        if flat.chars().count() > 60 {
            format!("{}...", flat.chars().take(57).collect::<String>())
        } else {
            flat
        }
    }

    fn entries<'d>(&self, table: &'d dyn TableLike, prefix: &str) -> Vec<Entry<'d>> {
        // Parsed keys always carry a span; the fallback only keeps this total.
        let fallback = Pos { line: 1, col: 1 };
        table
            .iter()
            .map(|(name, item)| {
                let key_at = table
                    .get_key_value(name)
                    .and_then(|(k, _)| self.span_pos(k.span()))
                    .unwrap_or(fallback);
                let at = self.span_pos(item.span()).unwrap_or(key_at);
                Entry {
                    name,
                    path: join(prefix, name),
                    key_at,
                    at,
                    item,
                }
            })
            .collect()
    }

    fn unknown(&mut self, e: &Entry<'_>, section: Section, prefix: &str) {
        let mut message = format!("unknown key {}", e.path);
        if let Some(home) = Section::ALL
            .into_iter()
            .find(|s| *s != section && s.keys().contains(&e.name))
        {
            message += &format!(": {} belongs in {}", e.name, home.place(section, prefix));
        } else if section == Section::Top && looks_like_pool(e.item) {
            message += &format!(": pools are declared as [pools.{}]", e.name);
        } else if let Some(near) = did_you_mean(e.name, section.keys()) {
            message += &format!(": did you mean {near}?");
        } else if section == Section::Layer {
            message += ": remove it or fix its spelling";
        } else {
            message += &format!(
                ": remove it; {} takes {}",
                if prefix.is_empty() {
                    "the top level"
                } else {
                    prefix
                },
                section.keys().join(", ")
            );
        }
        self.report(e.key_at, message);
    }

    fn table<'d>(&mut self, e: &Entry<'d>) -> Option<&'d dyn TableLike> {
        match e.item.as_table_like() {
            Some(t) => Some(t),
            None => {
                let what = match e.item {
                    Item::ArrayOfTables(_) => "an array of tables".to_string(),
                    Item::Value(v) => format!("{} ({})", kind(v), self.shown(v)),
                    _ => "empty".to_string(),
                };
                self.report(
                    e.at,
                    format!(
                        "{} must be a table such as [{}], not {what}",
                        e.path, e.path
                    ),
                );
                None
            }
        }
    }

    fn value<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d Value> {
        match e.item {
            Item::Value(v) => Some(v),
            Item::Table(_) => {
                self.report(e.at, format!("{} must be {expected}, not a table", e.path));
                None
            }
            Item::ArrayOfTables(_) => {
                let message = format!("{} must be {expected}, not an array of tables", e.path);
                self.report(e.at, message);
                None
            }
            Item::None => None,
        }
    }

    fn wrong_type(&mut self, path: &str, v: &Value, expected: &str, fallback: Pos) {
        let message = format!(
            "{path} ({}) must be {expected}, not {}",
            self.shown(v),
            kind(v)
        );
        self.report(self.value_pos(v, fallback), message);
    }

    /// Reports `{path} ({value}) {tail}` at the value.
    fn bad_value(&mut self, path: &str, v: &Value, tail: &str, fallback: Pos) {
        let message = format!("{path} ({}) {tail}", self.shown(v));
        self.report(self.value_pos(v, fallback), message);
    }

    fn set<T>(&self, e: &Entry<'_>, v: &Value, value: T) -> Slot<T> {
        Slot::Set(Setting {
            value,
            at: self.value_pos(v, e.at),
            path: e.path.clone(),
            shown: self.shown(v),
        })
    }

    fn text(&mut self, e: &Entry<'_>, expected: &str, check: Check) -> Slot<String> {
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        match check(s) {
            Ok(()) => self.set(e, v, s.to_string()),
            Err(tail) => {
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    fn count<T: TryFrom<i64>>(&mut self, e: &Entry<'_>, least: i64, why: &str) -> Slot<T> {
        let expected = "a whole number";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(n) = v.as_integer() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        if n < least {
            let tail = if least == 0 {
                "must not be negative".to_string()
            } else {
                format!("must be at least {least}{why}")
            };
            self.bad_value(&e.path, v, &tail, e.at);
            return Slot::Bad;
        }
        match T::try_from(n) {
            Ok(t) => self.set(e, v, t),
            Err(_) => {
                self.bad_value(&e.path, v, "is too large", e.at);
                Slot::Bad
            }
        }
    }

    /// `zero` says why zero makes no sense for this field, or `None` when it does.
    fn duration(&mut self, e: &Entry<'_>, zero: Option<&str>) -> Slot<Duration> {
        let expected = "a duration string such as \"30s\", \"5m\" or \"1h\"";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() && zero.is_some() => {
                let tail = format!("must be longer than zero: {}", zero.unwrap_or_default());
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
            Ok(d) => self.set(e, v, d),
            Err(err) => {
                let reason = match err {
                    humantime::DurationError::UnknownUnit { unit, .. } => {
                        format!("unknown unit \"{unit}\"")
                    }
                    other => other.to_string(),
                };
                let tail = format!(
                    "is not a duration ({reason}): write a number and a unit, such as \
                     \"500ms\", \"30s\", \"5m\", \"1h\" or \"1h 30m\""
                );
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    fn size(&mut self, e: &Entry<'_>, least: u64, why: &str) -> Slot<u64> {
        let expected = "a size string such as \"512MiB\"";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let bytes = match v {
            Value::String(s) => {
                parse_size(s.value()).map_err(|err| format!("is not a valid size: {err}"))
            }
            Value::Integer(i) => u64::try_from(*i.value())
                .map_err(|_| "must not be negative; write a size such as \"512MiB\"".to_string()),
            _ => {
                self.wrong_type(&e.path, v, expected, e.at);
                return Slot::Bad;
            }
        };
        match bytes {
            Ok(b) if b < least => {
                let tail = format!(
                    "is too small: it must be at least {}{why}",
                    human_size(least)
                );
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
            Ok(b) => self.set(e, v, b),
            Err(tail) => {
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    /// Integers are accepted too: `cpus = 2` is a perfectly clear number of CPUs.
    fn number(&mut self, e: &Entry<'_>, expected: &str) -> Option<(f64, Value)> {
        let v = self.value(e, expected)?;
        match v {
            Value::Float(f) => Some((*f.value(), v.clone())),
            Value::Integer(i) => Some((*i.value() as f64, v.clone())),
            _ => {
                self.wrong_type(&e.path, v, expected, e.at);
                None
            }
        }
    }

    fn fraction(&mut self, e: &Entry<'_>) -> Slot<f64> {
        let Some((f, v)) = self.number(e, "a fraction such as 0.8") else {
            return Slot::Bad;
        };
        if f > 0.0 && f <= 1.0 {
            self.set(e, &v, f)
        } else {
            let tail = "must be above 0 and at most 1: it is a fraction of utilization \
                        (busy / live containers)";
            self.bad_value(&e.path, &v, tail, e.at);
            Slot::Bad
        }
    }

    fn cpus(&mut self, e: &Entry<'_>) -> Slot<f64> {
        let Some((f, v)) = self.number(e, "a number of CPUs such as 0.5 or 2") else {
            return Slot::Bad;
        };
        if f.is_finite() && f > 0.0 {
            self.set(e, &v, f)
        } else {
            let tail = "must be a number of CPUs above 0, such as 0.5 or 2; leave cpus out \
                        for no limit";
            self.bad_value(&e.path, &v, tail, e.at);
            Slot::Bad
        }
    }

    fn boolean(&mut self, e: &Entry<'_>) -> Slot<bool> {
        let expected = "true or false";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        match v.as_bool() {
            Some(b) => self.set(e, v, b),
            None => {
                self.wrong_type(&e.path, v, expected, e.at);
                Slot::Bad
            }
        }
    }

    fn choice<T: Copy>(&mut self, e: &Entry<'_>, options: &[(&str, T)]) -> Slot<T> {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let expected = format!("one of {}", names.join(", "));
        let Some(v) = self.value(e, &expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, &expected, e.at);
            return Slot::Bad;
        };
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, t)) => self.set(e, v, *t),
            None => {
                self.bad_value(&e.path, v, &format!("must be {expected}"), e.at);
                Slot::Bad
            }
        }
    }

    /// A list of strings, each checked in place so the problem points at the element.
    fn strings(&mut self, e: &Entry<'_>, expected: &str, check: Check) -> Option<Vec<String>> {
        let v = self.value(e, expected)?;
        let Some(array) = v.as_array() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in array.iter().enumerate() {
            let path = format!("{}[{i}]", e.path);
            match item.as_str() {
                Some(s) => match check(s) {
                    Ok(()) => out.push(s.to_string()),
                    Err(tail) => {
                        self.bad_value(&path, item, &tail, e.at);
                        ok = false;
                    }
                },
                None => {
                    self.wrong_type(&path, item, "a string", e.at);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn argv(&mut self, e: &Entry<'_>) -> Slot<Vec<String>> {
        let expected = "a command as a list of strings, such as [\"sh\", \"-c\", \"true\"]";
        let Some(args) = self.strings(e, expected, |_| Ok(())) else {
            return Slot::Bad;
        };
        let Item::Value(v) = e.item else {
            return Slot::Bad;
        };
        match args.first() {
            None => {
                let tail = "must name at least the program to run, such as [\"true\"]; leave \
                            the key out for none";
                self.bad_value(&e.path, v, tail, e.at);
                Slot::Bad
            }
            Some(program) if program.trim().is_empty() => {
                let first = v.as_array().and_then(|a| a.get(0)).unwrap_or(v);
                let path = format!("{}[0]", e.path);
                self.bad_value(&path, first, "must name the program to run", e.at);
                Slot::Bad
            }
            Some(_) => self.set(e, v, args),
        }
    }

    fn env(&mut self, e: &Entry<'_>) -> Slot<BTreeMap<String, String>> {
        let Some(table) = e.item.as_table_like() else {
            if let Item::Value(v) = e.item {
                let expected = "a table of strings, such as { KEY = \"value\" }";
                self.wrong_type(&e.path, v, expected, e.at);
            } else {
                self.table(e);
            }
            return Slot::Bad;
        };
        let mut vars = BTreeMap::new();
        for var in self.entries(table, &e.path) {
            if var.name.is_empty() {
                self.report(var.key_at, format!("{} has an empty variable name", e.path));
                continue;
            }
            if var.name.contains('=') || var.name.contains('\0') {
                let message = format!(
                    "{}: variable name \"{}\" must not contain '=' or NUL (the environment \
                     separates name and value with '=')",
                    e.path, var.name
                );
                self.report(var.key_at, message);
                continue;
            }
            match var.item.as_value() {
                Some(Value::String(s)) => {
                    vars.insert(var.name.to_string(), s.value().clone());
                }
                Some(v) => {
                    let tail = format!(
                        "must be a string: quote it, {} = \"{}\"",
                        var.name,
                        self.shown(v).trim_matches('"')
                    );
                    self.bad_value(&var.path, v, &tail, var.at);
                }
                None => {
                    let message = format!("{} must be a string, not a table", var.path);
                    self.report(var.at, message);
                }
            }
        }
        Slot::Set(Setting {
            value: vars,
            at: e.at,
            path: e.path.clone(),
            shown: String::new(),
        })
    }

    fn document(&mut self, root: &dyn TableLike) -> Config {
        let mut server = ServerConfig::default();
        let mut docker = DockerConfig::default();
        let mut defaults = Layer::default();
        let mut pools = Vec::new();
        let mut saw_pools = false;
        for e in self.entries(root, "") {
            match e.name {
                "server" => {
                    if let Some(t) = self.table(&e) {
                        server = self.server(t);
                    }
                }
                "docker" => {
                    if let Some(t) = self.table(&e) {
                        docker = self.docker(t);
                    }
                }
                "defaults" => {
                    if let Some(t) = self.table(&e) {
                        defaults = self.layer(t, "defaults");
                    }
                }
                "pools" => {
                    saw_pools = true;
                    if let Some(t) = self.table(&e) {
                        if t.is_empty() {
                            self.report(e.at, NO_POOLS);
                        }
                        pools = self.pools(t);
                    }
                }
                _ => self.unknown(&e, Section::Top, ""),
            }
        }
        if !saw_pools {
            self.report(Pos { line: 1, col: 1 }, NO_POOLS);
        }
        let pools = pools
            .into_iter()
            .map(|(name, at, layer)| {
                let pool = self.resolve(&name, at, &layer, &defaults);
                (name, pool)
            })
            .collect();
        Config {
            server,
            docker,
            pools,
        }
    }

    fn server(&mut self, table: &dyn TableLike) -> ServerConfig {
        let mut server = ServerConfig::default();
        let mut listen_off = None;
        let mut socket_bad = false;
        for e in self.entries(table, "server") {
            match e.name {
                "listen" => {
                    let expected = "an address such as \"127.0.0.1:7070\"";
                    if let Slot::Set(s) = self.text(&e, expected, check_listen) {
                        server.listen = s.value.parse().ok();
                        if server.listen.is_none() {
                            listen_off = Some(s.at);
                        }
                    }
                }
                "unix_socket" => {
                    let expected = "a path such as \"/run/warmpool/api.sock\"";
                    match self.text(&e, expected, check_absolute) {
                        Slot::Set(s) => server.unix_socket = Some(PathBuf::from(s.value)),
                        // Already reported; do not also claim that it is missing.
                        _ => socket_bad = true,
                    }
                }
                "token_file" => {
                    let expected = "a path such as \"/etc/warmpool/token\"";
                    if let Slot::Set(s) = self.text(&e, expected, check_path) {
                        server.token_file = Some(PathBuf::from(s.value));
                    }
                }
                "max_request_body" => {
                    let why = ": a task request must fit in it";
                    server.max_request_body = self.size(&e, KIB, why).or(server.max_request_body);
                }
                "max_sessions" => {
                    let why = ": with 0 no session could ever start";
                    server.max_sessions = self.count(&e, 1, why).or(server.max_sessions);
                }
                "shutdown_grace" => {
                    server.shutdown_grace = self.duration(&e, None).or(server.shutdown_grace);
                }
                _ => self.unknown(&e, Section::Server, "server"),
            }
        }
        if let (Some(at), None, false) = (listen_off, &server.unix_socket, socket_bad) {
            self.report(
                at,
                "server.listen (\"\") turns the TCP listener off, but server.unix_socket is \
                 not set, so nothing would serve the API: set unix_socket or a listen address",
            );
        }
        server
    }

    fn docker(&mut self, table: &dyn TableLike) -> DockerConfig {
        let mut docker = DockerConfig::default();
        for e in self.entries(table, "docker") {
            match e.name {
                "host" => {
                    let expected = "a URL such as \"unix:///var/run/docker.sock\"";
                    docker.host = self.text(&e, expected, check_docker_host).opt();
                }
                _ => self.unknown(&e, Section::Docker, "docker"),
            }
        }
        docker
    }

    fn pools(&mut self, table: &dyn TableLike) -> Vec<(String, Pos, Layer)> {
        let mut pools = Vec::new();
        for e in self.entries(table, "pools") {
            if let Err(why) = check_pool_name(e.name) {
                let mut message = format!("pool name \"{}\" {why}", e.name);
                let lower = e.name.to_ascii_lowercase();
                if lower != e.name && check_pool_name(&lower).is_ok() {
                    message += &format!(" (try \"{lower}\")");
                }
                self.report(e.key_at, message);
            }
            if let Some(t) = self.table(&e) {
                let layer = self.layer(t, &e.path);
                pools.push((e.name.to_string(), e.at, layer));
            }
        }
        pools
    }

    fn layer(&mut self, table: &dyn TableLike, prefix: &str) -> Layer {
        let mut l = Layer::default();
        for e in self.entries(table, prefix) {
            let e = &e;
            match e.name {
                "image" => {
                    let expected = "an image reference such as \"warmpool/agent:latest\"";
                    l.image = self.text(e, expected, check_image);
                }
                "min" => l.min = self.count(e, 0, ""),
                "max" => l.max = self.count(e, 1, ": a pool needs room for one container"),
                "warm" => l.warm = self.count(e, 0, ""),
                "health_check_interval" => {
                    let why = "the supervisor would probe without pause; \"30s\" is usual";
                    l.health_check_interval = self.duration(e, Some(why));
                }
                "max_age" => {
                    let why = "every container would be replaced as soon as it started; \
                               set a long age such as \"24h\" instead";
                    l.max_age = self.duration(e, Some(why));
                }
                "max_uses" => {
                    let why = ": 1 gives a fresh container per task";
                    l.max_uses = self.count(e, 1, why);
                }
                "idle_timeout" => {
                    let why = "idle containers above min would be removed at once; \
                               set a short timeout such as \"1m\" instead";
                    l.idle_timeout = self.duration(e, Some(why));
                }
                "scale_up_threshold" => l.scale_up_threshold = self.fraction(e),
                "scale_down_threshold" => l.scale_down_threshold = self.fraction(e),
                "scale_interval" => {
                    let why = "the autoscaler would run without pause; \"5s\" is usual";
                    l.scale_interval = self.duration(e, Some(why));
                }
                "task_timeout" => {
                    let why = "every task would time out at once";
                    l.task_timeout = self.duration(e, Some(why));
                }
                "acquire_timeout" => {
                    let why = "to refuse tasks at once when no container is free, set \
                               on_exhausted = \"fail\" instead";
                    l.acquire_timeout = self.duration(e, Some(why));
                }
                "on_exhausted" => {
                    l.on_exhausted = self.choice(
                        e,
                        &[
                            ("wait", OnExhausted::Wait),
                            ("fail", OnExhausted::Fail),
                            ("cold", OnExhausted::Cold),
                        ],
                    );
                }
                "max_queue" => l.max_queue = self.count(e, 0, ""),
                "max_output" => {
                    let why = " (it bounds what a task's output may cost the daemon; to \
                               discard output, redirect it in the command)";
                    l.max_output = self.size(e, 1, why);
                }
                "pids_limit" => {
                    let why = ": it caps the processes of one container (there is no \
                               unlimited setting)";
                    l.pids_limit = self.count(e, 1, why);
                }
                "workdir" => {
                    l.workdir = self.text(e, "an absolute path such as \"/work\"", check_workdir);
                }
                "exec" => {
                    l.exec = self.choice(
                        e,
                        &[
                            ("shim", ExecMode::Shim),
                            ("docker-exec", ExecMode::DockerExec),
                        ],
                    );
                }
                "health_cmd" => l.health_cmd = self.argv(e),
                "session_idle_timeout" => {
                    let why = "every session would end as soon as it started";
                    l.session_idle_timeout = self.duration(e, Some(why));
                }
                "reset_workdir" => l.reset_workdir = self.boolean(e),
                "session_end_command" => l.session_end_command = self.argv(e),
                "memory" => {
                    let why = " (Docker's minimum); leave memory out for no limit";
                    l.memory = self.size(e, DOCKER_MIN_MEMORY, why);
                }
                "cpus" => l.cpus = self.cpus(e),
                "network" => {
                    let expected = "\"none\", \"isolated\" or the name of an existing network";
                    l.network = match self.text(e, expected, check_network) {
                        Slot::Set(s) => Slot::Set(Setting {
                            value: NetworkMode::from(s.value),
                            at: s.at,
                            path: s.path,
                            shown: s.shown,
                        }),
                        Slot::Bad => Slot::Bad,
                        Slot::Unset => Slot::Unset,
                    };
                }
                "env" => l.env = self.env(e),
                "security" => {
                    if let Some(t) = self.table(e) {
                        l.security = self.security(t, &e.path);
                    }
                }
                _ => self.unknown(e, Section::Layer, prefix),
            }
        }
        l
    }

    fn security(&mut self, table: &dyn TableLike, prefix: &str) -> SecurityLayer {
        let mut s = SecurityLayer::default();
        for e in self.entries(table, prefix) {
            let e = &e;
            match e.name {
                "read_only_rootfs" => s.read_only_rootfs = self.boolean(e),
                "no_new_privileges" => s.no_new_privileges = self.boolean(e),
                "cap_drop" => {
                    let expected = "a list of capabilities such as [\"ALL\"]";
                    s.cap_drop = match (self.strings(e, expected, check_capability), e.item) {
                        (Some(caps), Item::Value(v)) => self.set(e, v, caps),
                        _ => Slot::Bad,
                    };
                }
                "user" => {
                    let expected = "a user such as \"1000:1000\"";
                    s.user = self.text(e, expected, check_user);
                }
                "runtime" => {
                    let expected = "the name of an OCI runtime such as \"runsc\"";
                    s.runtime = self.text(e, expected, check_runtime);
                }
                _ => self.unknown(e, Section::Security, prefix),
            }
        }
        s
    }

    /// Merges the layers and checks what only the merged pool can tell.
    fn resolve(&mut self, name: &str, header: Pos, p: &Layer, d: &Layer) -> PoolConfig {
        let b = PoolConfig::new(name, "");
        let path = join("pools", name);
        macro_rules! pick {
            ($($f:ident).+) => {
                layered(&p.$($f).+, &d.$($f).+)
            };
        }

        let image = pick!(image);
        if let Slot::Unset = image {
            let message =
                format!("{path}.image is not set: set image in [{path}] or in [defaults]");
            self.report(header, message);
        }

        let (min, max, warm) = (pick!(min), pick!(max), pick!(warm));
        let (min_v, max_v) = (min.or(b.min), max.or(b.max));
        let describe = |slot: &Slot<usize>, field: &str, builtin: usize| match slot {
            Slot::Set(s) => format!("{} ({})", s.path, s.shown),
            _ => format!("{field} ({builtin}, the built-in default)"),
        };
        if !min.is_bad() && !max.is_bad() && min_v > max_v {
            let at = closest(
                &[(min.rank(), at_of(min)), (max.rank(), at_of(max))],
                header,
            );
            let message = format!(
                "{} is larger than {}: raise max or lower min",
                describe(min, "min", b.min),
                describe(max, "max", b.max)
            );
            self.report(at, message);
        }
        // An unset warm follows min and max, so that `min = 5` alone does what it says
        // instead of failing on the built-in warm of 2.
        let warm_v = match warm {
            Slot::Set(s) => s.value,
            _ => b.warm.max(min_v).min(max_v),
        };
        let order_ok = !min.is_bad() && !max.is_bad() && min_v <= max_v;
        if let (Slot::Set(w), true) = (warm, order_ok) {
            if w.value < min_v {
                let at = closest(
                    &[(warm.rank(), at_of(warm)), (min.rank(), at_of(min))],
                    header,
                );
                let message = format!(
                    "{} is smaller than {}: raise warm or lower min",
                    describe(warm, "warm", b.warm),
                    describe(min, "min", b.min)
                );
                self.report(at, message);
            } else if w.value > max_v {
                let at = closest(
                    &[(warm.rank(), at_of(warm)), (max.rank(), at_of(max))],
                    header,
                );
                let message = format!(
                    "{} is larger than {}: lower warm or raise max",
                    describe(warm, "warm", b.warm),
                    describe(max, "max", b.max)
                );
                self.report(at, message);
            }
        }

        let (up, down) = (pick!(scale_up_threshold), pick!(scale_down_threshold));
        let (up_v, down_v) = (up.or(b.scale_up_threshold), down.or(b.scale_down_threshold));
        if !up.is_bad() && !down.is_bad() && down_v >= up_v {
            let describe = |slot: &Slot<f64>, field: &str, builtin: f64| match slot {
                Slot::Set(s) => format!("{} ({})", s.path, s.shown),
                _ => format!("{field} ({builtin}, the built-in default)"),
            };
            let at = closest(
                &[(down.rank(), at_of(down)), (up.rank(), at_of(up))],
                header,
            );
            let message = format!(
                "{} must be below {}: otherwise the pool would scale up and down at the same \
                 utilization",
                describe(down, "scale_down_threshold", b.scale_down_threshold),
                describe(up, "scale_up_threshold", b.scale_up_threshold)
            );
            self.report(at, message);
        }

        let mut env = d.env.or(BTreeMap::new());
        env.extend(p.env.or(BTreeMap::new()));
        let bs = &b.security;
        PoolConfig {
            name: name.to_string(),
            image: image.or(b.image.clone()),
            min: min_v,
            max: max_v,
            warm: warm_v,
            health_check_interval: pick!(health_check_interval).or(b.health_check_interval),
            max_age: pick!(max_age).or(b.max_age),
            max_uses: pick!(max_uses).or(b.max_uses),
            idle_timeout: pick!(idle_timeout).or(b.idle_timeout),
            scale_up_threshold: up_v,
            scale_down_threshold: down_v,
            scale_interval: pick!(scale_interval).or(b.scale_interval),
            task_timeout: pick!(task_timeout).or(b.task_timeout),
            acquire_timeout: pick!(acquire_timeout).or(b.acquire_timeout),
            on_exhausted: pick!(on_exhausted).or(b.on_exhausted),
            max_queue: pick!(max_queue).or(b.max_queue),
            max_output: pick!(max_output).or(b.max_output),
            pids_limit: pick!(pids_limit).or(b.pids_limit),
            workdir: pick!(workdir).or(b.workdir.clone()),
            exec: pick!(exec).or(b.exec),
            health_cmd: pick!(health_cmd).opt(),
            session_idle_timeout: pick!(session_idle_timeout).or(b.session_idle_timeout),
            reset_workdir: pick!(reset_workdir).or(b.reset_workdir),
            session_end_command: pick!(session_end_command).opt(),
            memory: pick!(memory).opt(),
            cpus: pick!(cpus).opt(),
            network: pick!(network).or(b.network.clone()),
            env,
            security: SecurityConfig {
                read_only_rootfs: pick!(security.read_only_rootfs).or(bs.read_only_rootfs),
                cap_drop: pick!(security.cap_drop).or(bs.cap_drop.clone()),
                no_new_privileges: pick!(security.no_new_privileges).or(bs.no_new_privileges),
                user: pick!(security.user).or(bs.user.clone()),
                runtime: pick!(security.runtime).opt(),
            },
        }
    }
}

fn at_of<T>(slot: &Slot<T>) -> Option<Pos> {
    match slot {
        Slot::Set(s) => Some(s.at),
        _ => None,
    }
}

/// The position of the most pool-specific setting among those in conflict, since that is
/// the one the operator most likely meant to change.
fn closest(candidates: &[(u8, Option<Pos>)], header: Pos) -> Pos {
    let mut best: Option<(u8, Pos)> = None;
    for (rank, at) in candidates {
        if let Some(at) = at {
            if best.is_none_or(|(r, _)| *rank > r) {
                best = Some((*rank, *at));
            }
        }
    }
    best.map_or(header, |(_, at)| at)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

fn join(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let name = if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    }
}

fn human_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// A top-level table that has an `image` was surely meant as a pool.
fn looks_like_pool(item: &Item) -> bool {
    item.as_table_like()
        .is_some_and(|t| t.contains_key("image"))
}

fn did_you_mean(unknown: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = unknown.to_ascii_lowercase();
    known
        .iter()
        .filter_map(|k| {
            let d = edit_distance(&lower, k);
            let longest = lower.len().max(k.len());
            let close = d <= (longest / 3).max(1);
            let shorter = lower.len().min(k.len());
            let prefix = shorter >= 3 && (k.starts_with(&lower) || lower.starts_with(k));
            (close || prefix).then_some((d, *k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting a swap of neighbours as one edit, the commonest typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn check_pool_name(name: &str) -> Result<(), String> {
    let why = "it ends up in container names, network names and metric labels";
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "must match [a-z0-9][a-z0-9_-]* (lower-case letters, digits, '_' and '-', not \
             starting with '_' or '-'): {why}"
        ));
    }
    if name.len() > 32 {
        return Err(format!(
            "is {} characters long, more than 32: {why}",
            name.len()
        ));
    }
    Ok(())
}

fn check_image(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("must not be empty: set an image such as \"warmpool/agent:latest\"".to_string())
    } else if s.chars().any(char::is_whitespace) {
        Err("must not contain whitespace: an image reference has none".to_string())
    } else {
        Ok(())
    }
}

fn check_workdir(s: &str) -> Result<(), String> {
    check_absolute(s)?;
    if s.trim_end_matches('/').is_empty() {
        return Err(
            "must not be \"/\": the workdir gets a tmpfs of its own and is wiped between tasks"
                .to_string(),
        );
    }
    if s.split('/').any(|c| c == "..") {
        return Err("must not contain \"..\"".to_string());
    }
    Ok(())
}

fn check_absolute(s: &str) -> Result<(), String> {
    check_path(s)?;
    if s.starts_with('/') {
        Ok(())
    } else {
        Err("must be an absolute path (starting with '/')".to_string())
    }
}

fn check_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("must not be empty: leave the key out instead".to_string())
    } else if s.contains('\0') {
        Err("must not contain NUL".to_string())
    } else {
        Ok(())
    }
}

fn check_listen(s: &str) -> Result<(), String> {
    if s.is_empty() || s.parse::<SocketAddr>().is_ok() {
        Ok(())
    } else {
        Err(
            "must be an IP address and port such as \"127.0.0.1:7070\" or \"[::1]:7070\" \
             (host names are not resolved); \"\" turns TCP off when unix_socket is set"
                .to_string(),
        )
    }
}

fn check_docker_host(s: &str) -> Result<(), String> {
    let schemes = [
        "unix://", "tcp://", "http://", "https://", "npipe://", "ssh://",
    ];
    if schemes
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
    {
        Ok(())
    } else {
        Err(
            "must be a URL such as \"unix:///var/run/docker.sock\" or \"tcp://host:2375\" \
             (schemes unix, tcp, http, https, npipe, ssh); leave it out to use DOCKER_HOST"
                .to_string(),
        )
    }
}

fn check_network(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(
            "must be \"none\", \"isolated\" (a bridge of the pool's own) or the name of an \
             existing Docker network ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                .to_string(),
        )
    }
}

fn check_capability(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("must be an upper-case capability name such as \"ALL\" or \"NET_RAW\"".to_string())
    }
}

fn check_user(s: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let mut chars = p.chars();
        let name = p.len() <= 32
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        digits || name
    };
    let ok = match s.split_once(':') {
        Some((user, group)) => part_ok(user) && part_ok(group),
        None => part_ok(s),
    };
    if ok {
        Ok(())
    } else {
        Err(
            "must be \"uid[:gid]\" such as \"1000:1000\", or a user name such as \"agent\" \
             (optionally \"name:group\")"
                .to_string(),
        )
    }
}

fn check_runtime(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        Err(
            "must name an OCI runtime the engine knows, such as \"runsc\"; leave it out for \
             the engine's default"
                .to_string(),
        )
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN.md section 1, comments included.
    const DESIGN_EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:7070"        # HTTP API and /metrics; loopback by default
# unix_socket = "/run/warmpool/api.sock"
# token_file = "/etc/warmpool/token"   # when set, /v1/* needs "Authorization: Bearer <token>"
max_request_body = "16MiB"
max_sessions = 1000              # live sessions at once; the least recently used is ended for a new one
shutdown_grace = "30s"           # how long running tasks may finish after SIGTERM

[docker]
# host = "unix:///var/run/docker.sock"   # default: DOCKER_HOST, then the local socket

[defaults]
min = 1                          # never fewer containers than this (0 = created on first task)
max = 10                         # never more
warm = 2                         # containers created at start (min <= warm <= max)
health_check_interval = "30s"
max_age = "1h"                   # replaced after this age (with jitter), never while busy
max_uses = 100                   # replaced after this many tasks (1 = a fresh container per task)
idle_timeout = "10m"             # idle containers above `min` are removed after this
scale_up_threshold = 0.8         # utilization = busy / live containers, as a fraction
scale_down_threshold = 0.2
scale_interval = "5s"            # how often the autoscaler looks
task_timeout = "5m"              # default per-task limit; a task may ask for less
acquire_timeout = "30s"          # how long a task may queue for a free container
on_exhausted = "wait"            # "wait" (queue up to acquire_timeout) | "fail" (503 at once) | "cold" (start one beyond max for this task)
max_queue = 1000                 # queued tasks beyond this are refused at once (429)
max_output = "4MiB"              # per stream; the rest is drained and dropped, flagged truncated
pids_limit = 256                 # per container; memory and cpus are set per pool (no default limit)
workdir = "/work"
exec = "shim"                    # "shim" (in-container agent, ~1 ms a task) | "docker-exec"
# health_cmd = ["true"]          # extra in-container probe; the shim's ping is always done
session_idle_timeout = "5m"      # a session with no task for this long is ended
reset_workdir = true             # wipe the workdir and /tmp after every pool task (a session's tasks share theirs)
# session_end_command = ["sh", "-c", "git -C /work commit -am wip && git -C /work push"]  # run before a session's container is recycled (state saving)

[defaults.security]
read_only_rootfs = true          # with tmpfs on /tmp and on the workdir
cap_drop = ["ALL"]
no_new_privileges = true
user = "1000:1000"
# runtime = "runsc"              # any OCI runtime the engine knows (gVisor, kata)

[pools.coder]
image = "warmpool/agent:latest"
min = 2
max = 8
memory = "512MiB"
cpus = 1.0
network = "isolated"             # "none" (default) | "isolated": a bridge of its own per pool | an existing network's name
env = { CODER_MODE = "true" }

[pools.tester]
image = "warmpool/agent:latest"
memory = "256MiB"
cpus = 0.5
env = { TEST_FRAMEWORKS = "pytest" }

[pools.reviewer]
image = "warmpool/agent:latest"
min = 0                          # lazy: no container until the first task
warm = 0
memory = "128MiB"
cpus = 0.25
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(text, "pools.toml") {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:#?}"),
        }
    }

    /// Asserts exactly one problem, at `line:col`, whose message contains every fragment.
    #[track_caller]
    fn one(text: &str, line: usize, col: usize, fragments: &[&str]) {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        assert_eq!((p[0].line, p[0].col), (line, col), "{}", p[0]);
        for f in fragments {
            assert!(p[0].message.contains(f), "{:?} lacks {f:?}", p[0].message);
        }
    }

    fn ok(text: &str) -> Config {
        Config::parse(text, "pools.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// One valid pool after `extra` lines of the pool table.
    fn pool(extra: &str) -> String {
        format!("[pools.coder]\nimage = \"img\"\n{extra}")
    }

    #[test]
    fn design_example_resolves() {
        let c = ok(DESIGN_EXAMPLE);
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.server.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(c.docker.host, None);
        assert_eq!(
            c.pools.keys().collect::<Vec<_>>(),
            ["coder", "reviewer", "tester"]
        );

        let coder = &c.pools["coder"];
        assert_eq!((coder.min, coder.max, coder.warm), (2, 8, 2));
        assert_eq!(coder.memory, Some(536_870_912));
        assert_eq!(coder.cpus, Some(1.0));
        assert_eq!(coder.network, NetworkMode::Isolated);
        assert_eq!(
            coder.env,
            BTreeMap::from([("CODER_MODE".to_string(), "true".to_string())])
        );

        let mut expected = PoolConfig::new("coder", "warmpool/agent:latest");
        expected.min = 2;
        expected.max = 8;
        expected.memory = Some(512 * MIB);
        expected.cpus = Some(1.0);
        expected.network = NetworkMode::Isolated;
        expected.env = coder.env.clone();
        assert_eq!(coder, &expected);

        let tester = &c.pools["tester"];
        assert_eq!((tester.min, tester.max, tester.warm), (1, 10, 2));
        assert_eq!(tester.memory, Some(256 * MIB));
        assert_eq!(tester.cpus, Some(0.5));
        assert_eq!(tester.network, NetworkMode::None);
        assert_eq!(tester.env["TEST_FRAMEWORKS"], "pytest");

        let reviewer = &c.pools["reviewer"];
        assert_eq!((reviewer.min, reviewer.max, reviewer.warm), (0, 10, 0));
        assert_eq!(reviewer.memory, Some(128 * MIB));
        assert_eq!(reviewer.cpus, Some(0.25));
        assert_eq!(reviewer.task_timeout, Duration::from_secs(300));
        assert_eq!(reviewer.security, SecurityConfig::default());
        assert_eq!(reviewer.max_output, 4 * MIB);
        assert_eq!(reviewer.exec, ExecMode::Shim);
        assert!(reviewer.env.is_empty());
    }

    #[test]
    fn minimal_file_gets_builtin_defaults() {
        let c = ok("[pools.a]\nimage = \"img\"\n");
        assert_eq!(c.pools["a"], PoolConfig::new("a", "img"));
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.docker, DockerConfig::default());
    }

    #[test]
    fn every_key_can_be_set_in_defaults_and_pools() {
        let body = r#"image = "img:1"
min = 0
max = 3
warm = 1
health_check_interval = "10s"
max_age = "2h"
max_uses = 1
idle_timeout = "1m"
scale_up_threshold = 1
scale_down_threshold = 0.5
scale_interval = "1s"
task_timeout = "1m"
acquire_timeout = "5s"
on_exhausted = "cold"
max_queue = 0
max_output = "1KiB"
pids_limit = 64
workdir = "/home/agent"
exec = "docker-exec"
health_cmd = ["true"]
session_idle_timeout = "1h"
reset_workdir = false
session_end_command = ["sh", "-c", "sync"]
memory = "1GiB"
cpus = 2
network = "agents-net"
env = { A = "1" }
security = { read_only_rootfs = false, cap_drop = ["NET_RAW"], no_new_privileges = false, user = "agent:agent", runtime = "runsc" }
"#;
        let expected = PoolConfig {
            name: "p".to_string(),
            image: "img:1".to_string(),
            min: 0,
            max: 3,
            warm: 1,
            health_check_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(7200),
            max_uses: 1,
            idle_timeout: Duration::from_secs(60),
            scale_up_threshold: 1.0,
            scale_down_threshold: 0.5,
            scale_interval: Duration::from_secs(1),
            task_timeout: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(5),
            on_exhausted: OnExhausted::Cold,
            max_queue: 0,
            max_output: 1024,
            pids_limit: 64,
            workdir: "/home/agent".to_string(),
            exec: ExecMode::DockerExec,
            health_cmd: Some(vec!["true".to_string()]),
            session_idle_timeout: Duration::from_secs(3600),
            reset_workdir: false,
            session_end_command: Some(vec!["sh".into(), "-c".into(), "sync".into()]),
            memory: Some(GIB),
            cpus: Some(2.0),
            network: NetworkMode::Named("agents-net".to_string()),
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            security: SecurityConfig {
                read_only_rootfs: false,
                cap_drop: vec!["NET_RAW".to_string()],
                no_new_privileges: false,
                user: "agent:agent".to_string(),
                runtime: Some("runsc".to_string()),
            },
        };
        // Every layer key appears in the body, so no key is read but left unresolved.
        for key in LAYER_KEYS {
            assert!(
                body.contains(&format!("\n{key} =")) || body.starts_with(key),
                "{key}"
            );
        }
        let in_pool = ok(&format!("[pools.p]\n{body}"));
        assert_eq!(in_pool.pools["p"], expected);
        let in_defaults = ok(&format!("[defaults]\n{body}[pools.p]\n"));
        assert_eq!(in_defaults.pools["p"], expected);
    }

    #[test]
    fn pool_overrides_defaults_env_and_security_merge() {
        let c = ok(r#"[defaults]
image = "base"
memory = "64MiB"
env = { A = "defaults", B = "defaults" }
[defaults.security]
user = "agent"
runtime = "runsc"
[pools.a]
env = { B = "pool", C = "pool" }
[pools.a.security]
cap_drop = ["NET_RAW"]
[pools.b]
image = "other"
memory = "128MiB"
"#);
        let a = &c.pools["a"];
        assert_eq!(a.image, "base");
        assert_eq!(a.memory, Some(64 * MIB));
        assert_eq!(
            a.env,
            BTreeMap::from([
                ("A".to_string(), "defaults".to_string()),
                ("B".to_string(), "pool".to_string()),
                ("C".to_string(), "pool".to_string()),
            ])
        );
        assert_eq!(a.security.user, "agent");
        assert_eq!(a.security.runtime.as_deref(), Some("runsc"));
        assert_eq!(a.security.cap_drop, ["NET_RAW"]);
        assert!(a.security.read_only_rootfs);
        let b = &c.pools["b"];
        assert_eq!((b.image.as_str(), b.memory), ("other", Some(128 * MIB)));
        assert_eq!(b.security.cap_drop, ["ALL"]);
    }

    #[test]
    fn other_toml_spellings_of_tables_work() {
        let c = ok(r#"pools.a.image = "img"
pools.a.security.user = "7"
[defaults.env]
D = "d"
"#);
        assert_eq!(c.pools["a"].security.user, "7");
        assert_eq!(c.pools["a"].env["D"], "d");
        let c = ok(r#"[pools.b]
image = "img"
security.user = "8:8"
[pools.b.env]
K = "v"
"#);
        assert_eq!(c.pools["b"].security.user, "8:8");
        assert_eq!(c.pools["b"].env["K"], "v");
        let c = ok(r#"[pools]
c = { image = "img", env.X = "y" }
"#);
        assert_eq!(c.pools["c"].env["X"], "y");
    }

    #[test]
    fn unset_warm_follows_min_and_max() {
        let c = ok(&pool("min = 5\n"));
        assert_eq!(c.pools["coder"].warm, 5);
        let c = ok(&pool("max = 1\n"));
        assert_eq!((c.pools["coder"].min, c.pools["coder"].warm), (1, 1));
    }

    #[test]
    fn listen_can_be_turned_off_for_a_unix_socket() {
        let c = ok(&format!(
            "[server]\nlisten = \"\"\nunix_socket = \"/run/w.sock\"\n{}",
            pool("")
        ));
        assert_eq!(c.server.listen, None);
        assert_eq!(c.server.unix_socket, Some(PathBuf::from("/run/w.sock")));
        let c = ok(&format!("[server]\nlisten = \"[::]:80\"\n{}", pool("")));
        assert_eq!(c.server.listen, Some("[::]:80".parse().unwrap()));
    }

    // ---- syntax and structure

    #[test]
    fn syntax_error_has_position() {
        one(
            "[pools.a]\nimage = \"img\"\nmin = \n",
            3,
            7,
            &["invalid TOML"],
        );
        one("[pools.a]\nimage = \"img\n", 2, 13, &["invalid TOML"]);
    }

    #[test]
    fn duplicate_key_is_a_syntax_error() {
        one(&pool("min = 1\nmin = 2\n"), 4, 1, &["duplicate key"]);
    }

    #[test]
    fn every_unknown_key_is_reported_with_suggestions() {
        let p = problems(
            r#"colour = 1
[server]
listne = "127.0.0.1:1"
[docker]
hots = "unix:///x"
[defaults]
healthcheck_interval = "1s"
[defaults.security]
usr = "1"
[pools.coder]
image = "img"
mem = "1GiB"
bogus = 1
[pools.coder.security]
runtim = "runsc"
"#,
        );
        let got: Vec<(usize, usize, &str)> = p
            .iter()
            .map(|p| (p.line, p.col, p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1, "unknown key colour: remove it; the top level takes server, docker, defaults, pools"),
                (3, 1, "unknown key server.listne: did you mean listen?"),
                (5, 1, "unknown key docker.hots: did you mean host?"),
                (7, 1, "unknown key defaults.healthcheck_interval: did you mean health_check_interval?"),
                (9, 1, "unknown key defaults.security.usr: did you mean user?"),
                (12, 1, "unknown key pools.coder.mem: did you mean memory?"),
                (13, 1, "unknown key pools.coder.bogus: remove it or fix its spelling"),
                (15, 1, "unknown key pools.coder.security.runtim: did you mean runtime?"),
            ]
        );
    }

    #[test]
    fn misplaced_key_says_where_it_belongs() {
        one(
            &pool("user = \"1000\"\n"),
            3,
            1,
            &["unknown key pools.coder.user: user belongs in [pools.coder.security]"],
        );
        one(
            &format!("[server]\nmemory = \"1GiB\"\n{}", pool("")),
            2,
            1,
            &["memory belongs in [defaults] or [pools.NAME]"],
        );
        one(
            &format!("{}[pools.coder.security]\nimage = \"x\"\n", pool("")),
            4,
            1,
            &["image belongs in [pools.coder]"],
        );
        one(
            "[coder]\nimage = \"img\"\n[pools.x]\nimage = \"img\"\n",
            1,
            2,
            &["unknown key coder: pools are declared as [pools.coder]"],
        );
    }

    #[test]
    fn sections_must_be_tables() {
        one(
            &format!("server = 5\n{}", pool("")),
            1,
            10,
            &["server must be a table such as [server], not an integer (5)"],
        );
        one(
            &format!("{}[[pools.b]]\nimage = \"img\"\n", pool("")),
            3,
            1,
            &["pools.b must be a table", "not an array of tables"],
        );
        one(
            &pool("security = \"strict\"\n"),
            3,
            12,
            &["pools.coder.security must be a table"],
        );
    }

    #[test]
    fn at_least_one_pool() {
        one("[server]\nmax_sessions = 5\n", 1, 1, &["no pools defined"]);
        one("[server]\n[pools]\n", 2, 1, &["no pools defined"]);
    }

    #[test]
    fn pool_name_rules() {
        one(
            "[pools.Coder]\nimage = \"img\"\n",
            1,
            8,
            &[
                "pool name \"Coder\" must match [a-z0-9][a-z0-9_-]*",
                "metric labels (try \"coder\")",
            ],
        );
        one(
            "[pools._x]\nimage = \"img\"\n",
            1,
            8,
            &["pool name \"_x\" must match"],
        );
        let long = "a".repeat(33);
        one(
            &format!("[pools.{long}]\nimage = \"img\"\n"),
            1,
            8,
            &["is 33 characters long, more than 32", "container names"],
        );
        ok(&format!("[pools.{}]\nimage = \"img\"\n", "a".repeat(32)));
        ok("[pools.0-a_b]\nimage = \"img\"\n");
    }

    #[test]
    fn image_is_required_and_non_empty() {
        one(
            "[pools.coder]\nmin = 1\n",
            1,
            1,
            &["pools.coder.image is not set: set image in [pools.coder] or in [defaults]"],
        );
        one(
            "[pools.coder]\nimage = \"\"\n",
            2,
            9,
            &["pools.coder.image (\"\") must not be empty"],
        );
        one(
            "[defaults]\nimage = \"a b\"\n[pools.coder]\n",
            2,
            9,
            &["defaults.image (\"a b\") must not contain whitespace"],
        );
    }

    // ---- types and single values

    #[test]
    fn wrong_types_are_named() {
        one(
            &pool("min = \"5\"\n"),
            3,
            7,
            &["pools.coder.min (\"5\") must be a whole number, not a string"],
        );
        one(
            &pool("reset_workdir = \"yes\"\n"),
            3,
            17,
            &["pools.coder.reset_workdir (\"yes\") must be true or false, not a string"],
        );
        one(
            &pool("max_age = 3600\n"),
            3,
            11,
            &["pools.coder.max_age (3600) must be a duration string such as \"30s\""],
        );
        one(
            &pool("[pools.coder.min]\n"),
            3,
            1,
            &["pools.coder.min must be a whole number, not a table"],
        );
    }

    #[test]
    fn bad_duration() {
        one(
            &pool("max_age = \"30 parsecs\"\n"),
            3,
            11,
            &[
                "pools.coder.max_age (\"30 parsecs\") is not a duration (unknown unit \"parsecs\")",
                "\"30s\"",
            ],
        );
    }

    #[test]
    fn zero_durations_where_they_make_no_sense() {
        for (key, hint) in [
            ("health_check_interval", "probe without pause"),
            ("max_age", "replaced as soon as it started"),
            ("idle_timeout", "removed at once"),
            ("scale_interval", "without pause"),
            ("task_timeout", "time out at once"),
            ("acquire_timeout", "on_exhausted = \"fail\""),
            ("session_idle_timeout", "end as soon as it started"),
        ] {
            let text = pool(&format!("{key} = \"0s\"\n"));
            let col = key.len() + 4;
            one(
                &text,
                3,
                col,
                &[
                    &format!("pools.coder.{key} (\"0s\") must be longer than zero"),
                    hint,
                ],
            );
        }
        let c = ok(&format!("[server]\nshutdown_grace = \"0s\"\n{}", pool("")));
        assert_eq!(c.server.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn bad_enums() {
        one(
            &pool("on_exhausted = \"later\"\n"),
            3,
            16,
            &["pools.coder.on_exhausted (\"later\") must be one of \"wait\", \"fail\", \"cold\""],
        );
        one(
            &pool("exec = \"ssh\"\n"),
            3,
            8,
            &["pools.coder.exec (\"ssh\") must be one of \"shim\", \"docker-exec\""],
        );
    }

    #[test]
    fn bad_sizes() {
        one(
            &pool("memory = \"512M\"\n"),
            3,
            10,
            &["pools.coder.memory (\"512M\") is not a valid size: unit \"M\" is ambiguous"],
        );
        one(
            &pool("max_output = \"lots\"\n"),
            3,
            14,
            &[
                "pools.coder.max_output (\"lots\") is not a valid size",
                "\"512MiB\"",
            ],
        );
        one(
            &pool("max_output = -1\n"),
            3,
            14,
            &["pools.coder.max_output (-1) must not be negative"],
        );
    }

    #[test]
    fn memory_at_least_docker_minimum() {
        one(
            &pool("memory = \"4MiB\"\n"),
            3,
            10,
            &["pools.coder.memory (\"4MiB\") is too small: it must be at least 6MiB"],
        );
        assert_eq!(
            ok(&pool("memory = \"6MiB\"\n")).pools["coder"].memory,
            Some(6 * MIB)
        );
    }

    #[test]
    fn max_at_least_one() {
        one(
            &pool("max = 0\nmin = 0\nwarm = 0\n"),
            3,
            7,
            &["pools.coder.max (0) must be at least 1"],
        );
    }

    #[test]
    fn counts_not_negative() {
        one(
            &pool("min = -1\n"),
            3,
            7,
            &["pools.coder.min (-1) must not be negative"],
        );
        one(
            &pool("max_queue = -1\n"),
            3,
            13,
            &["pools.coder.max_queue (-1) must not be negative"],
        );
        assert_eq!(ok(&pool("max_queue = 0\n")).pools["coder"].max_queue, 0);
    }

    #[test]
    fn max_uses_at_least_one() {
        one(
            &pool("max_uses = 0\n"),
            3,
            12,
            &[
                "pools.coder.max_uses (0) must be at least 1",
                "fresh container per task",
            ],
        );
    }

    #[test]
    fn thresholds_are_fractions() {
        for (value, col) in [("0", 22), ("1.5", 22), ("-0.1", 22), ("nan", 22)] {
            one(
                &pool(&format!("scale_up_threshold = {value}\n")),
                3,
                col,
                &[&format!(
                    "pools.coder.scale_up_threshold ({value}) must be above 0 and at most 1"
                )],
            );
        }
        one(
            &pool("scale_down_threshold = \"low\"\n"),
            3,
            24,
            &["must be a fraction such as 0.8, not a string"],
        );
    }

    #[test]
    fn scale_down_below_scale_up() {
        one(
            &pool("scale_up_threshold = 0.5\nscale_down_threshold = 0.5\n"),
            4,
            24,
            &["pools.coder.scale_down_threshold (0.5) must be below pools.coder.scale_up_threshold (0.5)"],
        );
        one(
            &pool("scale_up_threshold = 0.1\n"),
            3,
            22,
            &["scale_down_threshold (0.2, the built-in default) must be below pools.coder.scale_up_threshold (0.1)"],
        );
    }

    #[test]
    fn min_not_above_max() {
        one(
            &pool("min = 5\nmax = 3\n"),
            3,
            7,
            &["pools.coder.min (5) is larger than pools.coder.max (3): raise max or lower min"],
        );
        // The problem points at the setting closest to the pool.
        one(
            "[defaults]\nmin = 5\n[pools.coder]\nimage = \"img\"\nmax = 3\n",
            5,
            7,
            &["defaults.min (5) is larger than pools.coder.max (3)"],
        );
        one(
            &pool("min = 12\nwarm = 12\n"),
            3,
            7,
            &["pools.coder.min (12) is larger than max (10, the built-in default)"],
        );
    }

    #[test]
    fn warm_between_min_and_max() {
        one(
            &pool("min = 3\nwarm = 1\n"),
            4,
            8,
            &["pools.coder.warm (1) is smaller than pools.coder.min (3): raise warm or lower min"],
        );
        one(
            &pool("max = 3\nwarm = 4\n"),
            4,
            8,
            &["pools.coder.warm (4) is larger than pools.coder.max (3): lower warm or raise max"],
        );
    }

    #[test]
    fn defaults_conflict_is_reported_once() {
        let text = "[defaults]\nmin = 5\nmax = 3\nimage = \"i\"\n[pools.a]\n[pools.b]\n";
        one(
            text,
            2,
            7,
            &["defaults.min (5) is larger than defaults.max (3)"],
        );
    }

    #[test]
    fn bad_value_in_defaults_is_reported_once_and_not_cascaded() {
        // min is bad in defaults; neither pool reports anything else about min.
        let text = "[defaults]\nmin = \"x\"\nimage = \"i\"\n[pools.a]\nmax = 1\n[pools.b]\n";
        one(text, 2, 7, &["defaults.min (\"x\") must be a whole number"]);
    }

    #[test]
    fn cpus_positive_and_finite() {
        for value in ["0", "-1", "inf", "nan"] {
            one(
                &pool(&format!("cpus = {value}\n")),
                3,
                8,
                &[&format!(
                    "pools.coder.cpus ({value}) must be a number of CPUs above 0"
                )],
            );
        }
        assert_eq!(ok(&pool("cpus = 2\n")).pools["coder"].cpus, Some(2.0));
    }

    #[test]
    fn pids_limit_at_least_one() {
        one(
            &pool("pids_limit = -1\n"),
            3,
            14,
            &[
                "pools.coder.pids_limit (-1) must be at least 1",
                "no unlimited",
            ],
        );
    }

    #[test]
    fn workdir_absolute() {
        one(
            &pool("workdir = \"work\"\n"),
            3,
            11,
            &["pools.coder.workdir (\"work\") must be an absolute path"],
        );
        one(&pool("workdir = \"/\"\n"), 3, 11, &["must not be \"/\""]);
        one(
            &pool("workdir = \"/a/../b\"\n"),
            3,
            11,
            &["must not contain \"..\""],
        );
    }

    #[test]
    fn user_form() {
        for bad in ["", "1000:", ":1000", "a b", "1:2:3", "-x"] {
            one(
                &format!("{}[pools.coder.security]\nuser = \"{bad}\"\n", pool("")),
                4,
                8,
                &[&format!(
                    "pools.coder.security.user (\"{bad}\") must be \"uid[:gid]\""
                )],
            );
        }
        for good in ["1000", "1000:1000", "agent", "agent:staff", "_svc", "0"] {
            let text = format!("{}[pools.coder.security]\nuser = \"{good}\"\n", pool(""));
            assert_eq!(ok(&text).pools["coder"].security.user, good);
        }
    }

    #[test]
    fn cap_drop_upper_case() {
        one(
            &format!(
                "[defaults.security]\ncap_drop = [\"ALL\", \"net_raw\"]\n{}",
                pool("")
            ),
            2,
            20,
            &["defaults.security.cap_drop[1] (\"net_raw\") must be an upper-case capability name"],
        );
        one(
            &format!("[defaults.security]\ncap_drop = [\"\"]\n{}", pool("")),
            2,
            13,
            &["defaults.security.cap_drop[0] (\"\")"],
        );
        one(
            &format!("[defaults.security]\ncap_drop = \"ALL\"\n{}", pool("")),
            2,
            12,
            &["defaults.security.cap_drop (\"ALL\") must be a list of capabilities"],
        );
    }

    #[test]
    fn runtime_non_empty() {
        one(
            &format!("{}[pools.coder.security]\nruntime = \"\"\n", pool("")),
            4,
            11,
            &["pools.coder.security.runtime (\"\") must name an OCI runtime"],
        );
    }

    #[test]
    fn argv_non_empty() {
        one(
            &pool("health_cmd = []\n"),
            3,
            14,
            &["pools.coder.health_cmd ([]) must name at least the program"],
        );
        one(
            &pool("session_end_command = [\"\", \"x\"]\n"),
            3,
            24,
            &["pools.coder.session_end_command[0] (\"\") must name the program"],
        );
        one(
            &pool("health_cmd = [\"curl\", 5]\n"),
            3,
            23,
            &["pools.coder.health_cmd[1] (5) must be a string, not an integer"],
        );
        one(
            &pool("health_cmd = \"true\"\n"),
            3,
            14,
            &["pools.coder.health_cmd (\"true\") must be a command as a list of strings"],
        );
    }

    #[test]
    fn env_keys_and_values() {
        one(
            &pool("env = { \"A=B\" = \"x\" }\n"),
            3,
            9,
            &["pools.coder.env: variable name \"A=B\" must not contain '='"],
        );
        one(
            &pool("env = { \"\" = \"x\" }\n"),
            3,
            9,
            &["pools.coder.env has an empty variable name"],
        );
        one(
            &pool("env = { PORT = 8080 }\n"),
            3,
            16,
            &["pools.coder.env.PORT (8080) must be a string: quote it, PORT = \"8080\""],
        );
        one(
            &pool("env = [\"A=B\"]\n"),
            3,
            7,
            &["pools.coder.env ([\"A=B\"]) must be a table of strings"],
        );
    }

    #[test]
    fn network_name() {
        one(
            &pool("network = \"\"\n"),
            3,
            11,
            &["pools.coder.network (\"\") must be \"none\", \"isolated\""],
        );
        one(
            &pool("network = \"my net\"\n"),
            3,
            11,
            &["existing Docker network"],
        );
        assert_eq!(
            ok(&pool("network = \"none\"\n")).pools["coder"].network,
            NetworkMode::None
        );
    }

    #[test]
    fn server_listen() {
        one(
            &format!("[server]\nlisten = \"localhost:7070\"\n{}", pool("")),
            2,
            10,
            &["server.listen (\"localhost:7070\") must be an IP address and port"],
        );
        one(
            &format!("[server]\nlisten = \"\"\n{}", pool("")),
            2,
            10,
            &["server.listen (\"\") turns the TCP listener off, but server.unix_socket is not set"],
        );
        one(
            &format!("[server]\nlisten = \"\"\nunix_socket = \"x\"\n{}", pool("")),
            3,
            15,
            &["server.unix_socket (\"x\") must be an absolute path"],
        );
    }

    #[test]
    fn server_limits() {
        one(
            &format!("[server]\nmax_request_body = \"512B\"\n{}", pool("")),
            2,
            20,
            &["server.max_request_body (\"512B\") is too small: it must be at least 1KiB"],
        );
        one(
            &format!("[server]\nmax_sessions = 0\n{}", pool("")),
            2,
            16,
            &["server.max_sessions (0) must be at least 1"],
        );
        one(
            &format!("[server]\nshutdown_grace = \"soon\"\n{}", pool("")),
            2,
            18,
            &["server.shutdown_grace (\"soon\") is not a duration"],
        );
    }

    #[test]
    fn server_paths() {
        one(
            &format!("[server]\nunix_socket = \"api.sock\"\n{}", pool("")),
            2,
            15,
            &["server.unix_socket (\"api.sock\") must be an absolute path"],
        );
        one(
            &format!("[server]\ntoken_file = \"\"\n{}", pool("")),
            2,
            14,
            &["server.token_file (\"\") must not be empty"],
        );
        let c = ok(&format!("[server]\ntoken_file = \"/etc/t\"\n{}", pool("")));
        assert_eq!(c.server.token_file, Some(PathBuf::from("/etc/t")));
    }

    #[test]
    fn docker_host() {
        one(
            &format!("[docker]\nhost = \"/var/run/docker.sock\"\n{}", pool("")),
            2,
            8,
            &["docker.host (\"/var/run/docker.sock\") must be a URL"],
        );
        let c = ok(&format!(
            "[docker]\nhost = \"tcp://10.0.0.1:2375\"\n{}",
            pool("")
        ));
        assert_eq!(c.docker.host.as_deref(), Some("tcp://10.0.0.1:2375"));
    }

    #[test]
    fn three_problems_reported_at_once_in_file_order() {
        let p = problems(
            r#"[pools.coder]
image = "img"
min = 5
max = 3
on_exhausted = "later"
mem = "1GiB"
"#,
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert_eq!((p[0].line, p[0].col), (3, 7));
        assert!(p[0].message.contains("min (5) is larger than"));
        assert_eq!((p[1].line, p[1].col), (5, 16));
        assert!(p[1].message.contains("on_exhausted"));
        assert_eq!((p[2].line, p[2].col), (6, 1));
        assert!(p[2].message.contains("did you mean memory?"));

        let shown = ConfigError::Invalid(p).to_string();
        assert_eq!(shown.lines().count(), 3);
        assert!(shown
            .starts_with("pools.toml:3:7: pools.coder.min (5) is larger than pools.coder.max (3)"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        one(
            "# ééé\n[pools.coder]\nimage = \"img\"\nenv = { \"é\" = 1 }\n",
            4,
            15,
            &["pools.coder.env.\"é\" (1) must be a string"],
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = std::env::temp_dir().join(format!("warmpool-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pools.toml");
        std::fs::write(&path, pool("min = -1\n")).unwrap();
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.problems()[0].file, path.display().to_string());
        assert!(err
            .to_string()
            .starts_with(&format!("{}:3:7: ", path.display())));
        std::fs::write(&path, pool("")).unwrap();
        assert_eq!(Config::load(&path).unwrap().pools["coder"].image, "img");
        std::fs::remove_dir_all(&dir).unwrap();

        let err = Config::load(&dir.join("missing.toml")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }

    #[test]
    fn parse_size_cases() {
        let cases = [
            ("512MiB", 536_870_912),
            ("1GiB", 1 << 30),
            ("16MiB", 16 << 20),
            ("4KiB", 4096),
            ("100B", 100),
            ("100", 100),
            ("0", 0),
            ("1KB", 1000),
            ("2MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5GiB", 3 << 29),
            ("0.5KiB", 512),
            (" 512 MiB ", 536_870_912),
            ("512mib", 536_870_912),
        ];
        for (s, bytes) in cases {
            assert_eq!(parse_size(s), Ok(bytes), "{s}");
        }
        for bad in [
            "",
            "MiB",
            "-1",
            "1.MiB",
            ".5MiB",
            "1.2.3KiB",
            "12 parsecs",
            "1e3",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("\"512MiB\""), "{bad}: {err}");
        }
        assert_eq!(
            parse_size("512M").unwrap_err(),
            "unit \"M\" is ambiguous: write MiB (binary) or MB (decimal)"
        );
        assert!(parse_size("1.1B")
            .unwrap_err()
            .contains("whole number of bytes"));
        assert!(parse_size("99999999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn enums_serialize_as_in_the_file() {
        use serde::de::value::{Error, StrDeserializer};
        let de = |s| StrDeserializer::<Error>::new(s);
        assert_eq!(OnExhausted::deserialize(de("cold")), Ok(OnExhausted::Cold));
        assert_eq!(
            ExecMode::deserialize(de("docker-exec")),
            Ok(ExecMode::DockerExec)
        );
        assert_eq!(
            NetworkMode::deserialize(de("isolated")),
            Ok(NetworkMode::Isolated)
        );
        assert_eq!(
            NetworkMode::deserialize(de("agents")),
            Ok(NetworkMode::Named("agents".to_string()))
        );
        assert_eq!(OnExhausted::Wait.to_string(), "wait");
        assert_eq!(ExecMode::DockerExec.to_string(), "docker-exec");
        assert_eq!(NetworkMode::None.to_string(), "none");
    }

    #[test]
    fn did_you_mean_is_conservative() {
        assert_eq!(did_you_mean("mem", LAYER_KEYS), Some("memory"));
        assert_eq!(did_you_mean("cpu", LAYER_KEYS), Some("cpus"));
        assert_eq!(did_you_mean("Image", LAYER_KEYS), Some("image"));
        assert_eq!(did_you_mean("bogus", LAYER_KEYS), None);
        assert_eq!(did_you_mean("xy", LAYER_KEYS), None);
        assert_eq!(did_you_mean("hots", DOCKER_KEYS), Some("host"));
        assert_eq!(edit_distance("listne", "listen"), 1);
    }
}
