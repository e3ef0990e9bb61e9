//! The simulated engine: a [`Runtime`] whose containers cost time to create and whose tasks
//! cost the time they say, under paused tokio time. It ships in the release binary (it is
//! what `warmpool simulate` runs on), so it is small and has no test knobs: the test-only
//! `runtime::fake` stays test-only.
//!
//! The model: the engine takes containers in one at a time, at most `rate` per second (each
//! create waits for its slot), and each is ready `latency` after its slot. Its containers run
//! a tiny shim that speaks the real protocol (the daemon's shim client is the one in use):
//! `sleep SECS` occupies the container for SECS of (paused) time, anything else exits 0 at
//! once (health commands). Every container's life, from the create call to the remove call,
//! is summed per pool: the container-seconds the simulator reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::runtime::{
    Attached, ContainerSpec, ContainerSummary, ExecSpec, ExecStarted, Runtime, RuntimeError,
    LABEL_POOL,
};
use crate::shim_proto::{Event, Exit, Request};

/// How the simulated engine creates containers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineModel {
    /// From a create's slot until the container is ready (create + start + greeting).
    pub latency: Duration,
    /// Creates the engine takes in per second, over all pools.
    pub rate: f64,
}

impl Default for EngineModel {
    /// Measured on the reference machine (docs/benchmarks.md): a cold create + start takes
    /// about 300 ms, and the engine handles a few creates a second.
    fn default() -> Self {
        EngineModel {
            latency: Duration::from_millis(300),
            rate: 4.0,
        }
    }
}

struct SimContainer {
    name: String,
    labels: BTreeMap<String, String>,
    state: &'static str,
    created: Instant,
    shim_end: Option<DuplexStream>,
    kill: Arc<Notify>,
}

/// Per-pool accounting of the simulated engine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolUsage {
    /// Containers created.
    pub creates: u64,
    /// Seconds of container life, from the create call to the remove call (or `until`).
    pub container_seconds: f64,
}

/// The simulated engine. See the module doc.
pub struct SimEngine {
    model: EngineModel,
    containers: Mutex<HashMap<String, SimContainer>>,
    networks: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// When the next create may begin.
    next_slot: Mutex<Option<Instant>>,
    next_id: AtomicUsize,
    /// Seconds of removed containers and creates, per pool.
    usage: Mutex<BTreeMap<String, PoolUsage>>,
    /// Container life before this instant is not counted (the pools' warm-up before the
    /// trace starts).
    epoch: Mutex<Option<Instant>>,
}

impl SimEngine {
    /// An empty engine with this model.
    pub fn new(model: EngineModel) -> Arc<SimEngine> {
        Arc::new(SimEngine {
            model,
            containers: Mutex::default(),
            networks: Mutex::default(),
            next_slot: Mutex::new(None),
            next_id: AtomicUsize::new(0),
            usage: Mutex::default(),
            epoch: Mutex::new(None),
        })
    }

    /// Counts container life from now on only, and the creates from now on.
    pub fn start_counting(&self) {
        *self.epoch.lock() = Some(Instant::now());
        self.usage.lock().clear();
    }

    fn since(&self, created: Instant) -> Instant {
        self.epoch.lock().map_or(created, |e| e.max(created))
    }

    /// Creates and container-seconds per pool, counting live containers up to `until`.
    pub fn usage(&self, until: Instant) -> BTreeMap<String, PoolUsage> {
        let mut usage = self.usage.lock().clone();
        for c in self.containers.lock().values() {
            let pool = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            usage.entry(pool).or_default().container_seconds += until
                .saturating_duration_since(self.since(c.created))
                .as_secs_f64();
        }
        usage
    }
}

