//! An in-memory engine for unit tests of the pool logic under paused tokio time.
//!
//! Its containers run a fake shim that speaks the real protocol (so the daemon's shim client
//! is exercised too) and interprets a tiny command language instead of running processes:
//! `echo ARGS..`, `sleep SECS`, `exit N`, `hang` (never answers), `die` (the container dies
//! mid-task), `touch NAME` and `ls` (files left in the workdir, which a reset wipes; a wipe
//! of a path containing `unwipeable` fails). Execs (the file transfers' shim file commands)
//! are answered by the engine itself (see its `exec_start`). Tests script the engine itself
//! through [`FakeRuntime`]'s knobs: slow or failing creates, an engine outage, killing a
//! container.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

use super::{
    Attached, ContainerSpec, ContainerSummary, ExecChunk, ExecSpec, ExecStarted, Inspected,
    Runtime, RuntimeError, VolumeSummary,
};
use crate::shim_proto::{Event, Exit, Request};
use futures_util::StreamExt;

type Labels = BTreeMap<String, String>;

#[derive(Default)]
struct FakeContainer {
    name: String,
    labels: BTreeMap<String, String>,
    state: String,
    spec: ContainerSpec,
    /// The shim's end of the attached stream, until start hands it to the fake shim task.
    shim_end: Option<DuplexStream>,
    /// Kills the fake shim (the container's main process).
    kill: Arc<Notify>,
    /// Listed but not found by inspect: a busy dockerd's "Removal In Progress" ghost.
    ghost: bool,
}

impl FakeContainer {
    /// What inspect finds: not removed, and not a ghost that only the listing shows.
    fn found(&self) -> bool {
        self.state != "removed" && !self.ghost
    }
}

#[derive(Default)]
pub struct FakeRuntime {
    containers: Mutex<HashMap<String, FakeContainer>>,
    networks: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// Named volumes: their labels, and the bytes `volume_sizes` reports.
    volumes: Mutex<BTreeMap<String, (Labels, u64)>>,
    /// Exit code of a container's main process as `wait` reports it (default 0).
    pub wait_code: Mutex<i64>,
    next: AtomicUsize,
    /// How long each create takes.
    pub create_delay: Mutex<Duration>,
    /// How long each remove takes (the container is gone at its end).
    pub remove_delay: Mutex<Duration>,
    /// The next N creates fail.
    pub fail_creates: AtomicUsize,
    /// While set, every create is refused for good with this text ([`RuntimeError::Refused`],
    /// `is_permanent()`), as an engine refuses an option it does not take.
    pub refuse_creates: Mutex<Option<String>>,
    /// Images the engine does not have: a create naming one answers 404 `No such image`,
    /// as Docker does when nothing is pulled.
    pub missing_images: Mutex<std::collections::HashSet<String>>,
    /// While set, every call fails as if the engine were unreachable.
    pub down: AtomicBool,
    /// Creates that succeeded.
    pub creates: AtomicUsize,
    /// Creates asked for, refused and failed ones included: what an engine would log.
    pub create_attempts: AtomicUsize,
    pub removes: AtomicUsize,
    /// Highest number of creates in flight at once.
    pub max_parallel_creates: AtomicUsize,
    in_flight: AtomicUsize,
    /// Highest number of removes in flight at once.
    pub max_parallel_removes: AtomicUsize,
    removes_in_flight: AtomicUsize,
    /// The exit code of every exec started, by exec id.
    execs: Mutex<HashMap<String, i64>>,
}

impl FakeRuntime {
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn check_up(&self) -> Result<(), RuntimeError> {
        if self.down.load(Ordering::SeqCst) {
            Err(RuntimeError::Unreachable("fake engine is down".into()))
        } else {
            Ok(())
        }
    }

