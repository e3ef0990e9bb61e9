//! Persistent session workspaces with a local engine: plain host directories.
//!
//! Every container of a `session_workspace = "persistent"` pool gets a host directory of its
//! own, its *slot* (`<root>/slots/<container name>`), bind-mounted read-write at
//! [`WORKSPACE_PATH`]; the slot's key travels in the container's `warmpool.slot` label, which
//! a rename does not change. A workspace (`<root>/store/<id>/`, with `<root>/store/<id>.json`
//! beside it) belongs to one session id. When a session claims a container, the slot is
//! wiped (a pool task may have written there) and the workspace's entries are moved into it
//! by rename (the engine cannot add a mount to a running container); when the session lets
//! the container go (idle, end), they are moved back. A container that dies leaves its slot
//! on the host: the workspace's record still names it, and the next claim moves the entries
//! from there. `<root>` is the pool's `workspace_root` plus the daemon's instance.
//!
//! A remote engine would mount directories of its own host, which the daemon never moves: a
//! persistent pool's container start is refused there ([`remote_engine_refusal`]), which
//! makes the pool failed rather than its workspaces silently not persistent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where a persistent workspace appears in a session's container.
pub const WORKSPACE_PATH: &str = "/workspace";
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
    /// Whether a container holds it now.
    pub attached: bool,
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

/// Why a persistent workspace cannot work with the engine at `engine_host` (the address
/// [`crate::exec::direct::engine_host`] gives), as `(words, fix)` for a refused start; `None`
/// for a local (`unix://`) engine. Pure, so the rule is tested without an engine.
///
/// A workspace is a directory on the daemon's host that the daemon moves into a container's
/// slot by rename, and the slot reaches the container by a bind mount, whose source the
/// engine resolves on *its* host. A remote engine (`tcp://`, `ssh://`, `https://` ...) would
/// mount a directory of its own host that the daemon's renames never touch: the files a
/// session writes would stay behind in each container's slot there, so the workspace would
/// look persistent and not be. The same rule as the direct transport's ([`crate::exec::direct::decide`]).
pub fn remote_engine_refusal(engine_host: &str) -> Option<(String, String)> {
    if crate::config::is_local_engine(engine_host) {
        return None;
    }
    let scheme = engine_host
        .split_once("://")
        .map_or(engine_host, |(scheme, _)| scheme);
    Some((
        format!(
            "the engine is remote ({scheme}://) and session_workspace = \"persistent\" needs a local one: \
             a persistent workspace is a directory on the daemon's host, moved between the pool's \
             containers by the daemon, and a remote engine would bind-mount directories of its own \
             host instead, which the daemon never moves (a session's files would silently stay behind)"
        ),
        "run warmpool on the engine's host with a unix:// engine ([docker] host = \
         \"unix:///var/run/docker.sock\"), or set session_workspace = \"ephemeral\" for this pool, \
         then reload"
            .to_string(),
    ))
}

/// The slot directory of a container.
pub fn slot_dir(root: &Path, key: &str) -> PathBuf {
    root.join("slots").join(key)
}

