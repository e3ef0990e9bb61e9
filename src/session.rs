//! Sessions: one container pinned to one conversation (or one user+project), so a task sees
//! the files of the one before. A session costs nothing until its first task, which takes a
//! warm container out of its pool for good (the pool refills behind it); tasks of a session
//! run one at a time in arrival order; the container is removed when the session ends.
//!
//! The engine cannot relabel a running container, so the session id travels in the
//! container's name (`warmpool-<pool>-s-<id>`), which is how a restarted daemon finds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::exec::{Conn, TaskEvent};
use crate::metrics::{Outcome, RemoveReason};
use crate::pool::AcquireError;
use crate::supervisor::{SubmitError, Supervisor, TaskReport, TaskRequest};

/// How a session's container name starts, after `warmpool-<pool>`.
const NAME_MARK: &str = "-s-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    NotStarted,
    Running,
}

impl SessionState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionState::NotStarted => "not_started",
            SessionState::Running => "running",
        }
    }
}

/// What the API shows of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub pool: String,
    pub state: SessionState,
    pub container: Option<String>,
    pub tasks: u64,
    pub idle: Duration,
    pub idle_timeout: Duration,
    pub busy: bool,
}

struct Meta {
    container: Option<String>,
    tasks: u64,
    last_used: Instant,
    /// Tasks running or waiting: a session with any is never idle.
    active: usize,
    ended: bool,
}

pub struct Session {
    pub id: String,
    pub pool: String,
    pub idle_timeout: Duration,
    /// Held for the whole of each task, so tasks run one at a time; tokio's mutex is fair,
    /// so they run in arrival order.
    slot: tokio::sync::Mutex<Option<(String, Conn)>>,
    meta: Mutex<Meta>,
}

impl Session {
    fn new(id: String, pool: String, idle_timeout: Duration) -> Session {
        Session {
            id,
            pool,
            idle_timeout,
            slot: tokio::sync::Mutex::new(None),
            meta: Mutex::new(Meta {
                container: None,
                tasks: 0,
                last_used: Instant::now(),
                active: 0,
                ended: false,
            }),
        }
    }

    pub fn info(&self) -> SessionInfo {
        let m = self.meta.lock();
        SessionInfo {
            id: self.id.clone(),
            pool: self.pool.clone(),
            state: if m.container.is_some() {
                SessionState::Running
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
        }
    }

    fn idle_expired(&self) -> bool {
        let m = self.meta.lock();
        m.active == 0 && !m.ended && m.last_used.elapsed() >= self.idle_timeout
    }
}

/// Why a session call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0:?} (it ended, or never existed)")]
    NotFound(String),
    #[error("session {id:?} exists on pool {existing}, not {asked}")]
    PoolMismatch {
        id: String,
        existing: String,
        asked: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// The live sessions of a daemon, bounded by `max_sessions`.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Sessions out of the map whose end is under way (end command, removal): their
    /// containers are still theirs, and the reaper must leave them alone.
    ending: Mutex<Vec<Arc<Session>>>,
    max: std::sync::atomic::AtomicUsize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ending: Mutex::new(Vec::new()),
            max: std::sync::atomic::AtomicUsize::new(max),
        }
    }

    /// A reload may change `max_sessions`; live sessions above it stay until they end.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.map.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Containers that sessions hold, ending ones included, so the reaper leaves them alone.
    /// The map is read before `ending`, and a session moves from one to the other under the
    /// map's lock, so no session is missed on its way.
    pub fn containers(&self) -> Vec<String> {
        let mut held: Vec<String> = self
            .map
            .lock()
            .values()
            .filter_map(|s| s.meta.lock().container.clone())
            .collect();
        held.extend(
            self.ending
                .lock()
                .iter()
                .filter_map(|s| s.meta.lock().container.clone()),
        );
        held
    }

    /// Takes a session out of the map (the caller holds the map's lock) into `ending`.
    fn take_locked(
        &self,
        map: &mut HashMap<String, Arc<Session>>,
        id: &str,
    ) -> Option<Arc<Session>> {
        let s = map.remove(id)?;
        self.ending.lock().push(s.clone());
        Some(s)
    }
}

/// Session ids end up in container names: the engine's name alphabet, at most 64 long.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "session id {id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// The container name a session's container gets.
pub fn container_name(pool: &str, session: &str) -> String {
    format!("warmpool-{pool}{NAME_MARK}{session}")
}