    /// Containers not removed, by id.
    pub fn live(&self) -> Vec<String> {
        let c = self.containers.lock();
        let mut ids: Vec<String> = c
            .iter()
            .filter(|(_, c)| c.state != "removed")
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn name_of(&self, id: &str) -> Option<String> {
        self.containers.lock().get(id).map(|c| c.name.clone())
    }

    pub fn spec_of(&self, id: &str) -> Option<ContainerSpec> {
        self.containers.lock().get(id).map(|c| c.spec.clone())
    }

    /// Kills the container's main process, as `docker kill` would.
    pub fn kill(&self, id: &str) {
        let mut c = self.containers.lock();
        if let Some(c) = c.get_mut(id) {
            c.state = "exited".into();
            c.kill.notify_one();
        }
    }

    /// Adds a container as a previous daemon run would have left it.
    pub fn add_leftover(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        state: &str,
    ) -> String {
        let id = format!("left{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.containers.lock().insert(
            id.clone(),
            FakeContainer {
                name: name.into(),
                labels,
                state: state.into(),
                ..Default::default()
            },
        );
        id
    }

    /// Adds a container the engine lists (state `removing`) but inspect no longer finds,
    /// as a busy dockerd keeps listing some it has removed.
    pub fn add_ghost(&self, name: &str, labels: BTreeMap<String, String>) -> String {
        let id = self.add_leftover(name, labels, "removing");
        if let Some(c) = self.containers.lock().get_mut(&id) {
            c.ghost = true;
        }
        id
    }

    /// Ends a removal the engine had in progress (state `removing`): the container is gone.
    pub fn finish_removal(&self, id: &str) {
        if let Some(c) = self.containers.lock().get_mut(id) {
            c.state = "removed".into();
        }
    }

    pub fn networks(&self) -> Vec<String> {
        self.networks.lock().keys().cloned().collect()
    }

    /// The named volumes and their labels.
    pub fn volumes(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.volumes
            .lock()
            .iter()
            .map(|(n, (l, _))| (n.clone(), l.clone()))
            .collect()
    }

    /// Sets the bytes the engine reports for a volume.
    pub fn set_volume_size(&self, name: &str, bytes: u64) {
        if let Some(v) = self.volumes.lock().get_mut(name) {
            v.1 = bytes;
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.check_up()
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.check_up()?;
        self.networks.lock().insert(name.into(), labels.clone());
        Ok(())
    }

    async fn network_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        self.check_up()?;
        Ok(self.networks.lock().contains_key(name))
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.check_up()?;
        self.networks.lock().remove(name);
        Ok(())
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.check_up()?;
        self.create_attempts.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_parallel_creates.fetch_max(now, Ordering::SeqCst);
        let delay = *self.create_delay.lock();
        tokio::time::sleep(delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(why) = self.refuse_creates.lock().clone() {
            return Err(RuntimeError::Refused(why));
        }
        if self.missing_images.lock().contains(&spec.image) {
            return Err(RuntimeError::NotFound(format!(
                "No such image: {}",
                spec.image
            )));
        }
        if self
            .fail_creates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RuntimeError::Other("scripted create failure".into()));
        }
        self.creates.fetch_add(1, Ordering::SeqCst);
        let id = format!("c{:04}", self.next.fetch_add(1, Ordering::SeqCst));
        self.containers.lock().insert(
            id.clone(),
            FakeContainer {
                name: name.into(),
                labels: spec.labels.clone(),
                state: "created".into(),
                spec: spec.clone(),
                ..Default::default()
            },
        );
        Ok(id)
    }

    async fn attach(&self, id: &str) -> Result<Attached, RuntimeError> {
        self.check_up()?;
        let (daemon_end, shim_end) = tokio::io::duplex(1 << 20);
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
        self.check_up()?;
        let (stream, kill) = {
            let mut c = self.containers.lock();
            let c = c
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            c.state = "running".into();
            (c.shim_end.take(), c.kill.clone())
        };
        if let Some(stream) = stream {
            tokio::spawn(async move {
                tokio::select! {
                    _ = fake_shim(stream) => {}
                    _ = kill.notified() => {}
                }
            });
        }
        Ok(())
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        self.check_up()?;
        let mut c = self.containers.lock();
        let c = c
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        c.name = name.to_string();
        Ok(())
    }

