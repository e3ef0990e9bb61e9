//! Shutdown: stop taking tasks, let running ones finish up to `shutdown_grace`, then remove
//! every container and network this daemon made (docs/operations.md).
//!
//! Nothing here polls: the loops spawned at start end at the stop signal and are joined;
//! running tasks each hold a sender of one channel, so "all done" is that channel closing;
//! each pool joins its own background work (starts in flight, removals).

use std::time::Duration;

use tokio::time::Instant;

use super::Supervisor;
use crate::metrics::RemoveReason;
use crate::runtime::LABEL_DAEMON;

/// How long shutdown waits for container starts and removals already in flight.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Stops taking tasks, lets running ones finish up to `grace`, then removes every
    /// container and network this daemon made.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        for pool in self.pools() {
            pool.close();
        }
        let deadline = Instant::now() + grace;
        // Sessions end like on DELETE (end command included), within the same grace.
        let _ = tokio::time::timeout(grace, self.sessions.end_all()).await;
        // Tasks in flight hold clones of this sender: dropping ours, the channel closes when
        // the last of them is done.
        drop(self.tasks_tx.lock().take());
        let mut done = self.tasks_rx.lock().await;
        if tokio::time::timeout_at(deadline, done.recv())
            .await
            .is_err()
        {
            let busy: usize = self.pools().iter().map(|p| p.counts().busy).sum();
            tracing::warn!(
                busy,
                "shutdown grace over; removing containers with tasks still running"
            );
        }
        drop(done);
        self.loops.close();
        self.loops.wait().await;
        // Every container goes; each pool then joins its background work, so a container
        // whose start was in flight comes up, is retired by its closed pool, and is removed
        // before this returns.
        for pool in self.pools() {
            pool.retire_all(RemoveReason::Shutdown);
        }
        let settled = self.pools().into_iter().map(|pool| async move {
            if !pool.join_work(SETTLE_TIMEOUT).await {
                tracing::warn!(pool = %pool.name, "shutdown: container starts or removals still in flight after {SETTLE_TIMEOUT:?}; going on");
            }
        });
        futures_util::future::join_all(settled).await;
        // Whatever else carries our daemon id (a start that raced the shutdown).
        if let Ok(list) = self.list_ours().await {
            for c in list {
                if c.labels.get(LABEL_DAEMON) == Some(&self.daemon_id) {
                    let _ = self.runtime.remove(&c.id).await;
                }
            }
        }
        self.factory.remove_networks().await;
    }
}
