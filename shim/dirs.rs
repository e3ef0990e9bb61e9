//! Directories the shim keeps open, so that the paths it uses around every task cost no path
//! walk.
//!
//! On a storage driver that is a FUSE daemon (fuse-overlayfs: Docker's where the kernel's
//! overlay is not available, and rootless Podman's) each walk of a path from `/` asks that
//! daemon about its first component: about 30-40 µs on a small VM (docs/benchmarks.md). Around
//! a pool task the shim walked eight: the wipe's look at the workdir and `/tmp` (two each), the
//! workdir's `mkdir -p` and `chdir` (three), and `/proc` for the sweep. A kept descriptor costs
//! none.
//!
//! Only a directory that cannot come to mean something else is kept: a mount point directly
//! below `/` (so nothing above it can be renamed away, and a mount point itself cannot be
//! renamed or removed) whose mount is private (nothing can be mounted over it from outside;
//! inside, the container's tasks have no capability to mount or unmount: warmpool only ever
//! drops capabilities). That is the pool's workdir and `/tmp` (tmpfs of their own), and
//! `/proc`. A persistent pool's `/workspace` is a slave mount, where a session's workspace is
//! mounted from the host, and is walked each time, as is every other path.

use crate::sys;
use crate::threads::lock;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// How many paths are remembered, kept or not (task workdirs are the caller's choice, so the
/// list must not grow without bound); later ones are walked each time.
const MAX_KNOWN: usize = 64;

/// The shim's one set of kept directories.
pub static KEPT: Dirs = Dirs::new();

/// Paths looked at so far: each with its kept directory, or `None` when it is not one to keep
/// (that cannot change: no mount can appear later, see the module's comment).
pub struct Dirs {
    known: Mutex<Vec<(Vec<u8>, Option<BorrowedFd<'static>>)>>,
}

impl Dirs {
    pub const fn new() -> Dirs {
        Dirs {
            known: Mutex::new(Vec::new()),
        }
    }

    /// A descriptor of the directory `path` names, opened the first time; `None` when `path`
    /// is not one to keep (or could not be looked at just now), and the caller walks it.
    pub fn kept(&self, path: &[u8]) -> Option<BorrowedFd<'static>> {
        if !directly_below_root(path) {
            return None;
        }
        let mut known = lock(&self.known);
        if let Some((_, kept)) = known.iter().find(|(p, _)| p == path) {
            return *kept;
        }
        if known.len() >= MAX_KNOWN {
            return None;
        }
        // An error may be passing (out of descriptors): not remembered, so tried again.
        let found = open_fixed(path).ok()?;
        // Kept for the shim's life: never closed, so lending it out as 'static is sound.
        let kept = found.map(|fd| {
            let fd: &'static OwnedFd = Box::leak(Box::new(fd));
            fd.as_fd()
        });
        known.push((path.to_vec(), kept));
        kept
    }
}

/// `/name`: one component, not `.` or `..`, no trailing slash.
fn directly_below_root(path: &[u8]) -> bool {
    match path.strip_prefix(b"/") {
        Some(name) => !name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..",
        None => false,
    }
}

/// Open `path` if it is a private mount point (see the module's comment). `Ok(None)`: it is
/// not one (or does not exist, or is a symlink).
fn open_fixed(path: &[u8]) -> io::Result<Option<OwnedFd>> {
    const ENOENT: i32 = 2;
    const ENOTDIR: i32 = 20;
    const ELOOP: i32 = 40;
    let fd = match sys::open_dir_nofollow(path) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(ENOENT | ENOTDIR | ELOOP)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let stat = sys::stat_fd(fd.as_fd())?;
    let Some(mnt_id) = stat.mnt_id.filter(|_| stat.mount_root) else {
        return Ok(None);
    };
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    let private = private_mount_at(&mountinfo, mnt_id, path) == Some(true);
    Ok(private.then_some(fd))
}

/// The container's tmpfs mount points and the mode bits of each when the shim started.
static START_MODES: Mutex<Vec<(Vec<u8>, u32)>> = Mutex::new(Vec::new());

/// Note the mode of every tmpfs mount point as it is now: called once at start, before any
/// task runs, so that a wipe can undo a task's `chmod` of the workdir or `/tmp`. The mode as
/// found, not as mounted: some runtimes (runc before 1.1.8) give a tmpfs root the mode of the
/// image's directory beneath it.
pub fn note_start_modes() {
    let Ok(mountinfo) = std::fs::read("/proc/self/mountinfo") else {
        return;
    };
    let modes = tmpfs_mount_points(&mountinfo)
        .into_iter()
        .filter_map(|point| {
            let fd = sys::open_dir_nofollow(point).ok()?;
            Some((point.to_vec(), sys::stat_fd(fd.as_fd()).ok()?.mode))
        })
        .collect();
    *lock(&START_MODES) = modes;
}