    async fn update_limits(&self, id: &str, _limits: &super::Limits) -> Result<(), RuntimeError> {
        self.check_up()?;
        if self.containers.lock().contains_key(id) {
            Ok(())
        } else {
            Err(RuntimeError::NotFound(id.into()))
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.check_up()?;
        let now = self.removes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_parallel_removes.fetch_max(now, Ordering::SeqCst);
        let delay = *self.remove_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.removes_in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut c = self.containers.lock();
        if let Some(c) = c.get_mut(id) {
            // A removal in progress (or a ghost): Docker answers "already in progress",
            // which the runtime takes as done, and the container stays listed meanwhile.
            if c.state == "removing" {
                return Ok(());
            }
            if c.state != "removed" {
                c.state = "removed".into();
                c.kill.notify_one();
                self.removes.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.check_up()?;
        Ok(self
            .containers
            .lock()
            .iter()
            .filter(|(_, c)| c.state != "removed")
            .map(|(id, c)| ContainerSummary {
                id: id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
                state: c.state.clone(),
                // The fake keeps no clock of its own: every container is "just created".
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs() as i64),
            })
            .collect())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        self.check_up()?;
        Ok(self
            .containers
            .lock()
            .get(id)
            .is_some_and(|c| c.state == "running"))
    }

    async fn inspect_state(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        self.check_up()?;
        Ok(self
            .containers
            .lock()
            .get(id)
            .filter(|c| c.found())
            .map(|c| c.state.clone()))
    }

    /// The labels it was made with, and no pid: a fake container has no process, so a
    /// workspace never takes the mount path here.
    async fn inspect_process(&self, id: &str) -> Result<Option<Inspected>, RuntimeError> {
        self.check_up()?;
        Ok(self
            .containers
            .lock()
            .get(id)
            .filter(|c| c.found())
            .map(|c| Inspected {
                labels: c.labels.clone(),
                pid: None,
            }))
    }

    /// An exec, as the file transfers (`session::transfer`) run the shim's file commands:
    /// stdin is drained, `echo ARGS..` writes its arguments to stdout, a path naming an
    /// exit code (`/fake-exit-77`) exits with it (stderr says it failed, without the
    /// code, so a test sees whether the daemon names it), anything else exits 0 with no
    /// output. Tasks still run through the fake shim only.
    async fn exec_start(&self, id: &str, spec: &ExecSpec) -> Result<ExecStarted, RuntimeError> {
        self.check_up()?;
        if self
            .containers
            .lock()
            .get(id)
            .is_none_or(|c| c.state != "running")
        {
            return Err(RuntimeError::NotFound(format!("no running container {id}")));
        }
        let mut chunks = Vec::new();
        let code = match spec.argv.iter().find_map(|a| a.strip_prefix("/fake-exit-")) {
            Some(n) => {
                chunks.push(Ok(ExecChunk::Stderr("fake file command failed\n".into())));
                n.parse().unwrap_or(1)
            }
            None if spec.argv.first().is_some_and(|a| a == "echo") => {
                let line = format!("{}\n", spec.argv[1..].join(" "));
                chunks.push(Ok(ExecChunk::Stdout(line.into())));
                0
            }
            None => 0,
        };
        let exec_id = {
            let mut execs = self.execs.lock();
            let exec_id = format!("fake-exec-{}", execs.len());
            execs.insert(exec_id.clone(), code);
            exec_id
        };
        Ok(ExecStarted {
            exec_id,
            output: futures_util::stream::iter(chunks).boxed(),
            stdin: Box::pin(tokio::io::sink()),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        self.check_up()?;
        match self.execs.lock().get(exec_id) {
            Some(code) => Ok(Some(*code)),
            None => Err(RuntimeError::NotFound(format!("no exec {exec_id}"))),
        }
    }

    /// The main process ends at once, with [`FakeRuntime::wait_code`].
    async fn wait(&self, id: &str) -> Result<i64, RuntimeError> {
        self.check_up()?;
        let mut c = self.containers.lock();
        let c = c
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        c.state = "exited".into();
        Ok(*self.wait_code.lock())
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, RuntimeError> {
        self.check_up()?;
        let mut v = self.volumes.lock();
        if v.contains_key(name) {
            return Ok(false);
        }
        v.insert(name.to_string(), (labels.clone(), 0));
        Ok(true)
    }

    /// Refused, as Docker does, while a container not removed mounts it.
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.check_up()?;
        let in_use = self.containers.lock().values().any(|c| {
            c.state != "removed"
                && c.spec
                    .mounts
                    .iter()
                    .any(|m| m.source.as_deref() == Some(name))
        });
        if in_use {
            return Err(RuntimeError::Conflict(format!(
                "remove {name}: volume is in use"
            )));
        }
        self.volumes.lock().remove(name);
        Ok(())
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeSummary>, RuntimeError> {
        self.check_up()?;
        Ok(self
            .volumes
            .lock()
            .iter()
            .map(|(name, (labels, _))| VolumeSummary {
                name: name.clone(),
                labels: labels.clone(),
            })
            .collect())
    }

    async fn volume_sizes(&self) -> Result<BTreeMap<String, u64>, RuntimeError> {
        self.check_up()?;
        Ok(self
            .volumes
            .lock()
            .iter()
            .map(|(n, (_, b))| (n.clone(), *b))
            .collect())
    }
}

/// The fake container's main process: greets, then serves requests; a task runs beside the
/// request loop, so pings and kills are answered while it runs, as the real shim does.
async fn fake_shim(stream: DuplexStream) {
    let (mut rd, wr) = tokio::io::split(stream);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let send = move |wr: Arc<tokio::sync::Mutex<tokio::io::WriteHalf<DuplexStream>>>, ev: Event| async move {
        let mut buf = Vec::new();
        ev.encode(&mut buf);
        let _ = wr.lock().await.write_all(&buf).await;
    };
    send(
        wr.clone(),
        Event::Hello {
            version: crate::shim_proto::PROTOCOL_VERSION,
        },
    )
    .await;
    let mut buf = BytesMut::new();
    let kill = Arc::new(Notify::new());
    let died = Arc::new(Notify::new());
    let busy = Arc::new(AtomicBool::new(false));
    let files = Arc::new(Mutex::new(Vec::<String>::new()));
    loop {
        while let Ok(Some((req, used))) = Request::decode(&buf) {
            let _ = buf.split_to(used);
            match req {
                Request::Ping { nonce } => {
                    let busy = busy.load(Ordering::SeqCst);
                    send(wr.clone(), Event::Pong { nonce, busy }).await
                }
                Request::Reset { .. } => {
                    files.lock().clear();
                    send(wr.clone(), Event::ResetDone { error: None }).await
                }
                Request::Kill { .. } => kill.notify_waiters(),
                Request::Spawn(spawn) => {
                    if spawn
                        .reset
                        .iter()
                        .any(|p| p.windows(10).any(|w| w == b"unwipeable"))
                    {
                        let exit = Exit {
                            id: spawn.id,
                            code: None,
                            signal: None,
                            timed_out: false,
                            stdout_truncated: false,
                            stderr_truncated: false,
                            spawn_error: Some("not started: the workdir was not wiped".into()),
                            reset_error: Some("/unwipeable/x: Permission denied".into()),
                        };
                        send(wr.clone(), Event::Exit(exit)).await;
                        continue;
                    }
                    if !spawn.reset.is_empty() {
                        files.lock().clear();
                    }
                    busy.store(true, Ordering::SeqCst);
                    let (wr, kill, died, busy, files) = (
                        wr.clone(),
                        kill.clone(),
                        died.clone(),
                        busy.clone(),
                        files.clone(),
                    );
                    tokio::spawn(async move {
                        if let Some(exit) = fake_task(&spawn, &wr, &kill, &died, &files).await {
                            busy.store(false, Ordering::SeqCst);
                            send(wr, Event::Exit(exit)).await;
                        }
                    });
                }
            }
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = died.notified() => return,
        }
    }
}

/// Runs one fake command; `None` when it never answers (`hang`, `die`).
async fn fake_task(
    spawn: &crate::shim_proto::Spawn,
    wr: &Arc<tokio::sync::Mutex<tokio::io::WriteHalf<DuplexStream>>>,
    kill: &Notify,
    died: &Notify,
    files: &Mutex<Vec<String>>,
) -> Option<Exit> {
    let argv: Vec<String> = spawn
        .argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let id = spawn.id;
    let timeout = Duration::from_millis(spawn.timeout_ms);
    let mut exit = Exit {
        id,
        code: Some(0),
        signal: None,
        timed_out: false,
        stdout_truncated: false,
        stderr_truncated: false,
        spawn_error: None,
        reset_error: None,
    };
    match argv.first().map(String::as_str) {
        Some("echo") => {
            let mut frame = Vec::new();
            Event::Stdout {
                id,
                data: format!("{}\n", argv[1..].join(" ")).into_bytes(),
            }
            .encode(&mut frame);
            let _ = wr.lock().await.write_all(&frame).await;
        }
        Some("sleep") => {
            let secs: f64 = argv.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = tokio::time::sleep(timeout) => {
                    exit.code = None;
                    exit.signal = Some(9);
                    exit.timed_out = true;
                }
                _ = kill.notified() => {
                    exit.code = None;
                    exit.signal = Some(9);
                }
            }
        }
        Some("exit") => exit.code = argv.get(1).and_then(|s| s.parse().ok()),
        Some("touch") => files.lock().extend(argv[1..].iter().cloned()),
        Some("ls") => {
            let listing: String = files.lock().iter().map(|f| format!("{f}\n")).collect();
            let mut frame = Vec::new();
            Event::Stdout {
                id,
                data: listing.into_bytes(),
            }
            .encode(&mut frame);
            let _ = wr.lock().await.write_all(&frame).await;
        }
        Some("hang") => return None,
        Some("die") => {
            died.notify_one();
            return None;
        }
        // A file command (the shim's helpers) on a path naming an exit code, for the API's
        // mapping of file command exits: `/fake-exit-77` exits 77.
        Some(_) if argv.iter().any(|a| a.starts_with("/fake-exit-")) => {
            exit.code = argv
                .iter()
                .find_map(|a| a.strip_prefix("/fake-exit-"))
                .and_then(|n| n.parse().ok());
        }
        Some(other) if other.starts_with("missing") => {
            exit.code = None;
            exit.spawn_error = Some(format!("cannot run {other:?}: No such file or directory"));
        }
        _ => {}
    }
    Some(exit)
}
