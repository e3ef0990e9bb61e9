//! A persistent workspace's bound (docs/configuration.md, `workspace_max_size`): a task or
//! upload is refused while the workspace is over it, the task that takes it over is killed,
//! and the workspace is measured after each task and upload.

use super::{Session, SessionError, Sessions};
use crate::config::PoolConfig;
use crate::exec::Conn;
use crate::metrics::RemoveReason;

/// 507 `workspace_full` when the session's workspace, as last measured, is over its pool's
/// `workspace_max_size`; `None` when it is within it or unbounded.
pub(super) fn over_bound(session: &Session, cfg: &PoolConfig) -> Option<SessionError> {
    let held = session.meta.lock().workspace_bytes;
    let max = cfg.workspace_max_size.filter(|m| held > *m)?;
    let id = &session.id;
    Some(SessionError::WorkspaceFull(format!(
        "the workspace of session {id:?} holds {held} bytes, over pool {}'s workspace_max_size ({max} bytes): \
         tasks and uploads are refused until it is under it (it is measured again at each one); \
         free space in it from the host (with a local engine it is a directory under workspace_root), \
         delete it (DELETE /v1/workspaces/{id}), or raise workspace_max_size in pools.toml (a reload \
         applies it); its files can still be read",
        cfg.name
    )))
}

impl Sessions {
    /// Before a task or upload: 507 `workspace_full` while the session's persistent
    /// workspace is over `workspace_max_size`. Over it as last measured, it is measured
    /// again first, so space freed meanwhile (from the host) lets the session go on.
    pub(super) async fn refuse_if_over(
        &self,
        session: &Session,
        cfg: &PoolConfig,
    ) -> Result<(), SessionError> {
        if over_bound(session, cfg).is_none() {
            return Ok(());
        }
        self.measure_workspace(session, cfg).await;
        over_bound(session, cfg).map_or(Ok(()), Err)
    }

    /// Before an upload into session `id`'s container: [`Sessions::refuse_if_over`], as for
    /// a task. Other errors are left to the transfer itself (unknown session: it says so).
    /// Uploads that run at once are each checked before any is measured, so each can take
    /// the workspace over by up to one request body.
    pub async fn upload_room(&self, id: &str) -> Result<(), SessionError> {
        let Some(session) = self.get(id) else {
            return Ok(());
        };
        let Some(pool) = self.0.pools.get(&session.pool) else {
            return Ok(());
        };
        self.refuse_if_over(&session, &pool.config()).await
    }

    /// After an upload into session `id`'s container: measures its bounded workspace again,
    /// so an upload takes it over by at most one request body (`max_request_body`) before
    /// the next task or upload is refused.
    pub async fn after_upload(&self, id: &str) {
        let Some(session) = self.get(id) else {
            return;
        };
        let Some(pool) = self.0.pools.get(&session.pool) else {
            return;
        };
        self.measure_workspace(&session, &pool.config()).await;
    }

    /// Measures a bounded persistent workspace into the session's `workspace_bytes`: a host
    /// directory by a walk, an engine volume by the engine's disk usage answer (a volume it
    /// does not report: 0; no answer: the last measure stays, so an engine busy with another
    /// disk-usage call does not lift the bound). Nothing for an unbounded or ephemeral one.
    pub(super) async fn measure_workspace(&self, session: &Session, cfg: &PoolConfig) {
        let (Some(ws), Some(_)) = (&session.workspace, cfg.workspace_max_size) else {
            return;
        };
        let bytes = match ws.volume(&session.id) {
            None => {
                let files = ws.store.files(&session.id);
                tokio::task::spawn_blocking(move || crate::workspace::size_of(&files))
                    .await
                    .unwrap_or(0)
            }
            Some(volume) => match self.0.runtime.volume_sizes().await {
                Ok(sizes) => sizes.get(&volume).copied().unwrap_or(0),
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "could not ask the engine for the workspace volume's size; keeping the last measure");
                    return;
                }
            },
        };
        session.meta.lock().workspace_bytes = bytes;
    }

    /// Ends a task that took its session's workspace over `workspace_max_size` (already
    /// killed through its stop, or, for a `docker-exec` task the engine cannot kill, by
    /// removing the container: the workspace stays on the host) and says so.
    pub(super) async fn workspace_overrun(
        &self,
        session: &Session,
        pool: &str,
        container: &str,
        conn: &Conn,
        bytes: u64,
        max: u64,
    ) -> SessionError {
        session.meta.lock().workspace_bytes = bytes;
        let id = &session.id;
        tracing::warn!(session = %id, bytes, max, "task killed: its workspace passed workspace_max_size");
        if matches!(conn, Conn::DockerExec(_)) {
            {
                let mut slot = session.slot.lock().await;
                if slot.as_ref().is_some_and(|(c, _)| c == container) {
                    *slot = None;
                    session.meta.lock().container = None;
                }
            }
            let _ = self.0.runtime.remove(container).await;
            self.0.metrics.removed(pool, RemoveReason::Unhealthy);
        }
        SessionError::WorkspaceFull(format!(
            "the task was killed: it took the workspace of session {id:?} to {bytes} bytes, over pool {pool}'s \
             workspace_max_size ({max} bytes); delete files (DELETE /v1/workspaces/{id} removes it all) \
             or raise workspace_max_size in pools.toml (a reload applies it)"
        ))
    }
}
