//! Sessions: one container pinned to one conversation (or one user+project), so a task sees
//! the files of the one before. A session costs nothing until its first task, which takes a
//! warm container out of its pool for good (the pool refills behind it); tasks of a session
//! run one at a time in arrival order; the container is removed when the session ends.
//!
//! The engine cannot relabel a running container, so the session id travels in the
//! container's name (`warmpool-<pool>.<random>.<id>`, [`container_name`]), set and checked
//! before the session's first task: a container that ever served a session carries it, which
//! is how a restarted daemon gives it back to its session and never to a pool.
//!
//! [`Sessions`] is a component of its own: a cheap handle on the live sessions, the pools
//! it takes containers from, and the engine. The supervisor holds one and forwards to it.

mod bound;
mod claim;
mod end;
mod entry;
mod reap;
mod size;
pub mod transfer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::exec::{Conn, ExecError, TaskEvent, TaskExit, ADOPT_PING_TIMEOUT};
use crate::metrics::{Metrics, RemoveReason};
use crate::pool::{AcquireError, Pools};
use crate::runtime::Runtime;
use crate::task::{self, SubmitError, TaskReport, TaskRequest};
use entry::{ActiveGuard, ConnGuard};

pub use entry::{
    container_name, is_pool_name, session_of_name, validate_id, Session, SessionInfo, SessionState,
};
pub use size::{limits_for, SessionOptions};

/// The workspace of a persistent pool's sessions: its record store and where the files
/// live (host directories, or engine volumes with a remote engine).
fn workspace_of(pool: &crate::pool::Pool) -> Option<crate::workspace::Workspace> {
    pool.spec()
        .workspace
        .as_ref()
        .map(|ws| crate::workspace::Workspace {
            store: crate::workspace::Store::new(&ws.root),
            home: ws.home.clone(),
        })
}

/// Why a session call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// 404 `unknown_session`.
    #[error("no session {0:?} (it ended, or never existed)")]
    NotFound(String),
    /// 409: the id is live on another pool.
    #[error("session {id:?} exists on pool {existing}, not {asked}")]
    PoolMismatch {
        id: String,
        existing: String,
        asked: String,
    },
    /// 400: a bad id or idle timeout, or files asked of a session with no container.
    #[error("{0}")]
    Invalid(String),
    /// 507: the session's persistent workspace is over `workspace_max_size`.
    #[error("{0}")]
    WorkspaceFull(String),
    /// The task's own error, mapped as a pool task's is.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// 502 `container_failed`: the task could not be run to its end in the session's
    /// container; the message says whether the container (and the session's files) stayed.
    #[error("{0}")]
    TaskFailed(String),
}

impl SessionError {
    /// 503 `engine_unavailable`: the engine did not do what the session needed; `message`
    /// says what, what was left, and what to do.
    pub(crate) fn engine(message: String) -> Self {
        SessionError::Submit(SubmitError::Exec(crate::exec::ExecError::Engine(message)))
    }
}

impl From<AcquireError> for SessionError {
    fn from(e: AcquireError) -> Self {
        SessionError::Submit(SubmitError::Acquire(e))
    }
}

/// The live sessions of a daemon, bounded by `max_sessions`. Clones share them.
#[derive(Clone)]
pub struct Sessions(Arc<Inner>);

struct Inner {
    pools: Arc<Pools>,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Sessions out of the map whose end is under way (end command, removal): their
    /// containers are still theirs, and the reaper must leave them alone.
    ending: Mutex<Vec<Arc<Session>>>,
    max: AtomicUsize,
}

impl Sessions {
    /// No session yet; at most `max` live at once.
    pub fn new(
        pools: Arc<Pools>,
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
        max: usize,
    ) -> Sessions {
        Sessions(Arc::new(Inner {
            pools,
            runtime,
            metrics,
            map: Mutex::new(HashMap::new()),
            ending: Mutex::new(Vec::new()),
            max: AtomicUsize::new(max),
        }))
    }

    /// A reload may change `max_sessions`; live sessions above it stay until they end.
    pub fn set_max(&self, max: usize) {
        self.0.max.store(max, Ordering::Relaxed);
    }

    fn max(&self) -> usize {
        self.0.max.load(Ordering::Relaxed)
    }

