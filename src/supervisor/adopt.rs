//! What a previous run left behind (adopted or removed at start), and the reaper that
//! removes containers of this installation that no pool and no session holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Supervisor;
use crate::config::ExecMode;
use crate::metrics::RemoveReason;
use crate::runtime::{
    ContainerSummary, RuntimeError, LABEL_DAEMON, LABEL_INSTANCE, LABEL_POOL, LABEL_SPEC,
};

impl Supervisor {
    /// Managed containers of this installation (any daemon run of it).
    pub(super) async fn list_ours(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let all = self.runtime.list_managed().await?;
        Ok(all
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_INSTANCE).map(String::as_str) == Some(self.instance.as_str())
            })
            .collect())
    }

    /// Every container of this instance is from a previous run (this daemon has created
    /// nothing yet). Running shim containers that still fit are re-attached and adopted:
    /// idle ones of the current spec named as pool containers back into their pool (wiped,
    /// aged and counted as [`crate::pool::History::adopted`] says), session ones into their
    /// session (when two claim one session, the one whose slot its workspace record names,
    /// else the newest). Anything else, stuck `created` and
    /// `exited` ones included, is removed: a pool only takes back what is provably one of its
    /// clean members, never a container that served a session.
    pub(super) async fn adopt_or_remove(&self, mut list: Vec<ContainerSummary>) {
        // Of two containers naming one session, the one whose slot the session's workspace
        // record names wins (its files are there), then the newest.
        let named = |c: &ContainerSummary| -> bool {
            let pool_name = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            let Some(id) = crate::session::session_of_name(&pool_name, &c.name) else {
                return false;
            };
            let (Some(pool), Some(key)) = (
                self.pool(&pool_name),
                c.labels.get(crate::workspace::LABEL_SLOT),
            ) else {
                return false;
            };
            let spec = pool.spec();
            spec.workspace.as_ref().is_some_and(|ws| {
                crate::workspace::Store::new(&ws.root)
                    .record(&id)
                    .and_then(|r| r.slot)
                    .as_deref()
                    == Some(key.as_str())
            })
        };
        // Cached: `named` reads a record file, once per container rather than per comparison.
        list.sort_by_cached_key(|c| {
            (
                std::cmp::Reverse(named(c)),
                std::cmp::Reverse(c.created.unwrap_or(i64::MIN)),
            )
        });
        let mut claimed = HashSet::new();
        let mut work = Vec::new();
        for c in list {
            let pool_name = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            let session = crate::session::session_of_name(&pool_name, &c.name);
            // A second container of the same session (an old one whose removal failed) is
            // not adopted: only the newest is the session's.
            let first = session
                .as_ref()
                .is_none_or(|id| claimed.insert((pool_name.clone(), id.clone())));
            work.push(async move {
                if first {
                    if let Some(what) = self.try_adopt(&c, &pool_name, session).await {
                        tracing::info!(container = %c.name, "adopted {what} left by a previous run");
                        return;
                    }
                }
                tracing::info!(container = %c.name, state = %c.state, "removing a container left by a previous run");
                if self.runtime.remove(&c.id).await.is_ok() {
                    self.metrics.removed(&pool_name, RemoveReason::Orphan);
                }
            });
        }
        futures_util::future::join_all(work).await;
    }

    async fn try_adopt(
        &self,
        c: &ContainerSummary,
        pool_name: &str,
        session: Option<String>,
    ) -> Option<&'static str> {
        let pool = self.pool(pool_name)?;
        let cfg = pool.config();
        if c.state != "running" || cfg.exec != ExecMode::Shim {
            return None;
        }
        // A workspace slot in a pool whose workspaces are engine volumes (a remote engine; a
        // container an earlier build made): its /workspace is a directory of the engine's
        // host the daemon never moves, so it is removed, not adopted.
        if c.labels.contains_key(crate::workspace::LABEL_SLOT) && !pool.spec().has_slot() {
            return None;
        }
        let current = c.labels.get(LABEL_SPEC).map(String::as_str) == Some(&*pool.spec_hash());
        let pool_member = crate::session::is_pool_name(pool_name, &c.name);
        if session.is_none() && !(current && pool_member) {
            return None;
        }
        let (conn, busy) = crate::pool::reattach(&self.runtime, &c.id).await?;
        // A session's workspace may be mounted on its slot: whether the container sees it.
        let seen = match (&session, self.runtime.shares_mounts()) {
            (Some(_), true) if c.labels.contains_key(crate::workspace::LABEL_SLOT) => self
                .runtime
                .inspect_process(&c.id)
                .await
                .ok()
                .flatten()
                .and_then(|i| i.pid)
                .map(crate::workspace::seen_from_host),
            _ => None,
        };
        match session {
            Some(id) => self
                .sessions
                .adopt(
                    &id,
                    pool_name,
                    c.id.clone(),
                    conn,
                    c.labels.get(crate::workspace::LABEL_SLOT).cloned(),
                    seen,
                )
                .then_some("a session's container"),
            None if !busy => {
                let history = crate::pool::History::adopted(engine_age(c), cfg.max_uses);
                pool.adopt(c.id.clone(), c.name.clone(), conn, history);
                Some("an idle container")
            }
            None => None,
        }
    }

    /// Removes containers of this daemon that no pool knows (a failed start, a crash
    /// between create and start), every `health_check_interval` (the shortest of all pools).
    pub(super) async fn reap_loop(self: Arc<Self>) {
        loop {
            let interval = self
                .pools()
                .iter()
                .map(|p| p.config().health_check_interval)
                .min()
                .unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.stop.cancelled() => return,
            }
            self.reap_once().await;
        }
    }

    /// One pass of the reaper (docs/scaling.md, "The reaper").
    pub async fn reap_once(&self) {
        let listed_at = Instant::now();
        let Ok(list) = self.list_ours().await else {
            return;
        };
        // Known: members, containers being created or removed, and those removed while the
        // list was taken (a container removed during the listing may be in it; removing it
        // again would "succeed" and count it a second time, as an orphan).
        let mut known = HashSet::new();
        for pool in self.pools() {
            known.extend(pool.known_containers(listed_at));
        }
        // Containers held outside the pools: sessions'.
        known.extend(self.sessions.containers());
        for c in list {
            let ours = c.labels.get(LABEL_DAEMON) == Some(&self.daemon_id);
            if known.contains(&c.id) || known.contains(&c.name) {
                continue;
            }
            let pool = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            // A session's container no session holds is an ended session's whose removal
            // failed, even when a previous run created it: left alone, the next start would
            // bring the ended session back.
            let ended_session = crate::session::session_of_name(&pool, &c.name).is_some();
            if ours || c.state != "running" || ended_session {
                tracing::info!(container = %c.name, state = %c.state, "reaping a container no pool knows");
                if self.runtime.remove(&c.id).await.is_ok() {
                    self.metrics.removed(&pool, RemoveReason::Orphan);
                }
            }
        }
    }
}

/// How long ago the engine created the container; an unknown creation time counts as
/// "too old to keep" (`Duration::MAX`), so the container is renewed at once.
fn engine_age(c: &ContainerSummary) -> Duration {
    let Some(created) = c.created else {
        return Duration::MAX;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Duration::from_secs(now.saturating_sub(created).max(0) as u64)
}
