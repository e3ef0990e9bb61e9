//! Claiming a session's container: taking a warm one from its pool, wiping it, naming it
//! after the session, giving it the session's size and moving its workspace in.

use std::sync::Arc;

use crate::exec::{Conn, RESET_TIMEOUT};
use crate::metrics::RemoveReason;
use crate::task::SubmitError;

use super::entry::ActiveGuard;
use super::{container_name, Session, SessionError, Sessions};

impl Sessions {
    /// Claims the session's container now (`POST /v1/sessions` with `"warm": true`) rather
    /// than on its first task; nothing to do when it holds one.
    ///
    /// Errors: unknown session, or no container could be had (as a task's acquire).
    pub async fn warm(&self, id: &str) -> Result<(), SessionError> {
        let session = self
            .get(id)
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let pool = self
            .0
            .pools
            .get(&session.pool)
            .ok_or_else(|| SubmitError::UnknownPool(session.pool.clone()))?;
        let _active = ActiveGuard::new(&session);
        let mut slot = session.slot.lock().await;
        if session.meta.lock().ended {
            return Err(SessionError::NotFound(id.to_string()));
        }
        self.claim(&session, &pool, &mut slot).await.map(|_| ())
    }

    /// Gives the session a container when `slot` holds none: a warm one from its pool,
    /// wiped if a pool task used it, renamed after the session. Returns whether it was a
    /// cold start.
    pub(super) async fn claim(
        &self,
        session: &Arc<Session>,
        pool: &Arc<crate::pool::Pool>,
        slot: &mut Option<(String, Conn)>,
    ) -> Result<bool, SessionError> {
        let id = session.id.as_str();
        let cfg = pool.config();
        let mut cold = false;
        if slot.is_none() {
            if let Some((ws, volume)) = session
                .workspace
                .as_ref()
                .and_then(|ws| Some((ws, ws.volume(id)?)))
            {
                return self.claim_cold(session, pool, ws, &volume, slot).await;
            }
            let lease = match pool.acquire().await {
                Ok(l) => l,
                Err(e) => {
                    self.0.metrics.task_rejected(&pool.name);
                    return Err(e.into());
                }
            };
            cold = lease.cold;
            let dirty = lease.dirty;
            // The session's before it leaves the pool, so the reaper always knows whose it is.
            {
                let mut m = session.meta.lock();
                m.container = Some(lease.container.clone());
                m.lost = None;
            }
            let (container, conn) = lease.detach();
            if dirty {
                let paths = [cfg.workdir.clone(), "/tmp".to_string()];
                if let Err(e) = conn.reset(&paths, RESET_TIMEOUT).await {
                    session.meta.lock().container = None;
                    let _ = self.0.runtime.remove(&container).await;
                    return Err(SubmitError::Exec(e).into());
                }
            }
            // The name marks the container as the session's before any task of the session
            // runs in it (and before its size or workspace is set): a restarted daemon gives
            // it back to the session, never to a pool. No name, no session container: it is
            // removed and this task fails cleanly.
            let name = container_name(&pool.name, id);
            if let Err(e) = self.0.runtime.rename(&container, &name).await {
                session.meta.lock().container = None;
                drop(conn);
                let _ = self.0.runtime.remove(&container).await;
                self.0.metrics.removed(&pool.name, RemoveReason::Unhealthy);
                tracing::warn!(session = %id, error = %e, "could not name the session's container; removed it");
                return Err(SessionError::engine(format!(
                    "could not mark a container as session {id}'s ({e}); it was removed, no task ran, and the session's next task tries another"
                )));
            }
            // The session's own size, by the engine's live update: no new container.
            if !session.limits.is_empty() {
                if let Err(e) = self
                    .0
                    .runtime
                    .update_limits(&container, &session.limits)
                    .await
                {
                    session.meta.lock().container = None;
                    let _ = self.0.runtime.remove(&container).await;
                    return Err(SessionError::Invalid(format!(
                        "the engine refused the session's memory, cpus or pids_limit: {e}"
                    )));
                }
            }
            // A persistent workspace moves into the container's slot.
            if let Some(ws) = &session.workspace {
                if let Err(e) = self
                    .attach_workspace(
                        &ws.store,
                        id,
                        &pool.name,
                        &container,
                        crate::workspace::numeric_owner(&cfg.security.user),
                    )
                    .await
                {
                    session.meta.lock().container = None;
                    let _ = self.0.runtime.remove(&container).await;
                    return Err(SessionError::Invalid(format!(
                        "could not bring the session's workspace into its container: {e}"
                    )));
                }
                session.meta.lock().released = false;
            }
            *slot = Some((container, conn));
            self.publish();
        }
        Ok(cold)
    }

