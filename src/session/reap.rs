//! The idle reaper (ends idle sessions, gives back idle persistent sessions' containers)
//! and the persistent workspaces: listing, deleting, sweeping and restoring them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{workspace_store, Session, Sessions};

/// How often idle sessions are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// Every this many looks, workspaces are measured, and those unused past `workspace_ttl`
/// without a session are removed.
const WORKSPACE_SWEEP_EVERY: u64 = 10;

impl Sessions {
    /// Ends sessions idle past their timeout, until `stop` is cancelled.
    pub async fn reap_idle(self, stop: CancellationToken) {
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REAP_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let expired: Vec<Arc<Session>> = {
                let mut map = self.0.map.lock();
                let ids: Vec<String> = map
                    .values()
                    .filter(|s| s.workspace.is_none() && s.idle_expired())
                    .map(|s| s.id.clone())
                    .collect();
                ids.iter()
                    .filter_map(|id| self.take_locked(&mut map, id))
                    .collect()
            };
            for s in expired {
                tracing::info!(session = %s.id, "session idle past its timeout");
                let me = self.clone();
                tokio::spawn(async move { me.finish(s).await });
            }
            // Persistent sessions gone idle give their container back; past workspace_ttl
            // they end with their workspace.
            for s in self.list() {
                let Some(pool) = self.0.pools.get(&s.pool) else {
                    continue;
                };
                if s.workspace.is_none() {
                    continue;
                }
                if s.workspace_expired(pool.config().workspace_ttl) {
                    tracing::info!(session = %s.id, "workspace unused past workspace_ttl");
                    s.meta.lock().delete_workspace = true;
                    let me = self.clone();
                    let id = s.id.clone();
                    tokio::spawn(async move { me.end_with(&id, true).await });
                } else if s.idle_expired() {
                    let me = self.clone();
                    if s.meta.lock().container.is_some() {
                        tokio::spawn(async move { me.release(s).await });
                    } else {
                        // Never started: there is no workspace to keep, it ends as any other.
                        tracing::info!(session = %s.id, "session idle past its timeout");
                        let id = s.id.clone();
                        tokio::spawn(async move { me.end_with(&id, false).await });
                    }
                }
            }
            ticks += 1;
            if ticks.is_multiple_of(WORKSPACE_SWEEP_EVERY) {
                self.sweep_workspaces();
            }
        }
    }

    /// The workspace stores of the persistent pools, with their pools' names and TTLs.
    fn stores(&self) -> Vec<(String, crate::workspace::Store, Duration)> {
        self.0
            .pools
            .list()
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone(),
                    workspace_store(p)?,
                    p.config().workspace_ttl,
                ))
            })
            .collect()
    }

    /// Every persistent workspace of every pool.
    pub fn workspaces(&self) -> Vec<crate::workspace::WorkspaceInfo> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (_, store, _) in self.stores() {
            if seen.insert(store.root().to_path_buf()) {
                out.extend(store.list());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Removes workspace `id`: ends its live session if it has one. False when there is no
    /// such workspace.
    pub async fn delete_workspace(&self, id: &str) -> bool {
        if self.get(id).is_some_and(|s| s.workspace.is_some()) {
            return self.end_with(id, true).await.is_ok();
        }
        let mut found = false;
        for (pool, store, _) in self.stores() {
            if store.record(id).is_some_and(|r| r.pool == pool) {
                found |= store.delete(id);
            }
        }
        found
    }

    /// Measures workspaces for the metrics and removes those unused past their pool's
    /// `workspace_ttl` that no live session holds.
    fn sweep_workspaces(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            // Slots of containers that are gone (a retired pool container) go too.
            let Ok(list) = me.0.runtime.list_managed().await else {
                return;
            };
            let live: std::collections::HashSet<String> = list
                .into_iter()
                .filter_map(|c| c.labels.get(crate::workspace::LABEL_SLOT).cloned())
                .collect();
            let _ = tokio::task::spawn_blocking(move || me.sweep_stores(&live)).await;
        });
    }

    fn sweep_stores(&self, live: &std::collections::HashSet<String>) {
        let me = self;
        {
            for (pool, store, ttl) in me.stores() {
                for w in store.expired(ttl) {
                    if w.pool == pool && me.get(&w.id).is_none() {
                        tracing::info!(workspace = %w.id, "workspace unused past workspace_ttl: removed");
                        store.delete(&w.id);
                    }
                }
                store.sweep_slots(live);
                let mine: Vec<_> = store
                    .list()
                    .into_iter()
                    .filter(|w| w.pool == pool)
                    .collect();
                let bytes: u64 = mine.iter().map(|w| w.bytes).sum();
                me.0.metrics
                    .set_workspaces(&pool, mine.len() as i64, bytes as i64);
            }
        }
    }

    /// Re-creates, idle, the sessions of the persistent workspaces a previous run left
    /// (those whose container was not adopted).
    pub fn restore_workspaces(&self) {
        for (pool, store, _) in self.stores() {
            for w in store.list() {
                if w.pool != pool || self.get(&w.id).is_some() {
                    continue;
                }
                let p = self.0.pools.get(&pool).expect("listed above");
                let cfg = p.config();
                let mut session =
                    Session::new(w.id.clone(), pool.clone(), cfg.session_idle_timeout)
                        .with_concurrency(cfg.max_concurrent_tasks);
                session.workspace = Some(store.clone());
                session.meta.lock().released = true;
                tracing::info!(session = %w.id, "restored an idle session around its workspace");
                self.0.map.lock().insert(w.id.clone(), Arc::new(session));
            }
        }
        self.publish();
    }
}