    /// The live session of that id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.0.map.lock().get(id).cloned()
    }

    /// The live sessions, in id order.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.0.map.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Containers that sessions hold, ending ones included, so the reaper leaves them alone.
    /// The map is read before `ending`, and a session moves from one to the other under the
    /// map's lock, so no session is missed on its way.
    pub fn containers(&self) -> Vec<String> {
        let mut held: Vec<String> = self
            .0
            .map
            .lock()
            .values()
            .filter_map(|s| s.meta.lock().container.clone())
            .collect();
        held.extend(
            self.0
                .ending
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
        self.0.ending.lock().push(s.clone());
        Some(s)
    }

    /// Creates a session, or returns the live one of that id (`false` = it existed). At
    /// `max_sessions`, the least recently used session ends to make room.
    ///
    /// Errors: unknown pool, an id outside the container name alphabet, an idle timeout of
    /// 0, or the id is live on another pool.
    pub fn create(
        &self,
        pool: &str,
        id: Option<String>,
        idle_timeout: Option<Duration>,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        self.create_with(pool, id, idle_timeout, SessionOptions::default())
    }

    /// [`Sessions::create`] with the session's own size (checked against the pool's
    /// `session_max_*` bounds). A live session of that id is returned as it is.
    ///
    /// Errors: as [`Sessions::create`], plus a size over its bound.
    pub fn create_with(
        &self,
        pool: &str,
        id: Option<String>,
        idle_timeout: Option<Duration>,
        opts: SessionOptions,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        let p = self
            .0
            .pools
            .get(pool)
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
            Some(t) if crate::config::duration_problem(t).is_some() => {
                return Err(SessionError::Invalid(format!(
                    "idle_timeout {} {}",
                    humantime::format_duration(t),
                    crate::config::duration_problem(t).unwrap_or_default()
                )))
            }
            Some(t) => t,
            None => p.config().session_idle_timeout,
        };
        let limits = limits_for(&p.config(), &opts).map_err(SessionError::Invalid)?;
        if p.config().session_workspace == crate::config::WorkspaceMode::Persistent {
            // The id names the workspace's directory.
            crate::workspace::check_id(&id).map_err(SessionError::Invalid)?;
        }
        let pool_max = p.config().max_concurrent_tasks;
        let concurrency = match opts.max_concurrent_tasks {
            Some(0) => {
                return Err(SessionError::Invalid(
                    "max_concurrent_tasks (0) must be at least 1".into(),
                ))
            }
            Some(n) if n > pool_max => {
                return Err(SessionError::Invalid(format!(
                    "max_concurrent_tasks ({n}) is above pool {pool}'s max_concurrent_tasks ({pool_max}): ask for at most {pool_max}, or raise max_concurrent_tasks in pools.toml"
                )))
            }
            Some(n) => n,
            None => pool_max,
        };
        let (session, evict) = {
            let mut map = self.0.map.lock();
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
            let evict = if map.len() >= self.max() {
                map.values()
                    .filter(|s| s.meta.lock().active == 0)
                    .min_by_key(|s| s.meta.lock().last_used)
                    .or_else(|| map.values().min_by_key(|s| s.meta.lock().last_used))
                    .cloned()
            } else {
                None
            };
            if let Some(old) = &evict {
                self.take_locked(&mut map, &old.id);
            }
            let mut session = Session::new(id.clone(), pool.to_string(), idle_timeout)
                .with_concurrency(concurrency);
            session.limits = limits;
            session.workspace = workspace_of(&p);
            let session = Arc::new(session);
            map.insert(id, session.clone());
            (session, evict)
        };
        if let Some(old) = evict {
            tracing::info!(session = %old.id, "ending the least recently used session to make room (max_sessions)");
            let me = self.clone();
            tokio::spawn(async move { me.finish(old).await });
        }
        self.publish();
        Ok((session, true))
    }

    /// Finds a live session of `pool`.
    fn find(&self, pool: &str, id: &str) -> Result<Arc<Session>, SessionError> {
        let session = self
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        if session.pool != pool {
            return Err(SessionError::PoolMismatch {
                id: id.to_string(),
                existing: session.pool.clone(),
                asked: pool.to_string(),
            });
        }
        Ok(session)
    }

    /// Runs a task in the session's container, starting the container on the first task.
    ///
    /// Errors: as [`crate::task::submit`], plus unknown session or wrong pool. A container
    /// that fails mid-task answers [`ExecError`] (502 `container_failed` in the API): the
    /// session's files are lost and its next task starts a fresh container.
    pub async fn run_task(
        &self,
        pool_name: &str,
        id: &str,
        request: TaskRequest,
        out: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<TaskReport, SessionError> {
        let session = self.find(pool_name, id)?;
        let pool = self
            .0
            .pools
            .get(&session.pool)
            .ok_or_else(|| SubmitError::UnknownPool(session.pool.clone()))?;
        let cfg = pool.config();
        let mut spec = task::validate(&cfg, request)?;
        let task_id = task::new_task_id();
        let _active = ActiveGuard::new(&session);
        let queued_at = Instant::now();
        let _permit = session
            .permits
            .acquire()
            .await
            .map_err(|_| SessionError::NotFound(id.to_string()))?;
        self.refuse_if_over(&session, &cfg).await?;
        let (container, conn, cold) = {
            let mut slot = session.slot.lock().await;
            if session.meta.lock().ended {
                return Err(SessionError::NotFound(id.to_string()));
            }
            let cold = self.claim(&session, &pool, &mut slot).await?;
            let (container, conn) = slot.clone().expect("claimed above");
            (container, conn, cold)
        };
        let (conn, _conn_guard) = self.conn_for(&session, &container, conn);
        let queued = queued_at.elapsed();
        // A bounded persistent workspace is watched while the task runs: a task that takes
        // it over the bound is killed, so a runaway writer cannot fill the host's disk. (An
        // engine volume is not: it is measured after each task, below.)
        let watch = match (&session.workspace, cfg.workspace_max_size) {
            (Some(ws), Some(max)) if ws.home == crate::workspace::Home::HostDir => {
                let store = &ws.store;
                let stop = tokio_util::sync::CancellationToken::new();
                spec.stop = Some(stop.clone());
                Some((
                    crate::workspace::watch_size(store.files(&session.id), max),
                    stop,
                    max,
                ))
            }
            _ => None,
        };
        let exec = task::execute(&self.0.metrics, &pool.name, &container, &conn, &spec, &out);
        let (ran, over) = match watch {
            None => (exec.await, None),
            Some((watch, stop, max)) => {
                tokio::pin!(exec);
                tokio::select! {
                    ran = &mut exec => (ran, None),
                    bytes = watch => {
                        stop.cancel();
                        (exec.await, Some((bytes, max)))
                    }
                }
            }
        };
        if let Some((bytes, max)) = over {
            return Err(self
                .workspace_overrun(&session, &pool.name, &container, &conn, bytes, max)
                .await);
        }
        {
            let mut m = session.meta.lock();
            m.tasks += 1;
            m.last_used = Instant::now();
        }
        self.measure_workspace(&session, &cfg).await;
        match ran.result {
            Ok(exit) => Ok(TaskReport {
                task_id,
                pool: pool.name.clone(),
                container,
                exit,
                queued,
                run: ran.run,
                cold_start: cold,
            }),
            Err(e) => {
                // Only a container that really died costs the session its files: an engine
                // refusal (docker-exec) is not the container's fault, and a task whose end
                // the shim did not report is over once the shim answers idle again.
                let kept = match &e {
                    ExecError::Dead(_) => false,
                    ExecError::Engine(_) => true,
                    ExecError::Hung(_) => still_serves(&conn).await,
                };
                if kept {
                    tracing::warn!(session = %id, error = %e, "session task failed; the container and its files stay the session's");
                    return Err(SessionError::TaskFailed(format!(
                        "{}; the session keeps its container and files",
                        match e {
                            ExecError::Hung(after) => format!(
                                "the task's end was not reported within {after:?} after its timeout (it was killed)"
                            ),
                            other => other.to_string(),
                        }
                    )));
                }
                let why = match &e {
                    ExecError::Dead(why) => why.clone(),
                    other => other.to_string(),
                };
                // The container is gone or wedged: the session starts afresh next time
                // (unless a task running beside this one already saw to that).
                let mine = {
                    let mut slot = session.slot.lock().await;
                    let mine = slot.as_ref().is_some_and(|(c, _)| *c == container);
                    if mine {
                        *slot = None;
                        let mut m = session.meta.lock();
                        m.container = None;
                        m.lost = Some(why.clone());
                    }
                    mine
                };
                drop(conn);
                let _ = self.0.runtime.remove(&container).await;
                if mine {
                    self.0.metrics.removed(&pool.name, RemoveReason::Unhealthy);
                }
                // 502 container_failed, as for a pool task, saying what the session lost.
                let e = match e {
                    ExecError::Dead(why) => ExecError::Dead(format!(
                        "{why}; {} and its next task starts a fresh container",
                        lost_files(&session)
                    )),
                    other => other,
                };
                Err(SubmitError::Exec(e).into())
            }
        }
    }

    /// The connection one task uses: the container's own (its shim) when no other task of
    /// the session holds it, else a `docker exec` of its own in the same container (same
    /// files, same limits, tens of milliseconds more). With `max_concurrent_tasks = 1` it is
    /// always the container's own.
    fn conn_for<'s>(
        &self,
        session: &'s Session,
        container: &str,
        conn: Conn,
    ) -> (Conn, Option<ConnGuard<'s>>) {
        use std::sync::atomic::Ordering;
        if matches!(conn, Conn::DockerExec(_)) {
            return (conn, None);
        }
        match session
            .conn_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => (conn, Some(ConnGuard(session))),
            Err(_) => (
                Conn::DockerExec(crate::exec::DockerExecConn {
                    runtime: self.0.runtime.clone(),
                    container: container.to_string(),
                }),
                None,
            ),
        }
    }

    /// Runs a helper command in the session's container (file transfer), with `stdin`,
    /// returning its exit, stdout and stderr; the output cap is `max_output` bytes.
    ///
    /// Errors: unknown session, no container yet ([`SessionError::Invalid`]), or the
    /// container failed.
    pub async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        stdin: bytes::Bytes,
        max_output: u64,
    ) -> Result<(TaskExit, Vec<u8>, Vec<u8>), SessionError> {
        let session = self
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let request = TaskRequest {
            argv,
            stdin,
            ..Default::default()
        };
        let pool = self
            .0
            .pools
            .get(&session.pool)
            .ok_or_else(|| SubmitError::UnknownPool(session.pool.clone()))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cfg = (*pool.config()).clone();
        cfg.max_output = max_output;
        let spec = task::validate(&cfg, request)?;
        let _active = ActiveGuard::new(&session);
        let _permit = session
            .permits
            .acquire()
            .await
            .map_err(|_| SessionError::NotFound(id.to_string()))?;
        let held = {
            let slot = session.slot.lock().await;
            if session.meta.lock().ended {
                return Err(SessionError::NotFound(id.to_string()));
            }
            slot.clone()
        };
        let Some((container, conn)) = held else {
            if let Some(why) = session.meta.lock().lost.clone() {
                return Err(SessionError::TaskFailed(format!(
                    "session {id:?}'s container died during an earlier task ({why}); {}; its next task starts a fresh container",
                    lost_files(&session)
                )));
            }
            return Err(SessionError::Invalid(format!(
                "session {id:?} has no container yet: files appear once its first task ran (run one, e.g. \"true\")"
            )));
        };
        let (conn, _conn_guard) = self.conn_for(&session, &container, conn);
        let exit = conn.run(&spec, &tx).await.map_err(SubmitError::Exec)?;
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

    /// Holds the session's container for one file transfer ([`transfer`]): it takes one of
    /// the session's `max_concurrent_tasks` permits, as a task does, for as long as the
    /// [`transfer::Hold`] lives. With the default of 1 it waits for the running task, and
    /// the session's tasks wait until the hold is dropped.
    ///
    /// Errors: unknown session, no container yet (400), or its container died during an
    /// earlier task (502, its files are lost).
    pub async fn hold(&self, id: &str) -> Result<transfer::Hold, SessionError> {
        let session = self
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let sid = id.to_string();
        tokio::spawn(async move {
            let _active = ActiveGuard::new(&session);
            let Ok(_permit) = session.permits.acquire().await else {
                let _ = ready_tx.send(Err(SessionError::NotFound(sid)));
                return;
            };
            let held = {
                let slot = session.slot.lock().await;
                let lost = session.meta.lock().lost.clone();
                if session.meta.lock().ended {
                    Err(SessionError::NotFound(sid))
                } else if let Some((container, conn)) = slot.as_ref() {
                    Ok((container.clone(), matches!(conn, Conn::Shim(_))))
                } else if let Some(why) = lost {
                    Err(SessionError::TaskFailed(format!(
                        "session {sid:?}'s container died during an earlier task ({why}); {}; its next task starts a fresh container",
                        lost_files(&session)
                    )))
                } else {
                    Err(SessionError::Invalid(format!(
                        "session {sid:?} has no container yet: files appear once its first task ran (run one, e.g. \"true\")"
                    )))
                }
            };
            let ok = held.is_ok();
            if ready_tx.send(held).is_ok() && ok {
                // Until the transfer drops its hold (or gives up).
                let _ = release_rx.await;
            }
        });
        let (container, shim) = ready_rx
            .await
            .map_err(|_| SessionError::NotFound(id.to_string()))??;
        Ok(transfer::Hold {
            container,
            shim,
            _release: release_tx,
        })
    }

    /// Re-creates a session around a container a previous daemon run left running; false
    /// (and nothing changed) when a live session has that id already. `slot` is the
    /// container's workspace slot key (`warmpool.slot`) and `seen` how the host sees its
    /// `/workspace` (`crate::workspace::seen_from_host`): a persistent workspace is brought
    /// into it if a crash cut its claim short (`crate::workspace::Store::attach`); if that
    /// fails the container is not adopted.
    pub fn adopt(
        &self,
        id: &str,
        pool: &str,
        container: String,
        conn: Conn,
        slot: Option<String>,
        seen: Option<std::path::PathBuf>,
    ) -> bool {
        let idle_timeout = self
            .0
            .pools
            .get(pool)
            .map(|p| p.config().session_idle_timeout)
            .unwrap_or(Duration::from_secs(300));
        let concurrency = self
            .0
            .pools
            .get(pool)
            .map_or(1, |p| p.config().max_concurrent_tasks);
        let mut session = Session::new(id.to_string(), pool.to_string(), idle_timeout)
            .with_concurrency(concurrency);
        session.workspace = self.0.pools.get(pool).and_then(|p| workspace_of(&p));
        if self.0.map.lock().contains_key(id) {
            return false;
        }
        if let (Some(ws), Some(key)) = (&session.workspace, slot) {
            if ws.home == crate::workspace::Home::HostDir {
                let owner = self
                    .0
                    .pools
                    .get(pool)
                    .and_then(|p| crate::workspace::numeric_owner(&p.config().security.user));
                if let Err(e) = ws.store.attach(id, pool, &key, seen.as_deref(), owner) {
                    tracing::warn!(session = %id, error = %e, "could not bring the workspace into the session's container; not adopted");
                    return false;
                }
            }
        }
        session.meta.lock().container = Some(container.clone());
        *session.slot.try_lock().expect("new session") = Some((container, conn));
        {
            let mut map = self.0.map.lock();
            if map.contains_key(id) {
                return false;
            }
            map.insert(id.to_string(), Arc::new(session));
        }
        self.publish();
        true
    }

    /// Sets `warmpool_sessions` of every pool.
    fn publish(&self) {
        let mut per_pool: HashMap<String, i64> = self
            .0
            .pools
            .list()
            .iter()
            .map(|p| (p.name.clone(), 0))
            .collect();
        for s in self.0.map.lock().values() {
            if !s.meta.lock().ended {
                *per_pool.entry(s.pool.clone()).or_default() += 1;
            }
        }
        for (pool, n) in per_pool {
            self.0.metrics.set_sessions(&pool, n);
        }
    }
}

/// What a session loses with its container: its files, or for a persistent workspace only
/// what lies outside /workspace.
fn lost_files(session: &Session) -> &'static str {
    if session.workspace.is_some() {
        "the session's workdir is lost (its /workspace is kept)"
    } else {
        "the session's files are lost"
    }
}

/// Whether a container whose task's end went unreported still serves: its shim answers a
/// ping and runs nothing (the task was killed), or a trivial exec runs (docker-exec).
async fn still_serves(conn: &Conn) -> bool {
    match conn {
        Conn::Shim(c) => matches!(c.ping(ADOPT_PING_TIMEOUT).await, Ok(false)),
        Conn::DockerExec(_) => conn.probe(None, ADOPT_PING_TIMEOUT).await.is_ok(),
    }
}