    /// [`Sessions::claim`] for a workspace in an engine volume (a remote engine): the volume
    /// is created on the session's first claim (labelled with its instance, pool and session),
    /// and a container of the pool's spec is created for the session with it mounted at
    /// /workspace (`Pool::start_for_session`): a cold start, since a warm container cannot
    /// get a mount. A failed start leaves no container, and no volume it created.
    async fn claim_cold(
        &self,
        session: &Arc<Session>,
        pool: &Arc<crate::pool::Pool>,
        ws: &crate::workspace::Workspace,
        volume: &str,
        slot: &mut Option<(String, Conn)>,
    ) -> Result<bool, SessionError> {
        let id = session.id.as_str();
        let crate::workspace::Home::Volume { instance } = &ws.home else {
            unreachable!("only a volume workspace has a volume name");
        };
        let labels = crate::workspace::volume_labels(instance, &pool.name, id);
        // The record first (on the daemon's host), so no volume exists that it does not name.
        let recorded = ws.store.record(id).is_some();
        ws.store
            .record_volume(id, &pool.name, volume)
            .map_err(|e| {
                SessionError::Invalid(format!(
                    "could not write the record of session {id}'s workspace under {}: {e}; check pool {}'s workspace_root",
                    ws.store.root().display(),
                    pool.name
                ))
            })?;
        let forget = || {
            if !recorded {
                ws.store.delete(id);
            }
        };
        let fresh = match self.0.runtime.ensure_volume(volume, &labels).await {
            Ok(fresh) => fresh,
            Err(e) => {
                forget();
                self.0.metrics.task_rejected(&pool.name);
                return Err(SessionError::engine(format!(
                    "could not create or find session {id}'s workspace volume {volume} on the engine ({e}); no task ran, and the session's next task tries again"
                )));
            }
        };
        // The session's before it exists, by name, so the reaper leaves it alone.
        let name = container_name(&pool.name, id);
        {
            let mut m = session.meta.lock();
            m.container = Some(name.clone());
            m.lost = None;
        }
        // Given to the task user on the first claim, and again on any claim before one
        // succeeded (a crash between the volume's creation and its `chown`).
        let give = fresh || !ws.store.record(id).is_some_and(|r| r.volume_owned);
        let clock = std::time::Instant::now();
        let started = pool
            .start_for_session(&name, volume, give, &session.limits)
            .await;
        let (container, conn) = match started {
            Ok(started) => started,
            Err(e) => {
                session.meta.lock().container = None;
                // A volume made for this claim holds nothing yet: it goes with the failure.
                if fresh {
                    match self.0.runtime.remove_volume(volume).await {
                        Ok(()) => forget(),
                        Err(e) => {
                            tracing::warn!(session = %id, volume, error = %e, "could not remove the workspace volume of a failed first start; DELETE /v1/workspaces/{id} retries")
                        }
                    }
                }
                self.0.metrics.task_rejected(&pool.name);
                let e = match e {
                    crate::pool::SessionStartError::Pool(refused) => return Err(refused.into()),
                    crate::pool::SessionStartError::Engine(e) => e,
                };
                tracing::warn!(session = %id, error = %e, "could not start the session's container with its workspace volume");
                return Err(SessionError::engine(format!(
                    "could not start a container of pool {} for session {id} with its workspace volume {volume} \
                     (a remote engine's persistent workspace needs a cold start per resume): {e}; no task ran, \
                     nothing was left behind, and the session's next task tries again",
                    pool.name
                )));
            }
        };
        self.0
            .metrics
            .workspace_resumed(&pool.name, clock.elapsed().as_secs_f64());
        if give {
            if let Err(e) = ws.store.mark_volume_owned(id) {
                tracing::warn!(session = %id, error = %e, "could not record that the workspace volume was given to the task user; the next claim gives it again");
            }
        }
        {
            let mut m = session.meta.lock();
            m.container = Some(container.clone());
            m.released = false;
        }
        *slot = Some((container, conn));
        self.publish();
        Ok(true)
    }

    /// Brings workspace `id` into the slot of `container` (found by its `warmpool.slot`
    /// label): by a bind mount the container is checked to see, through its main process's
    /// `/proc/<pid>/root`, or else by rename (`crate::workspace::Store::attach`).
    async fn attach_workspace(
        &self,
        store: &crate::workspace::Store,
        id: &str,
        pool: &str,
        container: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        let inspected = self
            .0
            .runtime
            .inspect_process(container)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the container is gone".to_string())?;
        let key = inspected
            .labels
            .get(crate::workspace::LABEL_SLOT)
            .cloned()
            .ok_or_else(|| "the container has no workspace slot".to_string())?;
        let seen = inspected
            .pid
            .filter(|_| self.0.runtime.shares_mounts())
            .map(crate::workspace::seen_from_host);
        let brought = store
            .attach(id, pool, &key, seen.as_deref(), owner)
            .map_err(|e| e.to_string())?;
        tracing::debug!(session = %id, ?brought, took = ?started.elapsed(), "workspace brought into its container");
        self.0
            .metrics
            .workspace_resumed(pool, started.elapsed().as_secs_f64());
        Ok(())
    }
}
