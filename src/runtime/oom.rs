//! A container's OOM kill counter, read from its memory cgroup on this host.
//!
//! Read twice around every task (`task::execute`), so the file is found once per container
//! and kept open: opening it by path walked `/sys/fs/cgroup` every time, about 6 % of the
//! daemon's CPU per task (docs/benchmarks.md). A counter is dropped when its container is
//! removed ([`forget`], from the runtime's `remove`).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

/// More containers than any daemon runs at once; past it the table starts over, so ids whose
/// removal was never seen here cannot pile up.
const MAX_OPEN: usize = 20_000;

/// Container id to its counter file, or `None` when it has none readable here.
static OPEN: Mutex<Option<HashMap<String, Option<Arc<File>>>>> = Mutex::new(None);

/// How many times the kernel's OOM killer has killed a process of this container, read from
/// its memory cgroup on this host: `memory.oom_control`'s `oom_kill` (cgroup v1) or
/// `memory.events`'s `oom_kill` (cgroup v2), under Docker's or Podman's (libpod) cgroupfs
/// or systemd layout.
/// `None` when no such file is readable here (a remote engine, a daemon in a container
/// without the host's /sys/fs/cgroup, an engine that puts containers elsewhere).
///
/// This is what `oom_killed` of a task result rests on: the counter moves for any process
/// of the container, the task's included, whereas the engine's `State.OOMKilled` and `oom`
/// event are tied to the container's main process (the shim, which survives).
pub fn oom_kills(id: &str) -> Option<u64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let file = {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        let open = open.get_or_insert_with(HashMap::new);
        if !open.contains_key(id) && open.len() >= MAX_OPEN {
            open.clear();
        }
        match open.get(id) {
            Some(known) => known.clone()?,
            None => match find(id) {
                Found::File(file) => {
                    let file = Arc::new(file);
                    open.insert(id.to_string(), Some(file.clone()));
                    file
                }
                Found::Nowhere => {
                    open.insert(id.to_string(), None);
                    return None;
                }
                // Out of descriptors, say: not remembered, so tried again next time.
                Found::Unknown => return None,
            },
        }
    };
    read(&file)
}

/// Drop the counter of a removed container (called before and after the engine's removal, so
/// that a read in between does not keep it).
pub fn forget(id: &str) {
    if let Some(open) = OPEN.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        open.remove(id);
    }
}

/// What looking for a container's counter found.
enum Found {
    File(File),
    /// None of the known places exists: a remote engine, another layout.
    Nowhere,
    /// A place could not be opened for another reason (out of descriptors, permissions).
    Unknown,
}

/// The first of the known places that holds this container's counter.
fn find(id: &str) -> Found {
    let candidates = [
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.oom_control"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.events"),
        format!("/sys/fs/cgroup/docker/{id}/memory.events"),
        // Podman (libpod): cgroupfs, then systemd, cgroup v1 then v2.
        format!("/sys/fs/cgroup/memory/libpod_parent/libpod-{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/memory/machine.slice/libpod-{id}.scope/memory.oom_control"),
        format!("/sys/fs/cgroup/libpod_parent/libpod-{id}/memory.events"),
        format!("/sys/fs/cgroup/machine.slice/libpod-{id}.scope/memory.events"),
    ];
    let mut found = Found::Nowhere;
    for path in &candidates {
        match File::open(path) {
            Ok(file) if read(&file).is_some() => return Found::File(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => found = Found::Unknown,
        }
    }
    found
}

/// The `oom_kill` line of the file, read again from its start (cgroup files are generated
/// on each read).
fn read(file: &File) -> Option<u64> {
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse(&buf[..n])
}

fn parse(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_line_of_either_cgroup_version_is_read() {
        let v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = b"low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse(v1), Some(3));
        assert_eq!(parse(v2), Some(2));
        assert_eq!(parse(b"oom_kill_disable 0\n"), None);
    }

    /// A file is read again from its start, so a counter that moved is seen.
    #[test]
    fn a_kept_file_is_read_from_its_start_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.events");
        std::fs::write(&path, "oom 0\noom_kill 0\n").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read(&file), Some(0));
        std::fs::write(&path, "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(read(&file), Some(1));
    }

    #[test]
    fn ids_that_could_leave_the_cgroup_tree_are_refused() {
        for id in ["", "../etc", "a/b", "a b"] {
            assert_eq!(oom_kills(id), None, "{id:?}");
        }
        // Not found here: remembered as none, and forgotten on removal.
        assert_eq!(oom_kills("0123abcd"), None);
        forget("0123abcd");
        let open = OPEN.lock().unwrap();
        assert!(!open.as_ref().is_some_and(|m| m.contains_key("0123abcd")));
    }
}
