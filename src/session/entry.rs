//! One session: its container slot, its bookkeeping, and how its id travels in the
//! container's name.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::exec::Conn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No task ran yet: no container.
    NotStarted,
    /// Holds a container.
    Running,
    /// A persistent session that gave its container back when it went idle: its workspace
    /// waits on the host (or in its engine volume), its next task resumes on a warm
    /// container (with a volume, on one created for it).
    Idle,
}

impl SessionState {
    /// As the API spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionState::NotStarted => "not_started",
            SessionState::Running => "running",
            SessionState::Idle => "idle",
        }
    }
}

/// What the API shows of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id (given, or `s-<ulid>`).
    pub id: String,
    /// The pool its container came from.
    pub pool: String,
    /// Whether it holds a container yet.
    pub state: SessionState,
    /// The container's id, once it has one.
    pub container: Option<String>,
    /// Tasks run so far.
    pub tasks: u64,
    /// Since its last task ended; 0 while one runs or waits.
    pub idle: Duration,
    /// It ends after this long idle.
    pub idle_timeout: Duration,
    /// A task runs or waits.
    pub busy: bool,
    /// The session's own limits, applied to its container (empty: the pool's).
    pub limits: crate::runtime::Limits,
    /// Tasks that may run at once.
    pub max_concurrent_tasks: usize,
}

pub(super) struct Meta {
    pub(super) container: Option<String>,
    pub(super) tasks: u64,
    pub(super) last_used: Instant,
    /// Tasks running or waiting: a session with any is never idle.
    pub(super) active: usize,
    pub(super) ended: bool,
    /// Why the session's last container died, until its next task starts a fresh one: file
    /// calls in between say so (502) instead of "no container yet".
    pub(super) lost: Option<String>,
    /// A persistent session gave its container back (idle) and keeps its workspace.
    pub(super) released: bool,
    /// Its end removes its workspace too (`?workspace=delete`, `workspace_ttl`).
    pub(super) delete_workspace: bool,
    /// Bytes its persistent workspace held after its last task.
    pub(super) workspace_bytes: u64,
}

/// A live session; the API reads it through [`Session::info`].
pub struct Session {
    /// The session id.
    pub id: String,
    /// The pool its container comes from.
    pub pool: String,
    /// It ends after this long idle.
    pub idle_timeout: Duration,
    /// Its own memory, cpus and pids limit (empty: the pool's), applied when it claims a
    /// container.
    pub limits: crate::runtime::Limits,
    /// Tasks of the session that may run at once (the pool's `max_concurrent_tasks`, or
    /// less when the session asked); 1 runs them one at a time.
    pub max_concurrent_tasks: usize,
    /// One permit per task that may run at once, held for the whole task; tokio's semaphore
    /// is fair, so tasks start in arrival order. Ending the session takes them all.
    pub(super) permits: tokio::sync::Semaphore,
    /// The container's own connection (its shim) is running a task: another task running
    /// at the same time gets a `docker exec` of its own in the same container.
    pub(super) conn_busy: std::sync::atomic::AtomicBool,
    /// The persistent workspace (its store and where its files live), for a
    /// `session_workspace = "persistent"` pool.
    pub workspace: Option<crate::workspace::Workspace>,
    /// The container and its connection; locked while a container is claimed, briefly
    /// otherwise.
    pub(super) slot: tokio::sync::Mutex<Option<(String, Conn)>>,
    pub(super) meta: Mutex<Meta>,
}

impl Session {
    pub(super) fn new(id: String, pool: String, idle_timeout: Duration) -> Session {
        Session {
            id,
            pool,
            idle_timeout,
            limits: crate::runtime::Limits::default(),
            max_concurrent_tasks: 1,
            workspace: None,
            permits: tokio::sync::Semaphore::new(1),
            conn_busy: std::sync::atomic::AtomicBool::new(false),
            slot: tokio::sync::Mutex::new(None),
            meta: Mutex::new(Meta {
                container: None,
                tasks: 0,
                last_used: Instant::now(),
                active: 0,
                ended: false,
                lost: None,
                released: false,
                delete_workspace: false,
                workspace_bytes: 0,
            }),
        }
    }

    /// Lets `n` (at least 1) of its tasks run at once.
    pub(super) fn with_concurrency(mut self, n: usize) -> Session {
        let n = n.max(1);
        self.permits.add_permits(n - self.max_concurrent_tasks);
        self.max_concurrent_tasks = n;
        self
    }

