//! The workdir reset: deleting the contents of the directories the daemon names, between
//! pool tasks.

use crate::{dirs, sys};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// Delete the contents of each directory in `paths`, best effort. Symlinks are removed, never
/// followed (`remove_dir_all` does not follow them either). Returns what could not be removed.
pub fn wipe(paths: &[Vec<u8>]) -> Option<String> {
    const SHOWN: usize = 10;
    let mut problems = Vec::new();
    for path in paths {
        let kept = dirs::KEPT.kept(path);
        restore_mode(path, kept);
        // The common case, through a kept directory (`dirs.rs`) with no path walk: empty,
        // that is, wiped already. Anything else is left to the walk by path.
        if kept.is_some_and(is_empty) {
            continue;
        }
        wipe_dir(Path::new(OsStr::from_bytes(path)), &mut problems);
    }
    if problems.len() > SHOWN {
        let more = problems.len() - SHOWN;
        problems.truncate(SHOWN);
        problems.push(format!("and {more} more"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Give a tmpfs mount point back the mode it had when the shim started
/// ([`dirs::start_mode`]), which a task may have changed: `chmod 500 /work` would otherwise
/// leave the next tenant a workdir it cannot write. Best effort, never a reason to fail the
/// wipe: the shim runs as the tasks' user, so it can undo whatever they did.
fn restore_mode(path: &[u8], kept: Option<std::os::fd::BorrowedFd<'_>>) {
    let Some(mode) = dirs::start_mode(path) else {
        return;
    };
    match kept {
        Some(fd) => {
            if sys::stat_fd(fd).is_ok_and(|st| st.mode != mode) {
                let _ = sys::chmod_fd(fd, mode);
            }
        }
        None => {
            let dir = Path::new(OsStr::from_bytes(path));
            let found = fs::symlink_metadata(dir);
            if found.is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 != mode) {
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode));
            }
        }
    }
}

/// Whether the directory has no entries (an unreadable one counts as not empty).
fn is_empty(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut empty = true;
    sys::list_dir(dir, |_| {
        empty = false;
        false
    })
    .is_ok()
        && empty
}

fn wipe_dir(dir: &Path, problems: &mut Vec<String>) {
    let mut parts = dir.components();
    let safe = parts.next() == Some(Component::RootDir)
        && parts.clone().next().is_some()
        && parts.all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        problems.push(format!(
            "{}: refused (not an absolute path below /)",
            dir.display()
        ));
        return;
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => return problems.push(format!("{}: {e}", dir.display())),
        Ok(meta) if !meta.is_dir() => {
            return problems.push(format!("{}: not a directory, not wiped", dir.display()))
        }
        Ok(_) => {}
    }
    let mut failed = remove_contents(dir);
    if !failed.is_empty() {
        // Tasks leave read-only directories behind (Go's module cache, `chmod -R a-w`); they
        // run as our user, so their owner can make them writable again and retry.
        make_owner_writable(dir);
        failed = remove_contents(dir);
    }
    problems.extend(failed);
}

/// Remove every entry of `dir`; returns what failed.
fn remove_contents(dir: &Path) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return vec![format!("{}: {e}", dir.display())],
    };
    let mut failed = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failed.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        // file_type does not follow symlinks: a link to a directory is unlinked, not emptied.
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            failed.push(format!("{}: {e}", path.display()));
        }
    }
    failed
}

/// Give the owner rwx on `root` and every directory below it, without following symlinks.
/// Iterative, so a deep tree cannot exhaust the stack. Failures are left to the retry to report.
fn make_owner_writable(root: &Path) {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
    }
}