/// The session id in a container name, if it is a session's.
pub fn session_of_name(pool: &str, name: &str) -> Option<String> {
    name.strip_prefix(&format!("warmpool-{pool}{NAME_MARK}"))
        .filter(|id| validate_id(id).is_ok())
        .map(str::to_string)
}

impl Supervisor {
    /// Creates a session, or returns the live one of that id (`false` = it existed).
    pub fn create_session(
        &self,
        pool: &str,
        id: Option<String>,
        idle_timeout: Option<Duration>,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        let p = self
            .pool(pool)
            .ok_or_else(|| SubmitError::UnknownPool(pool.to_string()))?;
        let id = match id {
            Some(id) => {
                validate_id(&id).map_err(SessionError::Invalid)?;
                id
            }
            None => format!("s-{}", ulid::Ulid::new().to_string().to_lowercase()),
        };
        let idle_timeout = match idle_timeout {
            Some(t) if t.is_zero() => {
                return Err(SessionError::Invalid(
                    "idle_timeout must be more than 0s".into(),
                ))
            }
            Some(t) => t,
            None => p.config().session_idle_timeout,
        };
        let evict = {
            let mut map = self.sessions.map.lock();
            if let Some(existing) = map.get(&id) {
                if existing.pool != pool {
                    return Err(SessionError::PoolMismatch {
                        id,
                        existing: existing.pool.clone(),
                        asked: pool.to_string(),
                    });
                }
                existing.meta.lock().last_used = Instant::now();
                return Ok((existing.clone(), false));
            }
            // Make room: the least recently used session goes first.
            let evict = if map.len() >= self.sessions.max() {
                map.values()
                    .filter(|s| s.meta.lock().active == 0)
                    .min_by_key(|s| s.meta.lock().last_used)
                    .or_else(|| map.values().min_by_key(|s| s.meta.lock().last_used))
                    .cloned()
            } else {
                None
            };
            if let Some(old) = &evict {
                self.sessions.take_locked(&mut map, &old.id);
            }
            let session = Arc::new(Session::new(id.clone(), pool.to_string(), idle_timeout));
            map.insert(id.clone(), session);
            evict
        };
        if let Some(old) = evict {
            tracing::info!(session = %old.id, "ending the least recently used session to make room (max_sessions)");
            let sup = self.self_arc();
            tokio::spawn(async move { sup.finish_session(old).await });
        }
        self.publish_sessions();
        let session = self.sessions.get(&id).expect("just inserted");
        Ok((session, true))
    }

    /// Ends a session: runs `session_end_command`, removes its container.
    pub async fn end_session(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let session = {
            let mut map = self.sessions.map.lock();
            self.sessions.take_locked(&mut map, id)
        }
        .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let info = session.info();
        self.finish_session(session).await;
        Ok(info)
    }

    /// The end of a session already out of the map (in `ending`): waits for its running
    /// task, runs the end command, removes the container.
    async fn finish_session(&self, session: Arc<Session>) {
        self.finish_container(&session).await;
        // Only now is the container no longer the session's.
        session.meta.lock().container = None;
        self.sessions
            .ending
            .lock()
            .retain(|s| !Arc::ptr_eq(s, &session));
    }

