//! Applying a new configuration as a difference, and adding and removing pools.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{ReloadSummary, Supervisor};
use crate::config::{Config, NetworkMode, PoolConfig};
use crate::metrics::RemoveReason;
use crate::pool::Pool;

/// How long a removed pool's container removals may take before the reload goes on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Applies a new configuration: validated by the caller, applied as a difference. A new
    /// pool warms; a removed one stops taking tasks, lets its running ones finish, and goes;
    /// a changed container spec replaces containers one by one, surge first (the reconcile
    /// loop sees their old spec hash); sizing and timing changes touch no container. Every
    /// failed pool, changed or not, is failed no more and tries its starts again at once.
    ///
    /// Errors: the daemon is still starting, or a new pool's network cannot be set up.
    pub async fn reload(self: &Arc<Self>, new: &Config) -> Result<ReloadSummary, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        if !self.started.load(Ordering::Acquire) {
            // start() creates the pools of the file it read without this lock: a reload now
            // would race it (and may wait on an engine that is not there yet).
            return Err("the daemon is still starting (waiting for the engine or creating pools); reload once /readyz answers".into());
        }
        let mut summary = ReloadSummary::default();
        for pool in self.pools() {
            if !new.pools.contains_key(&pool.name) {
                self.remove_pool(&pool.name).await;
                summary.removed.push(pool.name.clone());
            }
        }
        for (name, cfg) in &new.pools {
            match self.pool(name) {
                None => {
                    self.add_pool(cfg.clone())
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    summary.added.push(name.clone());
                }
                Some(pool) => {
                    let old = pool.config();
                    if *old == *cfg {
                        // An operator who fixed the engine (installed the missing runtime)
                        // reloads to be heard: a failed pool tries again at once.
                        pool.retry_failed("a reload");
                        continue;
                    }
                    if cfg.network == NetworkMode::Isolated && old.network != NetworkMode::Isolated
                    {
                        self.factory
                            .ensure_isolated_network(&cfg.name)
                            .await
                            .map_err(|e| format!("{e:#}"))?;
                    }
                    let spec = self.factory.container_spec(cfg);
                    if *spec.hash() != *pool.spec_hash() {
                        summary.replaced.push(name.clone());
                    } else {
                        summary.retuned.push(name.clone());
                    }
                    pool.set_config(cfg.clone(), spec);
                }
            }
        }
        self.sessions.set_max(new.server.max_sessions);
        Ok(summary)
    }

    /// Creates a pool's network when it needs its own, then the pool and its loop.
    ///
    /// Errors: the pool's network cannot be set up.
    pub async fn add_pool(self: &Arc<Self>, cfg: PoolConfig) -> anyhow::Result<()> {
        let pool = self.create_pool(cfg).await?;
        self.spawn_pool_loop(pool);
        Ok(())
    }

    /// Creates a pool's network when it needs its own, then the pool, without its loop.
    pub(super) async fn create_pool(&self, cfg: PoolConfig) -> anyhow::Result<Arc<Pool>> {
        self.factory.prepare(&cfg).await?;
        let spec = self.factory.container_spec(&cfg);
        let pool = Pool::new(cfg, spec, self.runtime.clone(), self.metrics.clone());
        self.metrics.set_sessions(&pool.name, 0);
        self.pools.insert(pool.clone());
        Ok(pool)
    }

    /// Takes a pool out: no new tasks, queued ones refused, running ones finish (bounded by
    /// the pool's task timeout), then its containers, sessions and network go.
    async fn remove_pool(&self, name: &str) {
        let Some(pool) = self.pool(name) else {
            return;
        };
        pool.close();
        let limit = pool.config().task_timeout + Duration::from_secs(5);
        pool.wait_for(limit, |c| c.busy == 0).await;
        // Sessions end while their pool is still there to say what its session_end_command
        // is (state saving must not be skipped because the pool is going); the second pass
        // catches a session created on it in between.
        self.sessions.end_of_pool(name).await;
        self.pools.remove(name);
        self.sessions.end_of_pool(name).await;
        pool.retire_all(RemoveReason::Reload);
        if !pool.join_work(DRAIN_TIMEOUT).await {
            tracing::warn!(pool = %name, "container removals of the removed pool still in flight after {DRAIN_TIMEOUT:?}; going on");
        }
        if pool.config().network == NetworkMode::Isolated {
            self.factory.remove_network_of(name).await;
        }
        self.metrics.forget_pool(name);
        tracing::info!(pool = %name, "pool removed by reload");
    }
}
