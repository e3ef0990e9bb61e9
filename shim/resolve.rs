//! Finding a task's command in `PATH` once, where the answer cannot change.
//!
//! A command without a `/` is looked for in each `PATH` entry in turn (posix_spawnp), and each
//! entry that does not hold it is a failed exec, a walk of its path. On fuse-overlayfs that is
//! a round trip to the storage driver's FUSE daemon per walk (about 35 µs on a small VM,
//! docs/benchmarks.md): with Docker's default `PATH`, busybox's `true` costs two failed tries
//! before `/bin/true`, an image's `python3` in `/usr/bin` four.
//!
//! When the container's root file system is read-only (`read_only_rootfs`, the default) and a
//! name's whole search stays on it (no entry, directory or symlink on the way is on another
//! mount: checked with `openat2(RESOLVE_NO_XDEV)`), nothing a task can do changes the answer:
//! no file can appear in or vanish from those directories, and tasks cannot mount over them.
//! Then the answer is kept, per `PATH` value and name, and the command is run by its path
//! (with the name as `argv[0]`, as a search would pass it). Anything else is searched every
//! time, as before: a writable root, a `PATH` with a relative or empty entry, an entry on a
//! volume or tmpfs, a task that sets its own `PATH`, a name found nowhere.

use crate::sys;
use crate::threads::lock;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::Mutex;

/// How many (PATH, name) pairs are remembered, found or not: names are the tasks' choice, so
/// the list must not grow without bound; past it, names are searched each time.
const MAX_KNOWN: usize = 256;

/// The shim's one set of answers.
pub static FOUND: Commands = Commands::new();

/// The shim's own `PATH` (the image's, or the pool's `env`), which a task runs with unless it
/// sets its own: read once, since nothing changes the shim's environment.
pub fn own_path() -> Option<&'static [u8]> {
    static PATH: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| std::env::var_os("PATH").map(OsStringExt::into_vec))
        .as_deref()
}

/// Answers so far: `(PATH, name)` to the path to run, or `None` when the search for it has to
/// be done each time.
pub struct Commands {
    known: Mutex<Vec<(Vec<u8>, Vec<u8>, Option<OsString>)>>,
}

impl Commands {
    pub const fn new() -> Commands {
        Commands {
            known: Mutex::new(Vec::new()),
        }
    }

    /// The path to run for `name` under `path_var` (the `PATH` the task runs with), if the
    /// answer is fixed (see the module's comment); `None`: let the spawn search.
    pub fn lookup(&self, name: &[u8], path_var: &[u8]) -> Option<OsString> {
        if name.is_empty() || name.contains(&b'/') {
            return None;
        }
        let mut known = lock(&self.known);
        if let Some((_, _, found)) = known
            .iter()
            .find(|(p, n, _)| n.as_slice() == name && p.as_slice() == path_var)
        {
            return found.clone();
        }
        if known.len() >= MAX_KNOWN {
            return None;
        }
        let found = search_fixed(name, path_var).map(OsString::from_vec);
        known.push((path_var.to_vec(), name.to_vec(), found.clone()));
        found
    }
}

/// What one `PATH` entry says of a name, on a read-only root.
#[derive(Debug, PartialEq)]
pub enum Entry {
    /// An executable regular file, reached without leaving the root's mount.
    Here,
    /// Not here, for good: missing, not executable, or not a file, all on the root's mount.
    NotHere,
    /// Depends on something that can change (another mount) or could not be told.
    Unknown,
}

/// The first `PATH` entry holding `name`, as `dir/name`, if every entry up to it is on the
/// read-only root; `None` otherwise.
fn search_fixed(name: &[u8], path_var: &[u8]) -> Option<Vec<u8>> {
    let root = sys::open_dir_nofollow(b"/").ok()?;
    if !sys::read_only_fs(root.as_fd()).ok()? {
        return None;
    }
    first_fixed(name, path_var, |candidate| probe(root.as_fd(), candidate))
}