/// The mode a tmpfs mounted at `path` had when the shim started; `None` for anything else.
pub fn start_mode(path: &[u8]) -> Option<u32> {
    lock(&START_MODES)
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, mode)| *mode)
}

/// The mount points of every tmpfs in mountinfo (an escaped one, `\040` and the like, is
/// left out: never one of warmpool's).
fn tmpfs_mount_points(mountinfo: &[u8]) -> Vec<&[u8]> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
            let point = *fields.get(4)?;
            (*fields.get(dash + 1)? == b"tmpfs" && !point.contains(&b'\\')).then_some(point)
        })
        .collect()
}

/// Whether mount `id`, as `/proc/self/mountinfo` shows it, is private (no `shared:` or
/// `master:` tag: nothing is propagated into it); `None` if it is not mounted at `path`.
///
/// A line: `id parent major:minor root mount-point options [tags...] - fstype source
/// super-options` (proc(5)).
fn private_mount_at(mountinfo: &[u8], id: u64, path: &[u8]) -> Option<bool> {
    let id = id.to_string();
    for line in mountinfo.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 10 || fields[0] != id.as_bytes() {
            continue;
        }
        // Spaces and the like in a mount point are escaped (`\040`): never one of ours.
        if fields[4] != path {
            return None;
        }
        let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
        return Some(
            !fields[6..dash]
                .iter()
                .any(|t| t.starts_with(b"shared:") || t.starts_with(b"master:")),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &[u8] = b"\
601 520 0:96 / / ro,relatime master:1 - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0
602 601 0:99 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
610 601 0:104 / /work rw,nosuid,relatime - tmpfs tmpfs rw,size=1048576k,mode=755,uid=1000,gid=1000
611 601 0:105 / /tmp rw,nosuid,relatime - tmpfs tmpfs rw,size=262144k,uid=1000,gid=1000
612 601 254:1 /slots/c1 /workspace rw,relatime master:7 - ext4 /dev/vda1 rw
613 601 254:1 /shared /shared rw,relatime shared:9 - ext4 /dev/vda1 rw
";

    #[test]
    fn mountinfo_says_which_mounts_are_private() {
        assert_eq!(private_mount_at(MOUNTINFO, 610, b"/work"), Some(true));
        assert_eq!(private_mount_at(MOUNTINFO, 611, b"/tmp"), Some(true));
        assert_eq!(private_mount_at(MOUNTINFO, 602, b"/proc"), Some(true));
        // A session's workspace is mounted over /workspace from the host.
        assert_eq!(private_mount_at(MOUNTINFO, 612, b"/workspace"), Some(false));
        assert_eq!(private_mount_at(MOUNTINFO, 613, b"/shared"), Some(false));
    }

    #[test]
    fn a_mount_elsewhere_or_unknown_is_none() {
        // The id is that mount's, but the path names another place.
        assert_eq!(private_mount_at(MOUNTINFO, 610, b"/tmp"), None);
        assert_eq!(private_mount_at(MOUNTINFO, 999, b"/work"), None);
    }

    #[test]
    fn the_tmpfs_mount_points_are_found() {
        let escaped = b"614 601 0:106 / /a\\040b rw - tmpfs tmpfs rw\n";
        let info = [MOUNTINFO, &escaped[..]].concat();
        assert_eq!(
            tmpfs_mount_points(&info),
            vec![b"/work".as_slice(), b"/tmp".as_slice()]
        );
    }

    #[test]
    fn only_paths_directly_below_the_root_are_candidates() {
        for ok in ["/work", "/tmp", "/proc", "/a.b"] {
            assert!(directly_below_root(ok.as_bytes()), "{ok}");
        }
        for no in [
            "",
            "/",
            "work",
            "/work/",
            "/home/agent",
            "/.",
            "/..",
            "//work",
        ] {
            assert!(!directly_below_root(no.as_bytes()), "{no}");
        }
    }

    /// A plain directory is not a mount point, so it is walked each time; a symlink is not
    /// followed; a missing path is remembered as not kept.
    #[test]
    fn what_is_not_a_mount_point_is_not_kept() {
        let base = std::env::temp_dir().join(format!("shim-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("plain");
        std::fs::create_dir_all(&dir).unwrap();
        let link = base.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        use std::os::unix::ffi::OsStrExt;
        for p in [&dir, &link, &base.join("missing")] {
            assert!(
                open_fixed(p.as_os_str().as_bytes()).unwrap().is_none(),
                "{}",
                p.display()
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
