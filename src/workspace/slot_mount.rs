//! O(1) resume: a workspace's data directory bind-mounted onto the slot of the container a
//! session claims, instead of its entries moved in one rename each.
//!
//! The engine cannot add a mount to a running container, but a mount made later *under* a
//! bind the container already has reaches it when that bind is a slave of a shared mount
//! (mount propagation, `mount_namespaces(7)`). So, when the daemon may mount (root, a local
//! engine):
//! - the store's root (`<workspace_root>/<instance>`) is made a shared mount, once
//!   ([`enable`]): a bind onto itself, then `MS_SHARED`; it stays until a clean stop that
//!   leaves no container ([`release`]), so it outlives a `kill -9` and the containers a
//!   restart adopts keep receiving mounts;
//! - each slot is bound into its container with `rslave` propagation ([`SLOT_PROPAGATION`]);
//! - a claim binds `store/<id>` onto the slot ([`bind`]): one syscall, whatever the file
//!   count; the session's container sees its files at `/workspace` at once;
//! - letting go is a lazy unmount ([`unmount`]), which reaches the container too.
//!
//! Nothing here trusts the mount to have reached the container: the claim compares what the
//! container sees at `/workspace` (through `/proc/<pid>/root`) with the data directory
//! ([`same_dir`]) and moves the entries by rename when they differ (a container made before
//! the root was shared, an engine in another mount namespace). Every path that removes a
//! slot's contents checks first that no mount covers it ([`is_mount_point`]), so a removal
//! can never reach through a mount into a workspace.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The bind option of a slot in mount mode: mounts made later on the host under the slot
/// propagate into the container, and nothing the container mounts comes back.
pub const SLOT_PROPAGATION: &str = "rslave";

/// A file in a root the daemon bound onto itself: [`release`] unmounts only such a root.
const MARKER: &str = ".warmpool-shared-mount";

/// Roots whose mode is known: true when the root is a shared mount the daemon may mount
/// under. Cached because every claim asks, and the answer changes only by [`release`].
fn modes() -> &'static Mutex<HashMap<PathBuf, bool>> {
    static MODES: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    MODES.get_or_init(Default::default)
}

/// Makes `root` (created when missing) a shared mount unless it is one, and says whether
/// mount mode is on for it: false when the daemon is not root or the kernel refuses (the
/// rename path is used then; logged once per root with the reason). Cached per root.
pub fn enable(root: &Path) -> bool {
    // Held while the root is made: two pools starting at once must not stack two binds,
    // the lower of which stays private (and the engine refuses rslave under it).
    let mut modes = modes().lock();
    if let Some(on) = modes.get(root) {
        return *on;
    }
    let on = match make_shared(root) {
        Ok(made) => {
            tracing::info!(
                root = %root.display(),
                made,
                "workspace resume by a bind mount into the claimed container (O(1) in the file count)"
            );
            true
        }
        Err(e) => {
            tracing::info!(
                root = %root.display(),
                reason = %e,
                "workspace resume by renaming each top-level entry (the daemon cannot share mounts under its workspace_root)"
            );
            false
        }
    };
    modes.insert(root.to_path_buf(), on);
    on
}

/// Turns mount mode off for `root` for the rest of this run: the engine refused a slot's
/// `rslave` bind (`words`: its message), so it does not see the root as shared (it runs in
/// another mount namespace). Later containers get plain binds, and claims use renames.
pub fn disable(root: &Path, words: &str) {
    let was = modes().lock().insert(root.to_path_buf(), false);
    if was != Some(false) {
        tracing::warn!(root = %root.display(), engine = %words, "the engine refused a shared slot bind; workspace resume by renames from now on");
    }
}

/// Whether the engine's words refuse a slot's propagation: Docker checks that the source's
/// mount is shared or slave when it starts the container.
pub fn is_propagation_refusal(words: &str) -> bool {
    words.contains("not a shared or slave mount") || words.contains("not a shared mount")
}

fn make_shared(root: &Path) -> io::Result<bool> {
    use rustix::mount::{mount_bind, mount_change, MountPropagationFlags};
    if !rustix::process::geteuid().is_root() {
        return Err(io::Error::other("the daemon does not run as root"));
    }
    std::fs::create_dir_all(root)?;
    let canon = root.canonicalize()?;
    let bound_now = match mount_at(&canon)? {
        Some(m) if m.shared => return Ok(false),
        // The operator's own mount (a disk for workspaces): shared as it is.
        Some(_) => false,
        None => {
            // The marker first (it shows through the bind): a crash between the two leaves a
            // marker on a plain directory, which is harmless, never a bind without one.
            std::fs::write(canon.join(MARKER), b"")?;
            if let Err(e) = mount_bind(&canon, &canon) {
                let _ = std::fs::remove_file(canon.join(MARKER));
                return Err(io::Error::other(format!(
                    "bind {} onto itself: {e}",
                    canon.display()
                )));
            }
            true
        }
    };
    // A bind of a directory under a shared `/` (systemd) would join `/`'s peer group, and
    // every slot mount would then propagate across the host: private first, so the root's
    // peer group is its own.
    let changed = if bound_now {
        mount_change(&canon, MountPropagationFlags::PRIVATE)
            .and_then(|()| mount_change(&canon, MountPropagationFlags::SHARED))
    } else {
        mount_change(&canon, MountPropagationFlags::SHARED)
    };
    if let Err(e) = changed {
        // Not left half made: a private bind of the root would only confuse the next start.
        if bound_now {
            let _ = rustix::mount::unmount(&canon, rustix::mount::UnmountFlags::DETACH);
        }
        return Err(io::Error::other(format!(
            "make {} shared: {e}",
            canon.display()
        )));
    }
    Ok(true)
}