    /// A snapshot for the API.
    pub fn info(&self) -> SessionInfo {
        let m = self.meta.lock();
        SessionInfo {
            id: self.id.clone(),
            pool: self.pool.clone(),
            state: if m.container.is_some() {
                SessionState::Running
            } else if m.released {
                SessionState::Idle
            } else {
                SessionState::NotStarted
            },
            container: m.container.clone(),
            tasks: m.tasks,
            idle: if m.active > 0 {
                Duration::ZERO
            } else {
                m.last_used.elapsed()
            },
            idle_timeout: self.idle_timeout,
            busy: m.active > 0,
            limits: self.limits,
            max_concurrent_tasks: self.max_concurrent_tasks,
        }
    }

    pub(super) fn idle_expired(&self) -> bool {
        let m = self.meta.lock();
        m.active == 0 && !m.ended && !m.released && m.last_used.elapsed() >= self.idle_timeout
    }

    /// A released persistent session unused for `ttl`: it ends, its workspace with it.
    pub(super) fn workspace_expired(&self, ttl: Duration) -> bool {
        let m = self.meta.lock();
        m.active == 0 && !m.ended && m.released && m.last_used.elapsed() >= ttl
    }
}

// The id rule lives with the workspaces it also names, a leaf module that pool, config and
// session may all use.
pub use crate::workspace::validate_id;

/// The name a session's container gets when the session claims it:
/// `warmpool-<pool>.<8 hex digits>.<session id>`.
///
/// Collision-free by construction: pool names have no `.`, so the pool part ends at the
/// first `.` (pool `c` with session `s-x` is `warmpool-c.….s-x`, pool `c-s` with session `x`
/// is `warmpool-c-s.….x`); a pool container is `warmpool-<pool>-<8 hex>`, with no `.` at
/// all; and the random part keeps a new session of the same id clear of a container of the
/// old one whose removal is still under way (the engine keeps names globally unique, across
/// instances too). The pool is also in the container's `warmpool.pool` label, which
/// [`session_of_name`] checks it against.
pub fn container_name(pool: &str, session: &str) -> String {
    format!("warmpool-{pool}.{:08x}.{session}", rand::random::<u32>())
}

/// The session id in the name of a container labelled with `pool`, if it is a session's
/// ([`container_name`]).
pub fn session_of_name(pool: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(&format!("warmpool-{pool}."))?;
    let (nonce, id) = rest.split_once('.')?;
    let hex = nonce.len() == 8 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && validate_id(id).is_ok()).then(|| id.to_string())
}

/// Whether `name` is what a fresh container of `pool` is called, `warmpool-<pool>-<8 hex>`:
/// the only name a container adopted back into a pool may have (a session's never does).
pub fn is_pool_name(pool: &str, name: &str) -> bool {
    name.strip_prefix(&format!("warmpool-{pool}-"))
        .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Marks a session busy for as long as one of its tasks runs or waits.
pub(super) struct ActiveGuard<'a>(&'a Session);

impl<'a> ActiveGuard<'a> {
    pub(super) fn new(s: &'a Session) -> Self {
        s.meta.lock().active += 1;
        ActiveGuard(s)
    }
}

/// Marks the container's own connection busy while one task uses it.
pub(super) struct ConnGuard<'a>(pub(super) &'a Session);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0
            .conn_busy
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.0.meta.lock();
        m.active -= 1;
        m.last_used = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked_for_the_container_name_alphabet() {
        assert!(validate_id("acme-website-john").is_ok());
        assert!(validate_id("a.b_c-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("-x").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn a_session_container_name_round_trips() {
        let name = container_name("coder", "acme-john");
        assert!(name.starts_with("warmpool-coder.") && name.ends_with(".acme-john"));
        assert_eq!(
            session_of_name("coder", &name).as_deref(),
            Some("acme-john")
        );
        assert_eq!(session_of_name("coder", "warmpool-coder-1234abcd"), None);
        assert_eq!(session_of_name("tester", &name), None);
        assert!(is_pool_name("coder", "warmpool-coder-1234abcd"));
        assert!(!is_pool_name("coder", &name));
        assert_ne!(container_name("coder", "a"), container_name("coder", "a"));
    }

    #[test]
    fn session_names_of_look_alike_pools_and_ids_never_collide() {
        // Pool c with session s-x, pool c-s with session x: once one name for both.
        let a = container_name("c", "s-x");
        let b = container_name("c-s", "x");
        assert_eq!(session_of_name("c", &a).as_deref(), Some("s-x"));
        assert_eq!(session_of_name("c-s", &a), None);
        assert_eq!(session_of_name("c-s", &b).as_deref(), Some("x"));
        assert_eq!(session_of_name("c", &b), None);
        // The old spelling is nobody's session, and not a pool container either.
        assert_eq!(session_of_name("c", "warmpool-c-s-s-x"), None);
        assert!(!is_pool_name("c", "warmpool-c-s-s-x"));
        assert!(!is_pool_name("c", "warmpool-c-s-1234abcd"));
    }
}