/// Creates a container's slot, owned by the task user when it is numeric (`uid[:gid]`).
pub fn prepare_slot(root: &Path, key: &str, user: &str) -> std::io::Result<PathBuf> {
    let dir = slot_dir(root, key);
    std::fs::create_dir_all(&dir)?;
    let mut ids = user.split(':');
    if let Some(Ok(uid)) = ids.next().map(str::parse::<u32>) {
        let gid = ids.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

/// Removes a container's slot and whatever it holds.
pub fn remove_slot(root: &Path, key: &str) {
    let dir = slot_dir(root, key);
    if dir.exists() {
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

    /// The record of a workspace, if it exists.
    pub fn record(&self, id: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.record_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, id: &str, record: &Record) -> std::io::Result<()> {
        let path = self.record_path(id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(record).unwrap_or_default())?;
        std::fs::rename(tmp, path)
    }

    /// Where the workspace's files are now: its slot while attached, else its data dir.
    pub fn files(&self, id: &str) -> PathBuf {
        match self.record(id).and_then(|r| r.slot) {
            Some(key) => slot_dir(&self.root, &key),
            None => self.data(id),
        }
    }

    /// Puts workspace `id` (created when new) into the slot `key` of the container a session
    /// just claimed: the slot is wiped first, then the entries move in from where they are
    /// (the slot of a container that died, or the store).
    pub fn attach(&self, id: &str, pool: &str, key: &str) -> std::io::Result<()> {
        check_id(id).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(self.root.join("store"))?;
        let slot = slot_dir(&self.root, key);
        let record = self.record(id);
        if record.as_ref().and_then(|r| r.slot.as_deref()) == Some(key) {
            return self.touch(id);
        }
        wipe(&slot)?;
        match record.as_ref().and_then(|r| r.slot.clone()) {
            Some(old) if slot_dir(&self.root, &old).is_dir() => {
                move_entries(&slot_dir(&self.root, &old), &slot)?;
                remove_slot(&self.root, &old);
            }
            _ => {
                let data = self.data(id);
                std::fs::create_dir_all(&data)?;
                move_entries(&data, &slot)?;
            }
        }
        self.write(
            id,
            &Record {
                pool: pool.to_string(),
                slot: Some(key.to_string()),
                last_used: now(),
            },
        )
    }

    /// Moves the workspace's entries back from its slot into the store and removes the slot:
    /// its container is gone or going.
    pub fn detach(&self, id: &str) -> std::io::Result<()> {
        let Some(mut record) = self.record(id) else {
            return Ok(());
        };
        let Some(key) = record.slot.take() else {
            return Ok(());
        };
        let data = self.data(id);
        std::fs::create_dir_all(&data)?;
        let slot = slot_dir(&self.root, &key);
        if slot.is_dir() {
            move_entries(&slot, &data)?;
            remove_slot(&self.root, &key);
        }
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
                    bytes: size_of(&self.files(&id)),
                    pool: record.pool,
                    last_used: record.last_used,
                    attached: record.slot.is_some(),
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

    /// Slots no container holds any more and no workspace names (a pool container removed,
    /// a crash): `live` are the slot keys of this instance's containers.
    pub fn sweep_slots(&self, live: &std::collections::HashSet<String>) {
        let named: std::collections::HashSet<String> = self
            .list()
            .into_iter()
            .filter_map(|w| self.record(&w.id)?.slot)
            .collect();
        let Ok(entries) = std::fs::read_dir(self.root.join("slots")) else {
            return;
        };
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            // A slot is made just before its container: leave young ones alone.
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(120));
            if !young && !live.contains(&key) && !named.contains(&key) {
                remove_slot(&self.root, &key);
            }
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
    fn a_remote_engine_is_refused_with_its_scheme_and_the_fix() {
        assert_eq!(remote_engine_refusal("unix:///var/run/docker.sock"), None);
        assert_eq!(
            remote_engine_refusal("unix:///run/user/1000/podman/podman.sock"),
            None
        );
        for (host, scheme) in [
            ("tcp://10.0.0.1:2375", "tcp://"),
            ("ssh://user@box", "ssh://"),
            ("https://engine:2376", "https://"),
            ("http://127.0.0.1:2375", "http://"),
        ] {
            let (words, fix) = remote_engine_refusal(host).expect(host);
            assert!(words.contains(&format!("remote ({scheme})")), "{words}");
            assert!(words.contains("persistent"), "{words}");
            // The address itself (a user name, a host) is not repeated.
            assert!(
                !words.contains("user@box") && !words.contains("10.0.0.1"),
                "{words}"
            );
            assert!(fix.contains("unix://"), "{fix}");
            assert!(fix.contains("session_workspace = \"ephemeral\""), "{fix}");
        }
    }

    #[test]
    fn a_workspace_moves_between_slots_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        prepare_slot(dir.path(), "c1", "root").unwrap();
        std::fs::write(slot_dir(dir.path(), "c1").join("left-by-a-pool-task"), "x").unwrap();
        store.attach("s1", "p", "c1").unwrap();
        assert!(
            !slot_dir(dir.path(), "c1")
                .join("left-by-a-pool-task")
                .exists(),
            "the slot is wiped before a workspace moves in"
        );
        std::fs::write(slot_dir(dir.path(), "c1").join("f.txt"), "keep").unwrap();
        // Its container died: the next claim moves the files from the old slot.
        prepare_slot(dir.path(), "c2", "root").unwrap();
        store.attach("s1", "p", "c2").unwrap();
        assert!(!slot_dir(dir.path(), "c1").exists());
        assert!(slot_dir(dir.path(), "c2").join("f.txt").exists());
        // Idle: back into the store.
        store.detach("s1").unwrap();
        assert!(!slot_dir(dir.path(), "c2").exists());
        assert_eq!(store.list()[0].bytes, 4);
        assert!(!store.list()[0].attached);
        prepare_slot(dir.path(), "c3", "root").unwrap();
        store.attach("s1", "p", "c3").unwrap();
        assert_eq!(
            std::fs::read_to_string(slot_dir(dir.path(), "c3").join("f.txt")).unwrap(),
            "keep"
        );
        assert!(store.delete("s1"));
        assert!(store.list().is_empty());
        assert!(!slot_dir(dir.path(), "c3").exists());
    }

    #[test]
    fn ids_with_dot_dot_are_refused() {
        assert!(check_id("a..b").is_err());
        assert!(check_id("..").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("acme-john.v2").is_ok());
    }
}
