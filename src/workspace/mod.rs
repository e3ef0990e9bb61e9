//! Persistent session workspaces with a local engine: plain host directories.
//!
//! Every container of a `session_workspace = "persistent"` pool gets a host directory of its
//! own, its *slot* (`<root>/slots/<container name>`), bind-mounted read-write at
//! [`WORKSPACE_PATH`]; the slot's key travels in the container's `warmpool.slot` label, which
//! a rename does not change. A workspace (`<root>/store/<id>/`, with `<root>/store/<id>.json`
//! beside it) belongs to one session id. When a session claims a container, the slot is
//! wiped (a pool task may have written there) and the workspace is brought in: its data
//! directory bind-mounted onto the slot when the daemon may mount ([`slot_mount`], O(1) in
//! the file count), else its entries moved in by rename (the engine cannot add a mount to a
//! running container). When the session lets the container go (idle, end), it is unmounted,
//! or the entries move back. A container that dies leaves its slot on the host: the
//! workspace's record still names it, and the next claim brings the workspace back from
//! there first. `<root>` is the pool's `workspace_root` plus the daemon's instance.
//!
//! A remote engine would mount directories of its own host, which the daemon never moves, so
//! there ([`home_for`], [`Home::Volume`]) a workspace is an engine named volume per session
//! ([`volume_name`]) instead: warm containers get no slot, and a session's container is
//! created for it with the volume mounted at [`WORKSPACE_PATH`] (a cold start, each time the
//! session resumes; `crate::pool::Pool::start_for_session`). Its record stays under `<root>`
//! on the daemon's host, naming the volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod slot_mount;

/// Where a persistent workspace appears in a session's container (defined with the
/// config that keeps the workdir and mounts clear of it).
pub use crate::config::WORKSPACE_PATH;
/// Label carrying a container's slot key (its name at create).
pub const LABEL_SLOT: &str = "warmpool.slot";

/// A workspace's record, kept beside its data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The pool of the session that owns it.
    pub pool: String,
    /// The slot its entries are in, while a container holds them.
    pub slot: Option<String>,
    /// Unix seconds of its last use (claim, task, release).
    pub last_used: u64,
    /// The engine volume holding its files ([`Home::Volume`]); `None` for a host directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The volume was given to the pool's task user (`chown`, on its first claim): until
    /// then every claim gives it again, so a crash between the volume's creation and the
    /// `chown` does not leave a workspace its user cannot write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume_owned: bool,
    /// Its data directory is bind-mounted onto `slot` ([`slot_mount`]): its files stay in
    /// `store/<id>/`, and the slot underneath holds nothing of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mounted: bool,
}

/// How a claim brought a workspace into its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brought {
    /// Its data directory bind-mounted onto the slot, and seen there by the container: one
    /// syscall whatever the file count.
    Mount,
    /// Its top-level entries renamed into the slot, one by one.
    Rename,
    /// It was in this slot already (a container a restarted daemon adopted).
    InPlace,
}

/// A workspace as `GET /v1/workspaces` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceInfo {
    /// The session id it belongs to.
    pub id: String,
    /// Its pool.
    pub pool: String,
    /// Bytes of its files.
    pub bytes: u64,
    /// Unix seconds of its last use.
    pub last_used: u64,
    /// Whether a container holds it now (host directories; a volume's is not recorded).
    pub attached: bool,
    /// The engine volume holding its files, for a remote engine's workspace.
    pub volume: Option<String>,
}

