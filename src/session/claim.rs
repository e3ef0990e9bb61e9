//! Claiming a session's container: taking a warm one from its pool, wiping it, naming it
//! after the session, giving it the session's size and moving its workspace in.

use std::sync::Arc;

use crate::exec::{Conn, ExecError, RESET_TIMEOUT};
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
                return Err(SubmitError::Exec(ExecError::Engine(format!(
                    "could not mark a container as session {id}'s ({e}); it was removed, no task ran, and the session's next task tries another"
                )))
                .into());
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
            if let Some(store) = &session.workspace {
                if let Err(e) = self
                    .attach_workspace(store, id, &pool.name, &container)
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

    /// Moves workspace `id` into the slot of `container` (found by its `warmpool.slot` label).
    async fn attach_workspace(
        &self,
        store: &crate::workspace::Store,
        id: &str,
        pool: &str,
        container: &str,
    ) -> Result<(), String> {
        let list = self
            .0
            .runtime
            .list_managed()
            .await
            .map_err(|e| e.to_string())?;
        let key = list
            .into_iter()
            .find(|c| c.id == container)
            .and_then(|c| c.labels.get(crate::workspace::LABEL_SLOT).cloned())
            .ok_or_else(|| "the container has no workspace slot".to_string())?;
        store.attach(id, pool, &key).map_err(|e| e.to_string())
    }
}
