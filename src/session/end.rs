//! Ending sessions: one by id, all, or a pool's (end command, container removal, the
//! persistent workspace kept or deleted), and giving back an idle persistent session's
//! container.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::exec::TaskSpec;
use crate::metrics::RemoveReason;

use super::{Session, SessionError, SessionInfo, Sessions};

/// How long `session_end_command` may run, at most (the pool's task_timeout if shorter).
const END_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

impl Sessions {
    /// Ends a session: runs `session_end_command`, removes its container.
    ///
    /// Errors: [`SessionError::NotFound`] when it is not live.
    pub async fn end(&self, id: &str) -> Result<SessionInfo, SessionError> {
        self.end_with(id, false).await
    }

    /// [`Sessions::end`]; `delete_workspace` removes a persistent workspace too (else it is
    /// kept for a later session of the same id).
    ///
    /// Errors: [`SessionError::NotFound`] when it is not live; when the engine would not
    /// remove the workspace's volume, the session has ended but the workspace stays (listed,
    /// tried again by the next delete or `workspace_ttl`): 503 `engine_unavailable` saying so.
    pub async fn end_with(
        &self,
        id: &str,
        delete_workspace: bool,
    ) -> Result<SessionInfo, SessionError> {
        if let Some(s) = self.get(id) {
            if delete_workspace {
                s.meta.lock().delete_workspace = true;
            }
        }
        let session = {
            let mut map = self.0.map.lock();
            self.take_locked(&mut map, id)
        }
        .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        let info = session.info();
        match self.finish(session).await {
            Some(kept) => Err(SessionError::engine(format!(
                "session {id:?} ended, but its workspace was not deleted: {kept}"
            ))),
            None => Ok(info),
        }
    }

    /// The end of a session already out of the map (in `ending`): waits for its running
    /// task, runs the end command, removes the container. Returns why its workspace, to be
    /// deleted, was kept ([`Sessions::remove_workspace`]).
    pub(super) async fn finish(&self, session: Arc<Session>) -> Option<String> {
        let kept = self.finish_container(&session).await;
        // Only now is the container no longer the session's.
        session.meta.lock().container = None;
        self.0.ending.lock().retain(|s| !Arc::ptr_eq(s, &session));
        kept
    }

    async fn finish_container(&self, session: &Arc<Session>) -> Option<String> {
        session.meta.lock().ended = true;
        self.publish();
        // Every permit: the tasks that run (or came before) are done.
        let _all = session
            .permits
            .acquire_many(session.max_concurrent_tasks as u32)
            .await;
        let mut slot = session.slot.lock().await;
        let Some((container, conn)) = slot.take() else {
            return self.keep_or_delete_workspace(session).await;
        };
        let cfg = self.0.pools.get(&session.pool).map(|p| p.config());
        if let Some((cfg, cmd)) = cfg.and_then(|c| c.session_end_command.clone().map(|m| (c, m))) {
            let task = TaskSpec {
                argv: cmd,
                workdir: cfg.workdir.clone(),
                timeout: cfg.task_timeout.min(END_COMMAND_TIMEOUT),
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
        if let Err(e) = self.0.runtime.remove(&container).await {
            tracing::warn!(session = %session.id, error = %e, "removing the session's container failed; the reaper will retry");
        }
        self.0
            .metrics
            .removed(&session.pool, RemoveReason::SessionEnd);
        let kept = self.keep_or_delete_workspace(session).await;
        tracing::info!(session = %session.id, "session ended");
        kept
    }

    /// At a session's end (its container removed): its persistent workspace goes back to
    /// the store (a volume stays as it is), or is removed. Returns why a workspace to be
    /// removed was kept.
    async fn keep_or_delete_workspace(&self, session: &Session) -> Option<String> {
        let ws = session.workspace.as_ref()?;
        if session.meta.lock().delete_workspace {
            return self.remove_workspace(ws, &session.id).await.err();
        }
        if let Err(e) = ws.let_go(&session.id) {
            tracing::warn!(session = %session.id, error = %e, "could not put the workspace back in its store");
        }
        None
    }

    /// Removes workspace `id`: its volume (if it has one) first, then its record and files;
    /// `Ok(false)` when there was none.
    ///
    /// Errors: the engine would not remove the volume (in use by a container, unreachable):
    /// the record stays, so the workspace stays listed and the next delete or `workspace_ttl`
    /// sweep tries again; the message says so.
    pub(super) async fn remove_workspace(
        &self,
        ws: &crate::workspace::Workspace,
        id: &str,
    ) -> Result<bool, String> {
        let Some(record) = ws.store.record(id) else {
            return Ok(false);
        };
        if let Some(volume) = record.volume {
            if let Err(e) = self.0.runtime.remove_volume(&volume).await {
                tracing::warn!(workspace = %id, volume = %volume, error = %e, "could not remove the workspace's volume; it stays listed and is tried again");
                return Err(format!(
                    "the engine did not remove its volume {volume} ({e}); workspace {id:?} stays \
                     listed in GET /v1/workspaces: DELETE /v1/workspaces/{id} again (after \
                     removing what uses the volume), or workspace_ttl tries again"
                ));
            }
        }
        Ok(ws.store.delete(id))
    }

    /// A persistent session gone idle gives its container back (removed) and keeps its
    /// workspace (on the host, or in its engine volume); its next task resumes on a warm
    /// container (or, with a volume, a container created for it).
    pub(super) async fn release(&self, session: Arc<Session>) {
        let _all = session
            .permits
            .acquire_many(session.max_concurrent_tasks as u32)
            .await;
        let mut slot = session.slot.lock().await;
        if session.meta.lock().ended || !session.idle_expired() {
            return;
        }
        let Some((container, conn)) = slot.take() else {
            return;
        };
        drop(conn);
        if let Err(e) = self.0.runtime.remove(&container).await {
            tracing::warn!(session = %session.id, error = %e, "removing the idle session's container failed; the reaper will retry");
        }
        self.0
            .metrics
            .removed(&session.pool, RemoveReason::SessionEnd);
        if let Some(ws) = &session.workspace {
            if let Err(e) = ws.let_go(&session.id) {
                tracing::warn!(session = %session.id, error = %e, "could not put the workspace back in its store");
            }
        }
        {
            let mut m = session.meta.lock();
            m.container = None;
            m.released = true;
        }
        tracing::info!(session = %session.id, "idle: container given back, workspace kept");
    }

    /// Ends every session (shutdown), running their end commands.
    pub async fn end_all(&self) {
        self.end_where(|_| true).await;
    }

    /// Ends the sessions of one pool (a reload removed it).
    pub async fn end_of_pool(&self, pool: &str) {
        self.end_where(|s| s.pool == pool).await;
    }

    async fn end_where(&self, which: impl Fn(&Session) -> bool) {
        let chosen: Vec<Arc<Session>> = {
            let mut map = self.0.map.lock();
            let ids: Vec<String> = map
                .values()
                .filter(|s| which(s))
                .map(|s| s.id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| self.take_locked(&mut map, id))
                .collect()
        };
        futures_util::future::join_all(chosen.into_iter().map(|s| self.finish(s))).await;
    }
}
