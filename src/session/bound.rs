//! A persistent workspace's bound while a task runs: the task that takes it over
//! `workspace_max_size` is killed (docs/configuration.md, `workspace_max_size`).

use super::{Session, SessionError, Sessions};
use crate::exec::Conn;
use crate::metrics::RemoveReason;

impl Sessions {
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