    async fn finish_container(&self, session: &Arc<Session>) {
        session.meta.lock().ended = true;
        self.publish_sessions();
        let mut slot = session.slot.lock().await;
        let Some((container, conn)) = slot.take() else {
            return;
        };
        let pool = self.pool(&session.pool);
        if let (Some(pool), Some(cmd)) = (
            &pool,
            pool.as_ref()
                .and_then(|p| p.config().session_end_command.clone()),
        ) {
            let cfg = pool.config();
            let task = crate::exec::TaskSpec {
                argv: cmd,
                workdir: cfg.workdir.clone(),
                timeout: cfg.task_timeout.min(Duration::from_secs(300)),
                max_output: 64 * 1024,
                ..Default::default()
            };
            let (tx, _rx) = mpsc::unbounded_channel();
            match conn.run(&task, &tx).await {
                Ok(exit) if exit.exit_code == Some(0) => {}
                Ok(exit) => {
                    tracing::warn!(session = %session.id, ?exit, "session_end_command failed")
                }
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "session_end_command could not run")
                }
            }
        }
        drop(conn);
        if let Err(e) = self.runtime.remove(&container).await {
            tracing::warn!(session = %session.id, error = %e, "removing the session's container failed; the reaper will retry");
        }
        self.metrics
            .containers_removed
            .with_label_values(&[&session.pool, RemoveReason::SessionEnd.as_str()])
            .inc();
        tracing::info!(session = %session.id, "session ended");
    }

    /// Runs a task in the session's container, starting the container on the first task.
    pub async fn session_task(
        &self,
        pool_name: &str,
        id: &str,
        request: TaskRequest,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SessionError> {
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        if session.pool != pool_name {
            return Err(SessionError::PoolMismatch {
                id: id.to_string(),
                existing: session.pool.clone(),
                asked: pool_name.to_string(),
            });
        }
        let pool = self
            .pool(&session.pool)
            .ok_or_else(|| SubmitError::UnknownPool(session.pool.clone()))?;
        let cfg = pool.config();
        let task = crate::supervisor::build_task(&cfg, request)?;
        let task_id = format!("t-{}", ulid::Ulid::new());
        let _active = ActiveGuard::new(&session);
        let queued_at = Instant::now();
        let mut slot = session.slot.lock().await;
        if session.meta.lock().ended {
            return Err(SessionError::NotFound(id.to_string()));
        }
        let mut cold = false;
        if slot.is_none() {
            let lease = match pool.acquire().await {
                Ok(l) => l,
                Err(e) => {
                    self.count_task(&pool.name, Outcome::Rejected, None);
                    return Err(SubmitError::Acquire(e).into());
                }
            };
            cold = lease.cold;
            let dirty = lease.dirty;
            // The session's before it leaves the pool, so the reaper always knows whose it is.
            session.meta.lock().container = Some(lease.container.clone());
            let (container, conn) = lease.detach();
            // Out of the pool, so claimed here at once: the reaper removes running containers
            // of ours that neither a pool nor a session knows, and the reset below awaits.
            session.meta.lock().container = Some(container.clone());
            if dirty {
                let paths = [cfg.workdir.clone(), "/tmp".to_string()];
                if let Err(e) = conn.reset(&paths, crate::exec::RESET_TIMEOUT).await {
                    session.meta.lock().container = None;
                    let _ = self.runtime.remove(&container).await;
                    session.meta.lock().container = None;
                    return Err(SubmitError::Exec(e).into());
                }
            }
            // Naming is for a restarted daemon's benefit only: keep it off the task's path.
            let (runtime, name, cid, sid) = (
                self.runtime.clone(),
                container_name(&pool.name, id),
                container.clone(),
                id.to_string(),
            );
            tokio::spawn(async move {
                if let Err(e) = runtime.rename(&cid, &name).await {
                    tracing::warn!(session = %sid, error = %e, "could not name the session's container; it will not survive a daemon restart");
                }
            });
            *slot = Some((container, conn));
            self.publish_sessions();
        }
        let (container, conn) = slot.clone().expect("set above");
        let queued = queued_at.elapsed();
        let began = Instant::now();
        let result = conn.run(&task, &out).await;
        let run = began.elapsed();
        {
            let mut m = session.meta.lock();
            m.tasks += 1;
            m.last_used = Instant::now();
        }
        match result {
            Ok(exit) => {
                let outcome = crate::supervisor::outcome_of(&exit);
                self.count_task(&pool.name, outcome, Some(run));
                Ok(TaskReport {
                    task_id,
                    pool: pool.name.clone(),
                    container,
                    exit,
                    queued,
                    run,
                    cold_start: cold,
                })
            }
            Err(e) => {
                // The container is gone or wedged: the session starts afresh next time.
                *slot = None;
                session.meta.lock().container = None;
                let _ = self.runtime.remove(&container).await;
                self.count_task(&pool.name, Outcome::Error, Some(run));
                Err(SubmitError::Invalid(format!(
                    "{e}; the session's files are lost and its next task starts a fresh container"
                ))
                .into())
            }
        }
    }

    /// Runs a helper command in the session's container (file transfer), with `stdin`,
    /// returning its stdout; the output cap is `max_output` bytes.
    pub async fn session_exec(
        &self,
        id: &str,
        argv: Vec<String>,
        stdin: bytes::Bytes,
        max_output: u64,
    ) -> Result<(crate::exec::TaskExit, Vec<u8>, Vec<u8>), SessionError> {
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let request = TaskRequest {
            argv,
            stdin,
            ..Default::default()
        };
        let pool = self
            .pool(&session.pool)
            .ok_or_else(|| SubmitError::UnknownPool(session.pool.clone()))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cfg = (*pool.config()).clone();
        cfg.max_output = max_output;
        let task = crate::supervisor::build_task(&cfg, request)?;
        let _active = ActiveGuard::new(&session);
        let mut slot = session.slot.lock().await;
        if session.meta.lock().ended {
            return Err(SessionError::NotFound(id.to_string()));
        }
        let Some((_, conn)) = slot.as_mut() else {
            return Err(SessionError::Invalid(format!(
                "session {id:?} has no container yet: files appear once its first task ran (run one, e.g. \"true\")"
            )));
        };
        let exit = conn.run(&task, &tx).await.map_err(SubmitError::Exec)?;
        drop(tx);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(ev) = rx.recv().await {
            match ev {
                TaskEvent::Stdout(b) => stdout.extend_from_slice(&b),
                TaskEvent::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        session.meta.lock().last_used = Instant::now();
        Ok((exit, stdout, stderr))
    }

    /// Ends sessions idle past their timeout; runs until the daemon stops.
    pub(crate) async fn session_reaper(self: Arc<Self>) {
        let mut stop = self.stop_signal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
            let expired: Vec<Arc<Session>> = {
                let mut map = self.sessions.map.lock();
                let ids: Vec<String> = map
                    .values()
                    .filter(|s| s.idle_expired())
                    .map(|s| s.id.clone())
                    .collect();
                ids.iter()
                    .filter_map(|id| self.sessions.take_locked(&mut map, id))
                    .collect()
            };
            for s in expired {
                tracing::info!(session = %s.id, "session idle past its timeout");
                let sup = self.clone();
                tokio::spawn(async move { sup.finish_session(s).await });
            }
        }
    }

    /// Ends every session (shutdown), running their end commands.
    pub(crate) async fn end_all_sessions(&self) {
        let all: Vec<Arc<Session>> = {
            let mut map = self.sessions.map.lock();
            let ids: Vec<String> = map.keys().cloned().collect();
            ids.iter()
                .filter_map(|id| self.sessions.take_locked(&mut map, id))
                .collect()
        };
        futures_util::future::join_all(all.into_iter().map(|s| self.finish_session(s))).await;
    }

    /// Re-creates a session around a container a previous daemon run left running.
    pub(crate) fn adopt_session(&self, id: &str, pool: &str, container: String, conn: Conn) {
        let idle_timeout = self
            .pool(pool)
            .map(|p| p.config().session_idle_timeout)
            .unwrap_or(Duration::from_secs(300));
        let session = Session::new(id.to_string(), pool.to_string(), idle_timeout);
        session.meta.lock().container = Some(container.clone());
        *session.slot.try_lock().expect("new session") = Some((container, conn));
        self.sessions
            .map
            .lock()
            .insert(id.to_string(), Arc::new(session));
        self.publish_sessions();
    }

    fn publish_sessions(&self) {
        let mut per_pool: HashMap<String, i64> =
            self.pools().iter().map(|p| (p.name.clone(), 0)).collect();
        for s in self.sessions.map.lock().values() {
            if !s.meta.lock().ended {
                *per_pool.entry(s.pool.clone()).or_default() += 1;
            }
        }
        for (pool, n) in per_pool {
            self.metrics.sessions.with_label_values(&[&pool]).set(n);
        }
    }
}

/// Marks a session busy for as long as one of its tasks runs or waits.
struct ActiveGuard<'a>(&'a Session);

impl<'a> ActiveGuard<'a> {
    fn new(s: &'a Session) -> Self {
        s.meta.lock().active += 1;
        ActiveGuard(s)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.0.meta.lock();
        m.active -= 1;
        m.last_used = Instant::now();
    }
}

impl From<AcquireError> for SessionError {
    fn from(e: AcquireError) -> Self {
        SessionError::Submit(SubmitError::Acquire(e))
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
        assert_eq!(name, "warmpool-coder-s-acme-john");
        assert_eq!(
            session_of_name("coder", &name).as_deref(),
            Some("acme-john")
        );
        assert_eq!(session_of_name("coder", "warmpool-coder-1234abcd"), None);
        assert_eq!(session_of_name("tester", &name), None);
    }
}