#[async_trait]
impl Runtime for SimEngine {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.networks.lock().insert(name.into(), labels.clone());
        Ok(())
    }

    async fn network_exists(&self, _name: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.networks.lock().remove(name);
        Ok(())
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let called = Instant::now();
        let slot = {
            let mut next = self.next_slot.lock();
            let slot = next.map_or(called, |n| n.max(called));
            *next = Some(slot + Duration::from_secs_f64(1.0 / self.model.rate.max(1e-6)));
            slot
        };
        let id = format!("sim{:06}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let pool = spec.labels.get(LABEL_POOL).cloned().unwrap_or_default();
        self.usage.lock().entry(pool).or_default().creates += 1;
        // It exists (and costs) from the call on; it is ready at the end of the latency.
        self.containers.lock().insert(
            id.clone(),
            SimContainer {
                name: name.into(),
                labels: spec.labels.clone(),
                state: "created",
                created: called,
                shim_end: None,
                kill: Arc::new(Notify::new()),
            },
        );
        tokio::time::sleep_until(slot + self.model.latency).await;
        Ok(id)
    }

    async fn attach(&self, id: &str) -> Result<Attached, RuntimeError> {
        let (daemon_end, shim_end) = tokio::io::duplex(64 * 1024);
        let mut c = self.containers.lock();
        let c = c
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        c.shim_end = Some(shim_end);
        let (r, w) = tokio::io::split(daemon_end);
        Ok(Attached {
            stdout: Box::pin(r),
            stdin: Box::pin(w),
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (stream, kill) = {
            let mut c = self.containers.lock();
            let c = c
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            c.state = "running";
            (c.shim_end.take(), c.kill.clone())
        };
        if let Some(stream) = stream {
            tokio::spawn(async move {
                tokio::select! {
                    _ = sim_shim(stream) => {}
                    _ = kill.notified() => {}
                }
            });
        }
        Ok(())
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        let mut c = self.containers.lock();
        let c = c
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        c.name = name.to_string();
        Ok(())
    }

    async fn update_limits(
        &self,
        id: &str,
        _limits: &crate::runtime::Limits,
    ) -> Result<(), RuntimeError> {
        // Simulated tasks take their time from the trace, not from the container's size:
        // a session's limits are taken and change nothing.
        if self.containers.lock().contains_key(id) {
            Ok(())
        } else {
            Err(RuntimeError::NotFound(id.into()))
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let gone = self.containers.lock().remove(id);
        if let Some(c) = gone {
            c.kill.notify_one();
            let pool = c.labels.get(LABEL_POOL).cloned().unwrap_or_default();
            let lived = self.since(c.created).elapsed().as_secs_f64();
            self.usage.lock().entry(pool).or_default().container_seconds += lived;
        }
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .iter()
            .map(|(id, c)| ContainerSummary {
                id: id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
                state: c.state.to_string(),
                // The simulator never restarts a daemon, so nothing is adopted and aged.
                created: None,
            })
            .collect())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .get(id)
            .is_some_and(|c| c.state == "running"))
    }

    async fn inspect_state(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.containers.lock().get(id).map(|c| c.state.to_string()))
    }

    async fn exec_start(&self, _id: &str, _spec: &ExecSpec) -> Result<ExecStarted, RuntimeError> {
        Err(RuntimeError::Refused(
            "the simulated engine runs tasks through its shim only; the simulator runs \
             docker-exec pools as shim pools"
                .into(),
        ))
    }

    async fn exec_exit_code(&self, _exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(Some(0))
    }
}

type Writer = Arc<tokio::sync::Mutex<tokio::io::WriteHalf<DuplexStream>>>;

async fn send(wr: &Writer, ev: Event) {
    let mut buf = Vec::new();
    ev.encode(&mut buf);
    let _ = wr.lock().await.write_all(&buf).await;
}

/// The simulated container's main process: greets, answers pings and resets, and runs each
/// task beside the request loop (`sleep SECS` sleeps, anything else exits 0).
async fn sim_shim(stream: DuplexStream) {
    let (mut rd, wr) = tokio::io::split(stream);
    let wr: Writer = Arc::new(tokio::sync::Mutex::new(wr));
    send(
        &wr,
        Event::Hello {
            version: crate::shim_proto::PROTOCOL_VERSION,
        },
    )
    .await;
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buf = BytesMut::new();
    loop {
        while let Ok(Some((req, used))) = Request::decode(&buf) {
            let _ = buf.split_to(used);
            match req {
                Request::Ping { nonce } => {
                    let busy = busy.load(Ordering::SeqCst);
                    send(&wr, Event::Pong { nonce, busy }).await
                }
                Request::Reset { .. } => send(&wr, Event::ResetDone { error: None }).await,
                Request::Kill { .. } => {}
                Request::Spawn(spawn) => {
                    let seconds = match spawn.argv.first().map(|a| a.as_slice()) {
                        Some(b"sleep") => spawn
                            .argv
                            .get(1)
                            .and_then(|s| std::str::from_utf8(s).ok())
                            .and_then(|s| s.parse::<f64>().ok())
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .unwrap_or(0.0),
                        _ => 0.0,
                    };
                    let (wr, busy) = (wr.clone(), busy.clone());
                    busy.store(true, Ordering::SeqCst);
                    let limit = Duration::from_millis(spawn.timeout_ms);
                    let wanted = Duration::from_secs_f64(seconds);
                    let timed_out = wanted > limit;
                    tokio::spawn(async move {
                        tokio::time::sleep(wanted.min(limit)).await;
                        busy.store(false, Ordering::SeqCst);
                        let exit = Exit {
                            id: spawn.id,
                            code: (!timed_out).then_some(0),
                            signal: timed_out.then_some(9),
                            timed_out,
                            stdout_truncated: false,
                            stderr_truncated: false,
                            spawn_error: None,
                            reset_error: None,
                        };
                        send(&wr, Event::Exit(exit)).await;
                    });
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
