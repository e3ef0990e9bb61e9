//! Shutdown: stop taking tasks, let running ones finish up to `shutdown_grace`, then remove
//! every container and network this daemon made (docs/operations.md).
//!
//! Nothing here polls: the loops spawned at start end at the stop signal and are joined;
//! running tasks each hold a sender of one channel, so "all done" is that channel closing;
//! each pool joins its own background work (starts in flight, removals). The one wait on a
//! timer is the last step, [`Supervisor::confirm_none_left`]: the engine has no event for
//! "this removal in progress is over", so it is asked again, on a back-off.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::Supervisor;
use crate::metrics::RemoveReason;
use crate::runtime::{ContainerSummary, RuntimeError, LABEL_DAEMON};

/// How long shutdown waits for container starts and removals already in flight.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for the engine to confirm that no container of this instance is
/// left (removals it reports in progress) without seeing progress: the wait goes on while
/// fewer containers are left at each look, since 1,000 removals on a loaded 2-core engine
/// outlast any fixed bound that is short enough for a stuck one.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest shutdown waits for that confirmation, progress or not.
pub const CONFIRM_MAX: Duration = Duration::from_secs(300);

/// Whether the confirmation wait is over at `now`: no fewer containers left since
/// `last_progress` for `stall` or more, or `max` since the wait began at `start`. Pure.
pub fn confirm_wait_over(
    start: Instant,
    last_progress: Instant,
    now: Instant,
    stall: Duration,
    max: Duration,
) -> bool {
    now >= last_progress + stall || now >= start + max
}

/// Inspects in flight at once while confirming (1,000 at once would slow the engine down
/// just when it is busiest).
const PARALLEL_INSPECTS: usize = 16;

/// What the engine says is left of this instance once shutdown is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftovers {
    /// The engine confirms that no container of this instance exists (inspect finds none of
    /// those it lists).
    None,
    /// These containers (names) still exist after the retries and the wait.
    Remain(Vec<String>),
    /// The engine could not be asked (the error's text): nothing is confirmed.
    Unknown(String),
}

/// The pause before asking the engine again, the `attempt`-th time (0-based): 100 ms,
/// doubling, at most 2 s; so a wait of [`CONFIRM_TIMEOUT`] asks about 20 times, not in a
/// hot loop, and a removal that ends soon is seen soon.
pub fn confirm_pause(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(5));
    Duration::from_millis(ms.min(2_000))
}

impl Supervisor {
    /// Stops taking tasks, lets running ones finish up to `grace`, then removes every
    /// container and network this daemon made, and returns what the engine says is left of
    /// this instance ([`Supervisor::confirm_none_left`], waiting for removals in progress as
    /// long as they progress, up to [`CONFIRM_TIMEOUT`] without progress).
    pub async fn shutdown(&self, grace: Duration) -> Leftovers {
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
        // Whatever else carries our daemon id (a start that raced the shutdown); not those
        // a pool is still removing (with 1,000 containers the removals, 16 at a time, can
        // outlast the settle bound): a second request for each would only queue behind them.
        let pending = self.removals_in_flight();
        if let Ok(list) = self.list_ours().await {
            for c in list {
                if c.labels.get(LABEL_DAEMON) == Some(&self.daemon_id) && !pending.contains(&c.id) {
                    let _ = self.runtime.remove(&c.id).await;
                }
            }
        }
        let left = self.confirm_none_left(CONFIRM_TIMEOUT).await;
        self.factory.remove_networks().await;
        // The workspace roots' shared mounts go only when no container is left whose slot
        // bind depends on them; otherwise the next start, which adopts or removes those
        // containers, finds them in place.
        if left == Leftovers::None {
            // The current pools' roots, which a restarted daemon that only adopted may never
            // have asked about, and any other this run used.
            for pool in self.pools() {
                let spec = pool.spec();
                if let Some(ws) = spec.workspace.as_ref().filter(|_| spec.has_slot()) {
                    crate::workspace::slot_mount::release(std::path::Path::new(&ws.root));
                }
            }
            crate::workspace::slot_mount::release_instance(&self.instance);
        }
        left
    }

    /// Asks the engine what is left of this instance until it confirms none, or until
    /// `limit` passes with no fewer left (at most [`CONFIRM_MAX`] in all). Each round lists the instance's containers and inspects each: one inspect
    /// does not find is gone, however the listing shows it (dockerd lists "Removal In
    /// Progress" ghosts for a while after a burst of removals); one in `removing` state, or
    /// whose removal a pool still has in flight, is waited for; any other is removed again. Rounds are [`confirm_pause`] apart.
    ///
    /// Every container of the instance counts, not only this run's: start-up adopts or
    /// removes all of them, so they are all this daemon's to remove.
    pub async fn confirm_none_left(&self, limit: Duration) -> Leftovers {
        let start = Instant::now();
        let mut last_progress = start;
        let mut fewest = usize::MAX;
        let mut attempt = 0;
        loop {
            let left = match self.inspect_ours().await {
                Ok(left) => left,
                Err(e) => return Leftovers::Unknown(e.to_string()),
            };
            if left.is_empty() {
                return Leftovers::None;
            }
            let now = Instant::now();
            if left.len() < fewest {
                if fewest != usize::MAX {
                    // Progress: the removals are going through, only slowly; the back-off
                    // starts again so the end is seen soon.
                    attempt = 0;
                }
                fewest = left.len();
                last_progress = now;
            }
            if confirm_wait_over(start, last_progress, now, limit, CONFIRM_MAX) {
                let mut names: Vec<String> = left.into_iter().map(|(c, _)| c.name).collect();
                names.sort();
                return Leftovers::Remain(names);
            }
            let pending = self.removals_in_flight();
            let retry = left
                .iter()
                .filter(|(c, state)| state != "removing" && !pending.contains(&c.id))
                .map(|(c, state)| async move {
                    tracing::debug!(container = %c.name, state = %state, "shutdown: still there; removing it again");
                    if let Err(e) = self.runtime.remove(&c.id).await {
                        tracing::debug!(container = %c.name, error = %e, "shutdown: removal failed");
                    }
                });
            futures_util::future::join_all(retry).await;
            let deadline = (last_progress + limit).min(start + CONFIRM_MAX);
            let pause =
                confirm_pause(attempt).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Containers a pool's removal is still in flight for.
    fn removals_in_flight(&self) -> std::collections::HashSet<String> {
        self.pools()
            .iter()
            .flat_map(|p| p.removing_containers())
            .collect()
    }

    /// The instance's containers the engine lists and inspect still finds, with the state
    /// inspect gives.
    async fn inspect_ours(&self) -> Result<Vec<(ContainerSummary, String)>, RuntimeError> {
        let listed = self.list_ours().await?;
        let inspected: Vec<Result<Option<(ContainerSummary, String)>, RuntimeError>> =
            futures_util::stream::iter(listed)
                .map(
                    |c| async move { Ok(self.runtime.inspect_state(&c.id).await?.map(|s| (c, s))) },
                )
                .buffer_unordered(PARALLEL_INSPECTS)
                .collect()
                .await;
        let mut left = Vec::new();
        for r in inspected {
            if let Some(found) = r? {
                left.push(found);
            }
        }
        Ok(left)
    }
}
