//! The idle reaper (ends idle sessions, gives back idle persistent sessions' containers)
//! and the persistent workspaces: listing, deleting, sweeping and restoring them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{workspace_of, Session, SessionError, Sessions};

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

    /// The workspaces of the persistent pools, with their pools' names and TTLs.
    fn stores(&self) -> Vec<(String, crate::workspace::Workspace, Duration)> {
        self.0
            .pools
            .list()
            .iter()
            .filter_map(|p| Some((p.name.clone(), workspace_of(p)?, p.config().workspace_ttl)))
            .collect()
    }

    /// Every persistent workspace of every pool. Host directories are measured by a walk;
    /// engine volumes by the engine's disk usage answer, 0 when it does not say.
    pub async fn workspaces(&self) -> Vec<crate::workspace::WorkspaceInfo> {
        let me = self.clone();
        let mut out = tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (_, ws, _) in me.stores() {
                if seen.insert(ws.store.root().to_path_buf()) {
                    out.extend(ws.store.list());
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        if out.iter().any(|w| w.volume.is_some()) {
            let sizes = self.0.runtime.volume_sizes().await.unwrap_or_default();
            for w in &mut out {
                if let Some(v) = &w.volume {
                    w.bytes = sizes.get(v).copied().unwrap_or(0);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Removes workspace `id`: ends its live session if it has one. `Ok(false)` when there
    /// is no such workspace.
    ///
    /// Errors: the engine would not remove the workspace's volume (it stays listed; the
    /// message says what to do), as 503 `engine_unavailable`.
    pub async fn delete_workspace(&self, id: &str) -> Result<bool, SessionError> {
        if self.get(id).is_some_and(|s| s.workspace.is_some()) {
            return match self.end_with(id, true).await {
                Ok(_) => Ok(true),
                Err(SessionError::NotFound(_)) => Ok(false),
                Err(e) => Err(e),
            };
        }
        let mut found = false;
        for (pool, ws, _) in self.stores() {
            if ws.store.record(id).is_some_and(|r| r.pool == pool) {
                found |= self
                    .remove_workspace(&ws, id)
                    .await
                    .map_err(SessionError::engine)?;
            }
        }
        Ok(found)
    }

    /// Measures workspaces for the metrics and removes those unused past their pool's
    /// `workspace_ttl` that no live session holds.
    fn sweep_workspaces(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            // Slots of containers that are gone (a retired pool container) go too.
            let listed_at = std::time::SystemTime::now();
            let Ok(list) = me.0.runtime.list_managed().await else {
                return;
            };
            let live: std::collections::HashSet<String> = list
                .into_iter()
                .filter_map(|c| c.labels.get(crate::workspace::LABEL_SLOT).cloned())
                .collect();
            let sweeper = me.clone();
            let Ok(expired) =
                tokio::task::spawn_blocking(move || sweeper.sweep_stores(&live, listed_at)).await
            else {
                return;
            };
            // Volumes are the engine's to remove, which the blocking sweep cannot ask.
            for (ws, id) in expired {
                // A volume the engine keeps is logged there, and tried again next sweep.
                if let Ok(true) = me.remove_workspace(&ws, &id).await {
                    tracing::info!(workspace = %id, "workspace unused past workspace_ttl: removed");
                }
            }
        });
    }

    /// Removes the expired host-directory workspaces no live session holds, sweeps slots and
    /// sets the metrics; returns the expired volume workspaces, for the caller to remove.
    /// (A volume's bytes are not counted here: asking the engine walks every volume.)
    fn sweep_stores(
        &self,
        live: &std::collections::HashSet<String>,
        listed_at: std::time::SystemTime,
    ) -> Vec<(crate::workspace::Workspace, String)> {
        let mut volumes = Vec::new();
        for (pool, ws, ttl) in self.stores() {
            let store = &ws.store;
            for w in store.expired(ttl) {
                if w.pool == pool && self.get(&w.id).is_none() {
                    if w.volume.is_some() {
                        volumes.push((ws.clone(), w.id.clone()));
                    } else {
                        tracing::info!(workspace = %w.id, "workspace unused past workspace_ttl: removed");
                        store.delete(&w.id);
                    }
                }
            }
            store.sweep_slots(live, listed_at);
            let mine: Vec<_> = store
                .list()
                .into_iter()
                .filter(|w| w.pool == pool)
                .collect();
            let bytes: u64 = mine.iter().map(|w| w.bytes).sum();
            self.0
                .metrics
                .set_workspaces(&pool, mine.len() as i64, bytes as i64);
        }
        volumes
    }

    /// Writes a record for each workspace volume of this instance's volume pools that has
    /// none (the daemon moved hosts, `workspace_root` was wiped): the engine's labels name
    /// its pool and session, so [`Sessions::restore_workspaces`] brings it back like any
    /// other, listed and swept by `workspace_ttl` (counted from now). Nothing without a
    /// label of a current volume pool is touched.
    pub async fn record_unrecorded_volumes(&self) {
        use crate::runtime::{LABEL_INSTANCE, LABEL_POOL, LABEL_SESSION};
        let volume_pools: Vec<_> = self
            .stores()
            .into_iter()
            .filter_map(|(pool, ws, _)| match &ws.home {
                crate::workspace::Home::Volume { instance } => {
                    Some((pool, ws.clone(), instance.clone()))
                }
                crate::workspace::Home::HostDir => None,
            })
            .collect();
        if volume_pools.is_empty() {
            return;
        }
        let volumes = match self.0.runtime.list_volumes().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the engine's workspace volumes");
                return;
            }
        };
        for v in volumes {
            let label = |k: &str| v.labels.get(k).map(String::as_str);
            let Some((pool, ws, _)) = volume_pools.iter().find(|(pool, _, instance)| {
                label(LABEL_INSTANCE) == Some(instance) && label(LABEL_POOL) == Some(pool)
            }) else {
                continue;
            };
            let Some(id) = label(LABEL_SESSION) else {
                continue;
            };
            if ws.volume(id).as_deref() != Some(v.name.as_str()) || ws.store.record(id).is_some() {
                continue;
            }
            match ws.store.record_volume(id, pool, &v.name) {
                Ok(()) => {
                    tracing::info!(session = %id, volume = %v.name, "recorded a workspace volume the daemon had no record of")
                }
                Err(e) => {
                    tracing::warn!(session = %id, volume = %v.name, error = %e, "could not record a workspace volume")
                }
            }
        }
    }

    /// Re-creates, idle, the sessions of the persistent workspaces a previous run left
    /// (those whose container was not adopted).
    pub fn restore_workspaces(&self) {
        for (pool, ws, _) in self.stores() {
            for w in ws.store.list() {
                if w.pool != pool || self.get(&w.id).is_some() {
                    continue;
                }
                let p = self.0.pools.get(&pool).expect("listed above");
                let cfg = p.config();
                let mut session =
                    Session::new(w.id.clone(), pool.clone(), cfg.session_idle_timeout)
                        .with_concurrency(cfg.max_concurrent_tasks);
                session.workspace = Some(ws.clone());
                session.meta.lock().released = true;
                tracing::info!(session = %w.id, "restored an idle session around its workspace");
                self.0.map.lock().insert(w.id.clone(), Arc::new(session));
            }
        }
        self.publish();
    }
}
