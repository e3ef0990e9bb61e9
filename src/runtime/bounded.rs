//! One bound on container removals for the whole daemon, whatever asks for them (pools
//! retiring members, shutdown, the reaper, adoption, sessions ending).
//!
//! Why: a pool retires members in the background, one task per removal, and shutdown
//! retires every member of every pool at once. With 1,000 containers that was 1,000
//! `DELETE /containers` at the same moment, and after such a burst dockerd keeps listing
//! containers it has removed ("Removal In Progress" ghosts) and answers slowly for a
//! while. Removals queue here instead, [`PARALLEL_REMOVES`] at a time. Creates have their
//! own bound per pool (`pool::PARALLEL_CREATES`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{
    Attached, ContainerSpec, ContainerSummary, ExecSpec, ExecStarted, Inspected, Limits, Runtime,
    RuntimeError,
};

/// Container removals in flight at once, across the daemon.
pub const PARALLEL_REMOVES: usize = 16;

/// A [`Runtime`] that passes every call through to `inner`, holding removals to
/// [`PARALLEL_REMOVES`] at once (the others wait their turn, in order).
pub struct Bounded {
    inner: Arc<dyn Runtime>,
    removes: Semaphore,
}

impl Bounded {
    /// Wraps `inner`; every user of the daemon's engine should share one `Bounded`.
    pub fn new(inner: Arc<dyn Runtime>) -> Bounded {
        Bounded {
            inner,
            removes: Semaphore::new(PARALLEL_REMOVES),
        }
    }
}

#[async_trait]
impl Runtime for Bounded {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.inner.ping().await
    }
    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.inner.ensure_network(name, labels).await
    }
    async fn network_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        self.inner.network_exists(name).await
    }
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_network(name).await
    }
    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.inner.create(name, spec).await
    }
    async fn attach(&self, id: &str) -> Result<Attached, RuntimeError> {
        self.inner.attach(id).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.start(id).await
    }
    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        self.inner.rename(id, name).await
    }
    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        self.inner.update_limits(id, limits).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = self.removes.acquire().await;
        self.inner.remove(id).await
    }
    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.inner.list_managed().await
    }
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        self.inner.is_running(id).await
    }
    async fn inspect_state(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        self.inner.inspect_state(id).await
    }
    async fn inspect_process(&self, id: &str) -> Result<Option<Inspected>, RuntimeError> {
        self.inner.inspect_process(id).await
    }
    fn shares_mounts(&self) -> bool {
        self.inner.shares_mounts()
    }
    async fn exec_start(&self, id: &str, spec: &ExecSpec) -> Result<ExecStarted, RuntimeError> {
        self.inner.exec_start(id, spec).await
    }
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        self.inner.exec_exit_code(exec_id).await
    }
    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        self.inner.wait(id).await
    }
    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, RuntimeError> {
        self.inner.ensure_volume(name, labels).await
    }
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_volume(name).await
    }
    async fn list_volumes(&self) -> Result<Vec<super::VolumeSummary>, RuntimeError> {
        self.inner.list_volumes().await
    }
    async fn volume_sizes(&self) -> Result<BTreeMap<String, u64>, RuntimeError> {
        self.inner.volume_sizes().await
    }
}