/// Workspace ids are session ids, which end up in paths: no `..`, no `/`.
pub fn check_id(id: &str) -> Result<(), String> {
    validate_id(id)?;
    if id.contains("..") {
        return Err(format!(
            "workspace id {id:?} must not contain \"..\": it names a directory"
        ));
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a persistent pool's workspaces live, and how its container spec carries them:
/// the container spec's own types (`crate::runtime`), named here too.
pub use crate::runtime::{Home, WorkspaceSpec};

/// Where the workspaces of a persistent pool live with the engine at `engine_host` (the
/// address [`crate::config::engine_address`] gives). Pure, so the rule is tested without an
/// engine.
///
/// A host directory reaches a container by a bind mount, whose source the engine resolves
/// on *its* host: only a local (`unix://`) engine mounts the directories the daemon moves.
/// A remote engine (`tcp://`, `ssh://`, `https://` ...) gets one named volume per session,
/// which lives on the engine's host; since a running container cannot get a mount, each
/// resume of such a session creates a container for it (a cold start).
pub fn home_for(engine_host: &str, instance: &str) -> Home {
    if crate::config::is_local_engine(engine_host) {
        Home::HostDir
    } else {
        Home::Volume {
            instance: instance.to_string(),
        }
    }
}

/// The engine volume of session `id`'s workspace: `warmpool-<instance>-ws-<id>` (a session
/// id is within the engine's name alphabet).
pub fn volume_name(instance: &str, id: &str) -> String {
    format!("warmpool-{instance}-ws-{id}")
}

/// The labels of a workspace volume: managed, its instance, pool and session, so it is
/// listed and owned as the containers are.
pub fn volume_labels(instance: &str, pool: &str, id: &str) -> BTreeMap<String, String> {
    use crate::runtime::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL, LABEL_SESSION};
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_POOL.to_string(), pool.to_string()),
        (LABEL_SESSION.to_string(), id.to_string()),
    ])
}

/// The numeric owner `(uid, gid)` a workspace gets from `security.user` (`uid[:gid]`);
/// `None` for a user name, whose ids only the image knows.
pub fn numeric_owner(user: &str) -> Option<(u32, u32)> {
    let mut ids = user.split(':');
    let uid = ids.next()?.parse::<u32>().ok()?;
    let gid = ids.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
    Some((uid, gid))
}

/// A session's persistent workspace: its record store and where its files live.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub store: Store,
    pub home: Home,
}

impl Workspace {
    /// The engine volume of session `id`'s workspace, with [`Home::Volume`].
    pub fn volume(&self, id: &str) -> Option<String> {
        match &self.home {
            Home::HostDir => None,
            Home::Volume { instance } => Some(volume_name(instance, id)),
        }
    }

    /// The session let its container go (idle, end): the files go back to the store (host
    /// directory), or stay in the volume, whose record notes the use.
    pub fn let_go(&self, id: &str) -> std::io::Result<()> {
        match self.home {
            Home::HostDir => self.store.detach(id),
            Home::Volume { .. } => self.store.touch(id),
        }
    }
}

/// How the daemon's host sees the `/workspace` of the container whose main process is
/// `pid`: `/proc/<pid>/root/workspace`, resolved in the container's mount namespace.
pub fn seen_from_host(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{WORKSPACE_PATH}"))
}

/// The slot directory of a container.
pub fn slot_dir(root: &Path, key: &str) -> PathBuf {
    root.join("slots").join(key)
}

/// Creates a container's slot, owned by the task user when it is numeric (`uid[:gid]`).
///
/// Errors: the directory cannot be made, or a slot of that key exists (a left-over of a
/// container of the same random name, perhaps holding or mounting a workspace): a new
/// container must never be given another's files, so its start fails and the pool tries
/// another name.
pub fn prepare_slot(root: &Path, key: &str, user: &str) -> std::io::Result<PathBuf> {
    let dir = slot_dir(root, key);
    std::fs::create_dir_all(dir.parent().unwrap_or(root))?;
    std::fs::create_dir(&dir).map_err(|e| {
        std::io::Error::other(format!(
            "the workspace slot {} cannot be made new ({e})",
            dir.display()
        ))
    })?;
    let mut ids = user.split(':');
    if let Some(Ok(uid)) = ids.next().map(str::parse::<u32>) {
        let gid = ids.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

/// Removes a container's slot and whatever it holds, after taking off any mount that covers
/// it (a workspace bound there stays whole in the store); a slot that stays mounted is left.
pub fn remove_slot(root: &Path, key: &str) {
    let dir = slot_dir(root, key);
    if dir.exists() {
        if let Err(e) = slot_mount::unmount(&dir) {
            tracing::warn!(slot = %dir.display(), error = %e, "a workspace slot stays mounted; left in place");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(slot = %dir.display(), error = %e, "could not remove a workspace slot");
        }
    }
}

/// Moves every entry of `from` into `to` by rename (same filesystem).
fn move_entries(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Moves what `slot` holds, if anything, into a new `<data>/.warmpool-unmounted-<secs>-<hex>/`:
/// files a task wrote into a slot its workspace's mount did not cover are the session's,
/// and a rename into `data` itself could replace files of the same name.
fn keep_aside(slot: &Path, data: &Path) -> std::io::Result<()> {
    use rustix::fs::{mkdirat, openat, renameat, Mode, OFlags};
    if std::fs::read_dir(slot)?.next().is_none() {
        return Ok(());
    }
    // By directory descriptors, never by path through `data`: it is the container's to
    // write, and one still running could swap the new directory for a symlink between two
    // renames. The name is new and nobody's choice, so two kept sets never merge.
    let dir = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let data_fd = openat(rustix::fs::CWD, data, dir, Mode::empty())?;
    let slot_fd = openat(rustix::fs::CWD, slot, dir, Mode::empty())?;
    let name = (0..16)
        .map(|_| {
            format!(
                ".warmpool-unmounted-{}-{:08x}",
                now(),
                rand::random::<u32>()
            )
        })
        .find(|n| mkdirat(&data_fd, n.as_str(), Mode::from_raw_mode(0o700)).is_ok())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "could not make a directory in {} to keep what the slot {} held",
                data.display(),
                slot.display()
            ))
        })?;
    let aside_fd = openat(&data_fd, name.as_str(), dir, Mode::empty())?;
    tracing::warn!(slot = %slot.display(), kept = %data.join(&name).display(), "a workspace slot held files under its mount; kept beside the workspace's files");
    for entry in std::fs::read_dir(slot)? {
        let entry = entry?.file_name();
        renameat(&slot_fd, entry.as_os_str(), &aside_fd, entry.as_os_str())?;
    }
    Ok(())
}