/// Binds `data` onto `slot`. Errors name both paths.
pub fn bind(data: &Path, slot: &Path) -> io::Result<()> {
    rustix::mount::mount_bind(data, slot).map_err(|e| {
        io::Error::other(format!(
            "bind {} onto {}: {e}",
            data.display(),
            slot.display()
        ))
    })
}

/// Lazily unmounts every mount stacked on `path` (each unmount reaches the containers whose
/// binds are its slaves); Ok when none is left.
pub fn unmount(path: &Path) -> io::Result<()> {
    use rustix::mount::UnmountFlags;
    // A bound number of layers: a loop that cannot end would hang a claim.
    for _ in 0..16 {
        if !is_mount_point(path)? {
            return Ok(());
        }
        rustix::mount::unmount(path, UnmountFlags::DETACH).map_err(|e| {
            io::Error::other(unmount_failed(
                path,
                e,
                rustix::process::geteuid().is_root(),
            ))
        })?;
    }
    Err(io::Error::other(format!(
        "{} is still a mount point after 16 unmounts",
        path.display()
    )))
}

/// What a failed unmount of `path` (a slot, `<root>/slots/<key>`) says. EPERM is a daemon
/// without the right to unmount (not root, or root without CAP_SYS_ADMIN) finding a mount a
/// run of it with that right made (a `kill -9` leaves them for adoption): say how to get out.
fn unmount_failed(path: &Path, e: rustix::io::Errno, is_root: bool) -> String {
    let mut why = format!("unmount {}: {e}", path.display());
    if e == rustix::io::Errno::PERM {
        let root = path.parent().and_then(Path::parent).map_or_else(
            || "<workspace_root>/<instance>".into(),
            |r| r.display().to_string(),
        );
        let who = if is_root {
            "this daemon runs as root without CAP_SYS_ADMIN"
        } else {
            "this daemon is not root"
        };
        why.push_str(&format!(
            "; {who}, and the mount was made by a run of it that could mount: run it that way \
             again (it adopts the mount), or, with the daemon stopped, take the workspace \
             mounts off (`umount -R {root}`; docs/operations.md, \"Workspace mounts\")"
        ));
    }
    why
}

/// At a clean stop that left no container: takes off the workspace mounts left on slots
/// (`<root>/slots/*`, sessions that did not end) and the root's shared mount if the daemon
/// made it (its marker), so the directory is a plain one again; an operator's own mounts,
/// under the root or of it, stay. Forgets the root's mode.
pub fn release(root: &Path) {
    modes().lock().remove(root);
    let Ok(canon) = root.canonicalize() else {
        return;
    };
    let slots = canon.join("slots");
    let mut stacked: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.parent() == Some(slots.as_path()))
        .collect();
    stacked.dedup();
    let ours = canon.join(MARKER).exists();
    for p in stacked.iter().chain(ours.then_some(&canon)) {
        if let Err(e) = unmount(p) {
            tracing::warn!(path = %p.display(), error = %e, "could not unmount a workspace mount at stop");
        }
    }
    if ours && matches!(is_mount_point(&canon), Ok(false)) {
        let _ = std::fs::remove_file(canon.join(MARKER));
    }
}

/// [`release`] of every root of `instance` (`<workspace_root>/<instance>`) whose mode this
/// run asked for: also those of pools a reload removed or moved to another
/// `workspace_root`, and none of another daemon sharing the process (tests).
pub fn release_instance(instance: &str) {
    let roots: Vec<PathBuf> = modes()
        .lock()
        .keys()
        .filter(|r| r.file_name().is_some_and(|n| n == instance))
        .cloned()
        .collect();
    for root in roots {
        release(&root);
    }
}

/// Whether `a` and `b` are the same directory (device and inode): `a` is what a container
/// sees at `/workspace` (`/proc/<pid>/root/workspace`), `b` the workspace's data directory.
pub fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// One line of `/proc/self/mountinfo`: where, and whether it is shared (`shared:N`).
#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    pub point: PathBuf,
    pub shared: bool,
}

/// The daemon's mounts, from `/proc/self/mountinfo`; empty when it cannot be read.
pub fn mounts() -> Vec<MountInfo> {
    std::fs::read("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// Parses mountinfo (`proc(5)`): field 5 is the mount point, with space, tab, newline and
/// backslash escaped as octal (`\040`); optional fields up to `-` include `shared:N`. Byte
/// by byte, since a path need not be UTF-8.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountInfo> {
    use std::os::unix::ffi::OsStrExt;
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let point = fields.get(4)?;
            let shared = fields
                .iter()
                .skip(6)
                .take_while(|f| **f != b"-")
                .any(|f| f.starts_with(b"shared:"));
            Some(MountInfo {
                point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(point))),
                shared,
            })
        })
        .collect()
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The last (topmost) mount at `path` (canonical), if `path` is a mount point.
fn mount_at(path: &Path) -> io::Result<Option<MountInfo>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.point == path))
}

/// Whether a mount covers `path` (a slot a workspace is bound onto, the shared root): such
/// a directory is never wiped or removed, since that would reach through the mount. One
/// `statx` (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8); older kernels read mountinfo.
///
/// Errors: `path` could not be examined. Callers treat that as mounted and leave it alone;
/// a missing `path` is not a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::empty()) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
        }
        // No statx (an old kernel, or a seccomp profile that refuses it): mountinfo.
        Ok(_) | Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => {
            return Err(io::Error::other(format!(
                "cannot tell whether {} is a mount point: {e}",
                path.display()
            )))
        }
    }
    let canon = match path.canonicalize() {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(mount_at(&canon)?.is_some())
}

#[cfg(test)]
#[path = "slot_mount_tests.rs"]
mod tests;