/// What the absolute path `candidate` is, on the read-only root `root`: an exec of it would
/// succeed (`Here`), fail in a way the search goes on from (`NotHere`: missing, a component
/// that is not a directory, no permission, not a regular file), or it is reached through
/// another mount (`Unknown`).
fn probe(root: BorrowedFd<'_>, candidate: &[u8]) -> Entry {
    const ENOENT: i32 = 2;
    const EACCES: i32 = 13;
    const ENOTDIR: i32 = 20;
    let rel = &candidate[candidate.iter().take_while(|&&b| b == b'/').count()..];
    match sys::open_on_same_mount(root, rel) {
        // The whole resolution stayed on the root's mount, so the access check (which walks
        // the path again) sees the same file.
        Ok(fd) => match sys::stat_fd(fd.as_fd()).map(|st| st.regular_file) {
            Ok(true) if sys::executable(root, rel) => Entry::Here,
            Ok(_) => Entry::NotHere,
            Err(_) => Entry::Unknown,
        },
        Err(e) if matches!(e.raw_os_error(), Some(ENOENT | ENOTDIR | EACCES)) => Entry::NotHere,
        Err(_) => Entry::Unknown,
    }
}

/// The search itself, with `probe` telling what an absolute candidate path is.
fn first_fixed(
    name: &[u8],
    path_var: &[u8],
    mut probe: impl FnMut(&[u8]) -> Entry,
) -> Option<Vec<u8>> {
    for dir in path_var.split(|&b| b == b':') {
        // An empty or relative entry depends on the working directory.
        if !dir.starts_with(b"/") {
            return None;
        }
        let mut candidate = dir.to_vec();
        if !candidate.ends_with(b"/") {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(name);
        match probe(&candidate) {
            Entry::Here => return Some(candidate),
            Entry::NotHere => {}
            Entry::Unknown => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_from<'a>(table: &'a [(&'a str, Entry)]) -> impl FnMut(&[u8]) -> Entry + 'a {
        move |c: &[u8]| {
            let c = std::str::from_utf8(c).unwrap();
            match table.iter().find(|(p, _)| *p == c) {
                Some((_, Entry::Here)) => Entry::Here,
                Some((_, Entry::Unknown)) => Entry::Unknown,
                _ => Entry::NotHere,
            }
        }
    }

    #[test]
    fn the_first_entry_holding_the_name_wins_when_all_before_it_are_fixed() {
        let path = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let table = [("/bin/true", Entry::Here), ("/usr/bin/true", Entry::Here)];
        assert_eq!(
            first_fixed(b"true", path, probe_from(&table)),
            Some(b"/usr/bin/true".to_vec())
        );
        let table = [("/bin/true", Entry::Here)];
        assert_eq!(
            first_fixed(b"true", b"/usr/bin/:/bin", probe_from(&table)),
            Some(b"/bin/true".to_vec())
        );
    }

    #[test]
    fn an_entry_that_can_change_before_the_hit_means_no_answer() {
        // /work/bin is a tmpfs: a task could put a `true` there.
        let table = [
            ("/work/bin/true", Entry::Unknown),
            ("/bin/true", Entry::Here),
        ];
        assert_eq!(
            first_fixed(b"true", b"/work/bin:/bin", probe_from(&table)),
            None
        );
        // After the hit it does not matter.
        assert_eq!(
            first_fixed(b"true", b"/bin:/work/bin", probe_from(&table)),
            Some(b"/bin/true".to_vec())
        );
    }

    #[test]
    fn relative_or_empty_entries_and_names_found_nowhere_mean_no_answer() {
        let table = [("/bin/true", Entry::Here)];
        for path in [&b"::/bin"[..], b".:/bin", b"bin:/bin"] {
            assert_eq!(first_fixed(b"true", path, probe_from(&table)), None);
        }
        assert_eq!(
            first_fixed(b"nope", b"/usr/bin:/bin", probe_from(&table)),
            None
        );
    }

    #[test]
    fn names_with_a_slash_are_never_looked_up() {
        let commands = Commands::new();
        assert_eq!(commands.lookup(b"./true", b"/bin"), None);
        assert_eq!(commands.lookup(b"", b"/bin"), None);
        assert!(lock(&commands.known).is_empty());
    }
}