/// Removes every entry of `dir`, not `dir` itself.
fn wipe(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Bytes under `dir`, symlinks not followed.
pub fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// How often a running task's workspace is measured against `workspace_max_size`: a walk
/// of 5,000 files costs a few milliseconds of one core, so twice a second is cheap, and a
/// task can pass the bound by at most what it writes in this long.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Measures `dir` every [`WATCH_INTERVAL`] and returns its size in bytes the first time it
/// is over `max` bytes; never returns while it stays within. Cancel it by dropping it.
pub async fn watch_size(dir: PathBuf, max: u64) -> u64 {
    let mut every = tokio::time::interval(WATCH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let d = dir.clone();
        let bytes = tokio::task::spawn_blocking(move || size_of(&d))
            .await
            .unwrap_or(0);
        if bytes > max {
            return bytes;
        }
    }
}

/// The workspaces under one root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store under `root` (`<workspace_root>/<instance>`).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn data(&self, id: &str) -> PathBuf {
        self.root.join("store").join(id)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("store").join(format!("{id}.json"))
    }

    /// The record of a workspace: `Ok(None)` when it has none, an error when it has one that
    /// cannot be read or parsed (a decision that would wipe or sweep must not take that for
    /// "none").
    pub fn read_record(&self, id: &str) -> std::io::Result<Option<Record>> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::other(format!("unreadable record {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::other(format!(
                "cannot read the record {}: {e}",
                path.display()
            ))),
        }
    }

    /// The record of a workspace, if it exists and can be read.
    pub fn record(&self, id: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.record_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces the record of `id`: written to a temporary file and synced, renamed over the
    /// old one, and the directory synced. After a crash or a power loss the record is the old
    /// one or the new one, never empty or cut short (a rename without the sync can leave an
    /// empty file on some filesystems, XFS among them), and a record whose write returned
    /// stays written (but for the first ones after `store/` itself was made: that
    /// directory's own entry is not synced). Each costs two fsyncs (about 0.1 ms each on the
    /// test VM's disk, more on a slow or busy one); records are written per claim and
    /// release, not per task.
    ///
    /// Errors name the file and the step. One after the rename (the directory's sync) says
    /// that the new record is in place but may not survive a crash.
    fn write(&self, id: &str, record: &Record) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.record_path(id);
        let tmp = path.with_extension("json.tmp");
        let failed = |step: &str, file: &Path, e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "writing the record {}: {step} {}: {e}",
                    path.display(),
                    file.display()
                ),
            )
        };
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&tmp).map_err(|e| failed("create", &tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| failed("write and sync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| failed("rename over it", &tmp, e))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    failed(
                        "sync (the new record is in place but may not survive a crash)",
                        dir,
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Where the workspace's files are now: its slot while attached, else its data dir.
    pub fn files(&self, id: &str) -> PathBuf {
        match self.record(id) {
            Some(Record {
                slot: Some(key),
                mounted: false,
                ..
            }) => slot_dir(&self.root, &key),
            _ => self.data(id),
        }
    }

    /// Puts workspace `id` (created when new) into the slot `key` of the container a session
    /// just claimed. First it leaves where it was (the slot of a container that died: back
    /// into the store), and the claimed slot is emptied (what a pool task left; a stale mount
    /// is taken off, never wiped through). Then, when mount mode is on for this root and
    /// `seen` is how the host sees the container's `/workspace` (`/proc/<pid>/root/workspace`),
    /// the data directory gets `owner` (the pool's numeric task user; root otherwise) and
    /// mode 0755, is bound onto the slot and kept there only if the container sees it
    /// ([`slot_mount::same_dir`]); otherwise the entries move in by rename.
    ///
    /// When the record names `key` already (a container a restarted daemon adopts), the
    /// claim a crash cut short is finished: a move completed, or a bind the container does
    /// not see replaced by renames (into a slot still empty; a slot that holds something is
    /// left for the next release to set aside).
    ///
    /// Errors: the store or the slot cannot be read or written, or the record cannot be read
    /// (the message names the path): nothing is wiped then.
    pub fn attach(
        &self,
        id: &str,
        pool: &str,
        key: &str,
        seen: Option<&Path>,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<Brought> {
        check_id(id).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(self.root.join("store"))?;
        let slot = slot_dir(&self.root, key);
        let data = self.data(id);
        if let Some(mut record) = self
            .read_record(id)?
            .filter(|r| r.slot.as_deref() == Some(key))
        {
            if record.mounted {
                let mounted = slot_mount::is_mount_point(&slot)?;
                let unseen = seen.is_some_and(|seen| !slot_mount::same_dir(seen, &data));
                if mounted && !unseen {
                    self.touch(id)?;
                    return Ok(Brought::InPlace);
                }
                // A crash between the record and the bind (or its check): the container
                // sees its bare slot, which the claim wiped before the record was written.
                if mounted {
                    slot_mount::unmount(&slot)?;
                }
                if std::fs::read_dir(&slot)?.next().is_some() {
                    tracing::warn!(workspace = %id, slot = %slot.display(), "an adopted session's slot holds files and its workspace is not mounted there; they are set aside at its next release");
                    self.touch(id)?;
                    return Ok(Brought::InPlace);
                }
                record.mounted = false;
                self.write(id, &record)?;
            }
            // A move a crash cut short (the record is written before the first rename)
            // finishes: what is still in the store goes in.
            std::fs::create_dir_all(&data)?;
            move_entries(&data, &slot)?;
            self.touch(id)?;
            return Ok(Brought::InPlace);
        }
        self.detach(id)?;
        slot_mount::unmount(&slot)?;
        wipe(&slot)?;
        std::fs::create_dir_all(&data)?;
        // The record names the slot before anything moves (after the wipe, so a finished
        // move never leaves a pool task's files beside the workspace's): a crash from here
        // on leaves a record that a restart finishes or unmounts, never one that forgets
        // where the files are.
        let mut record = Record {
            pool: pool.to_string(),
            slot: Some(key.to_string()),
            last_used: now(),
            volume: None,
            volume_owned: false,
            mounted: false,
        };
        if let Some(seen) = seen.filter(|_| slot_mount::enable(&self.root)) {
            // Bound, the data directory *is* the container's /workspace: the task user's,
            // as `prepare_slot` makes a slot (never the slot's owner or mode now, which a
            // pool task may have changed).
            use std::os::unix::fs::PermissionsExt;
            let (uid, gid) = owner.unwrap_or((0, 0));
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
            record.mounted = true;
            self.write(id, &record)?;
            match slot_mount::bind(&data, &slot) {
                Ok(()) if slot_mount::same_dir(seen, &data) => return Ok(Brought::Mount),
                Ok(()) => {
                    tracing::warn!(workspace = %id, slot = %slot.display(), "the bind mount did not reach the container (made before its root was shared?); moving the files by rename");
                    slot_mount::unmount(&slot)?;
                }
                Err(e) => {
                    tracing::warn!(workspace = %id, error = %e, "could not bind the workspace; moving its files by rename");
                }
            }
            record.mounted = false;
        }
        self.write(id, &record)?;
        move_entries(&data, &slot)?;
        Ok(Brought::Rename)
    }

    /// Records that workspace `id` of `pool` lives in engine volume `volume` (created when
    /// new), and marks a use.
    pub fn record_volume(&self, id: &str, pool: &str, volume: &str) -> std::io::Result<()> {
        check_id(id).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(self.root.join("store"))?;
        let volume_owned = self
            .record(id)
            .is_some_and(|r| r.volume_owned && r.volume.as_deref() == Some(volume));
        self.write(
            id,
            &Record {
                pool: pool.to_string(),
                slot: None,
                last_used: now(),
                volume: Some(volume.to_string()),
                volume_owned,
                mounted: false,
            },
        )
    }

    /// Records that workspace `id`'s volume was given to its pool's task user.
    pub fn mark_volume_owned(&self, id: &str) -> std::io::Result<()> {
        let Some(mut record) = self.record(id) else {
            return Ok(());
        };
        record.volume_owned = true;
        self.write(id, &record)
    }

    /// Brings the workspace back from its slot into the store and removes the slot: its
    /// container is gone or going. A bound workspace is unmounted (its files never left the
    /// store); whatever the slot underneath holds then (tasks that ran while the mount was
    /// missing) is kept in `store/<id>/.warmpool-unmounted-<unix seconds>-<random>/`, never removed.
    /// A renamed one's entries move back.
    ///
    /// Errors: the unmount or a move failed; the record still names the slot, so nothing is
    /// forgotten and the next claim or release tries again.
    pub fn detach(&self, id: &str) -> std::io::Result<()> {
        let Some(mut record) = self.read_record(id)? else {
            return Ok(());
        };
        let Some(key) = record.slot.clone() else {
            return Ok(());
        };
        let data = self.data(id);
        std::fs::create_dir_all(&data)?;
        let slot = slot_dir(&self.root, &key);
        if slot.is_dir() {
            slot_mount::unmount(&slot)?;
            if record.mounted {
                keep_aside(&slot, &data)?;
            } else {
                move_entries(&slot, &data)?;
            }
            remove_slot(&self.root, &key);
        }
        record.slot = None;
        record.mounted = false;
        record.last_used = now();
        self.write(id, &record)
    }

    /// Marks a use.
    pub fn touch(&self, id: &str) -> std::io::Result<()> {
        match self.record(id) {
            Some(mut r) => {
                r.last_used = now();
                self.write(id, &r)
            }
            None => Ok(()),
        }
    }

    /// Removes the workspace, wherever its files are. False when there was none.
    pub fn delete(&self, id: &str) -> bool {
        let Some(record) = self.record(id) else {
            return false;
        };
        if let Some(key) = record.slot {
            remove_slot(&self.root, &key);
        }
        let _ = std::fs::remove_dir_all(self.data(id));
        let _ = std::fs::remove_file(self.record_path(id));
        true
    }

    /// Every workspace of the store.
    pub fn list(&self) -> Vec<WorkspaceInfo> {
        let Ok(entries) = std::fs::read_dir(self.root.join("store")) else {
            return Vec::new();
        };
        let mut out: Vec<WorkspaceInfo> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json")?.to_string();
                let record = self.record(&id)?;
                Some(WorkspaceInfo {
                    // A volume's size is the engine's to tell (the caller asks it).
                    bytes: match record.volume {
                        Some(_) => 0,
                        None => size_of(&self.files(&id)),
                    },
                    pool: record.pool,
                    last_used: record.last_used,
                    attached: record.slot.is_some(),
                    volume: record.volume,
                    id,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Workspaces unused for `ttl` (none live in a session: the caller checks).
    pub fn expired(&self, ttl: Duration) -> Vec<WorkspaceInfo> {
        let cutoff = now().saturating_sub(ttl.as_secs());
        self.list()
            .into_iter()
            .filter(|w| w.last_used < cutoff)
            .collect()
    }

    /// The ids and records of the store's workspaces, without measuring them.
    fn records(&self) -> std::io::Result<Vec<(String, Record)>> {
        let entries = match std::fs::read_dir(self.root.join("store")) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                if let Some(record) = self.read_record(id)? {
                    out.push((id.to_string(), record));
                }
            }
        }
        Ok(out)
    }

    /// Removes slots no container holds any more and no workspace names (a pool container
    /// removed, a crash): `live` are the slot keys of this instance's containers as the
    /// engine listed them at `listed_at`. A slot made less than two minutes before that
    /// listing may belong to a container the listing did not show yet, and one under a
    /// mount holds a workspace: both stay.
    pub fn sweep_slots(&self, live: &std::collections::HashSet<String>, listed_at: SystemTime) {
        // A record that cannot be read could name any slot: no slot is judged then.
        let named: std::collections::HashSet<String> = match self.records() {
            Ok(records) => records.into_iter().filter_map(|(_, r)| r.slot).collect(),
            Err(e) => {
                tracing::warn!(store = %self.root.display(), error = %e, "workspace slots not swept");
                return;
            }
        };
        let Ok(entries) = std::fs::read_dir(self.root.join("slots")) else {
            return;
        };
        let cutoff = listed_at - Duration::from_secs(120);
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if live.contains(&key) || named.contains(&key) {
                continue;
            }
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .map_or(true, |t| t > cutoff);
            if young || slot_mount::is_mount_point(&e.path()).unwrap_or(true) {
                continue;
            }
            remove_slot(&self.root, &key);
        }
    }
}

/// The rule for session ids, which also name their workspaces (`crate::session` re-exports
/// it): ids end up in container names and host paths, so the engine's name alphabet, at most
/// 64 long, and never `.` or `..` alone (they must start with a letter or digit).
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "session id {id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_engine_keeps_workspaces_in_named_volumes() {
        assert_eq!(home_for("unix:///var/run/docker.sock", "i"), Home::HostDir);
        assert_eq!(
            home_for("unix:///run/user/1000/podman/podman.sock", "i"),
            Home::HostDir
        );
        for host in [
            "tcp://10.0.0.1:2375",
            "ssh://user@box",
            "https://engine:2376",
            "http://127.0.0.1:2375",
        ] {
            assert_eq!(
                home_for(host, "prod"),
                Home::Volume {
                    instance: "prod".into()
                },
                "{host}"
            );
        }
        let ws = Workspace {
            store: Store::new("/nowhere"),
            home: home_for("tcp://h:2375", "prod"),
        };
        assert_eq!(
            ws.volume("acme-1").as_deref(),
            Some("warmpool-prod-ws-acme-1")
        );
        let labels = volume_labels("prod", "coder", "acme-1");
        assert_eq!(labels["warmpool.instance"], "prod");
        assert_eq!(labels["warmpool.pool"], "coder");
        assert_eq!(labels["warmpool.session"], "acme-1");
        assert_eq!(labels["warmpool.managed"], "true");
        assert_eq!(numeric_owner("1000:1001"), Some((1000, 1001)));
        assert_eq!(numeric_owner("1000"), Some((1000, 1000)));
        assert_eq!(numeric_owner("agent"), None);
    }

    #[test]
    fn a_volume_workspace_is_recorded_on_the_daemons_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.record_volume("s1", "p", "warmpool-i-ws-s1").unwrap();
        let list = store.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].volume.as_deref(), Some("warmpool-i-ws-s1"));
        assert_eq!((list[0].bytes, list[0].attached), (0, false));
        let ws = Workspace {
            store: store.clone(),
            home: Home::Volume {
                instance: "i".into(),
            },
        };
        ws.let_go("s1").unwrap();
        assert_eq!(
            store.record("s1").unwrap().volume.as_deref(),
            Some("warmpool-i-ws-s1")
        );
        assert!(store.delete("s1"));
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_record_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.record_volume("s1", "p", "warmpool-i-ws-s1").unwrap();
        assert!(!store.record("s1").unwrap().volume_owned);
        store.mark_volume_owned("s1").unwrap();
        let record = store.read_record("s1").unwrap().expect("a record");
        assert!(record.volume_owned, "the second write is the one read");
        assert_eq!(record.volume.as_deref(), Some("warmpool-i-ws-s1"));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn a_workspace_moves_between_slots_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        prepare_slot(dir.path(), "c1", "root").unwrap();
        std::fs::write(slot_dir(dir.path(), "c1").join("left-by-a-pool-task"), "x").unwrap();
        store.attach("s1", "p", "c1", None, None).unwrap();
        assert!(
            !slot_dir(dir.path(), "c1")
                .join("left-by-a-pool-task")
                .exists(),
            "the slot is wiped before a workspace moves in"
        );
        std::fs::write(slot_dir(dir.path(), "c1").join("f.txt"), "keep").unwrap();
        // Its container died: the next claim moves the files from the old slot.
        prepare_slot(dir.path(), "c2", "root").unwrap();
        store.attach("s1", "p", "c2", None, None).unwrap();
        assert!(!slot_dir(dir.path(), "c1").exists());
        assert!(slot_dir(dir.path(), "c2").join("f.txt").exists());
        // Idle: back into the store.
        store.detach("s1").unwrap();
        assert!(!slot_dir(dir.path(), "c2").exists());
        assert_eq!(store.list()[0].bytes, 4);
        assert!(!store.list()[0].attached);
        prepare_slot(dir.path(), "c3", "root").unwrap();
        store.attach("s1", "p", "c3", None, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(slot_dir(dir.path(), "c3").join("f.txt")).unwrap(),
            "keep"
        );
        assert!(store.delete("s1"));
        assert!(store.list().is_empty());
        assert!(!slot_dir(dir.path(), "c3").exists());
    }

    #[test]
    fn a_move_a_crash_cut_short_is_finished_when_the_container_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        prepare_slot(dir.path(), "c1", "root").unwrap();
        let data = dir.path().join("store/s1");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("moved"), "1").unwrap();
        std::fs::write(data.join("not-yet"), "2").unwrap();
        // The record named the slot, one entry moved, then the daemon died.
        store
            .write(
                "s1",
                &Record {
                    pool: "p".into(),
                    slot: Some("c1".into()),
                    last_used: 0,
                    volume: None,
                    volume_owned: false,
                    mounted: false,
                },
            )
            .unwrap();
        std::fs::rename(data.join("moved"), slot_dir(dir.path(), "c1").join("moved")).unwrap();
        assert_eq!(
            store.attach("s1", "p", "c1", None, None).unwrap(),
            Brought::InPlace
        );
        for f in ["moved", "not-yet"] {
            assert!(slot_dir(dir.path(), "c1").join(f).exists(), "{f}");
        }
        // A container whose claim died before its record: its slot holds a pool task's
        // files, which go before the workspace comes in.
        prepare_slot(dir.path(), "c2", "root").unwrap();
        std::fs::write(slot_dir(dir.path(), "c2").join("pool-task"), "x").unwrap();
        assert_eq!(
            store.attach("s1", "p", "c2", None, None).unwrap(),
            Brought::Rename
        );
        let c2 = slot_dir(dir.path(), "c2");
        assert!(!c2.join("pool-task").exists());
        assert!(c2.join("moved").exists() && c2.join("not-yet").exists());
        assert!(!slot_dir(dir.path(), "c1").exists());
    }

    #[test]
    fn an_adopted_claim_whose_bind_never_happened_gets_its_files_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        prepare_slot(dir.path(), "c1", "root").unwrap();
        let data = dir.path().join("store/s1");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f.txt"), "keep").unwrap();
        // The record said "mounted", then the daemon died before the bind.
        let mut record = Record {
            pool: "p".into(),
            slot: Some("c1".into()),
            last_used: 0,
            volume: None,
            volume_owned: false,
            mounted: true,
        };
        store.write("s1", &record).unwrap();
        assert_eq!(
            store.attach("s1", "p", "c1", None, None).unwrap(),
            Brought::InPlace
        );
        assert_eq!(
            std::fs::read_to_string(slot_dir(dir.path(), "c1").join("f.txt")).unwrap(),
            "keep"
        );
        assert!(!store.record("s1").unwrap().mounted);
        // An unreadable record is not "no workspace": nothing is wiped.
        std::fs::write(dir.path().join("store/s1.json"), "{trunc").unwrap();
        prepare_slot(dir.path(), "c2", "root").unwrap();
        std::fs::write(slot_dir(dir.path(), "c2").join("x"), "x").unwrap();
        assert!(store.attach("s1", "p", "c2", None, None).is_err());
        assert!(slot_dir(dir.path(), "c1").join("f.txt").exists());
        assert!(slot_dir(dir.path(), "c2").join("x").exists());
        record.mounted = false;
        store.write("s1", &record).unwrap();
    }

    #[test]
    fn ids_with_dot_dot_are_refused() {
        assert!(check_id("a..b").is_err());
        assert!(check_id("..").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("acme-john.v2").is_ok());
    }
}
