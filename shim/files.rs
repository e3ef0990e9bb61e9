//! The shim's file commands, run as tasks in a session's container: `write-file PATH` (stdin
//! to a file), `read-file PATH` (a file to stdout), `tar DIR` (an archive of DIR's contents to
//! stdout) and `untar DIR` (one from stdin into DIR; see `tar.rs`). They need nothing from the
//! image, so file transfer works even in a scratch image, and they write through the
//! container's own mounts (the tmpfs workdir), which the engine's archive API cannot.
//!
//! Exit codes, mirrored in the daemon's `src/api/files.rs`: 3 no such path, 4 not writable,
//! 5 wrong kind (a directory where a file was expected, or the reverse), 6 bad archive,
//! 7 not readable, 8 no space left on the device, 9 invalid path. The message on stderr
//! names the path and the reason.

use crate::failure::{fail_read, fail_write, Failure, INVALID_PATH, WRONG_KIND};
use crate::tar;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Runs a file command if `args` names one; `None` means "not a file command".
pub fn dispatch(args: &[std::ffi::OsString]) -> Option<i32> {
    let (cmd, path) = match args {
        [_, cmd, path] => (cmd.to_str()?, Path::new(path)),
        _ => return None,
    };
    let run: fn(&Path) -> Result<(), Failure> = match cmd {
        "write-file" => write_file,
        "read-file" => read_file,
        "tar" => tar,
        "untar" => untar,
        _ => return None,
    };
    let result = check_path(path).and_then(|()| run(path));
    Some(match result {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("{msg}");
            code
        }
    })
}

/// Paths come as argv, which cannot carry a NUL byte (the shim refuses such a task before it
/// starts, see `task.rs`); what is checked here is that the path is absolute.
fn check_path(path: &Path) -> Result<(), Failure> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err((
            INVALID_PATH,
            format!("{} is not an absolute path", path.display()),
        ))
    }
}

/// Writes stdin to `path` through a temporary file renamed into place, so that a failed
/// upload (a full disk) leaves the old file, or none, rather than a truncated one.
fn write_file(path: &Path) -> Result<(), Failure> {
    let meta = fs::symlink_metadata(path);
    if path.is_dir() {
        return Err((WRONG_KIND, format!("{} is a directory", path.display())));
    }
    let mut data = Vec::new();
    io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| fail_write(path, "read the upload for", e))?;
    if meta.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
        // Write where the link points, as a plain open would.
        let mut f = File::create(path).map_err(|e| fail_write(path, "write", e))?;
        return f.write_all(&data).map_err(|e| fail_write(path, "write", e));
    }
    let tmp = temp_sibling(path);
    let written = File::create(&tmp)
        .map_err(|e| fail_write(path, "write", e))
        .and_then(|mut f| {
            f.write_all(&data)
                .and_then(|()| f.sync_data())
                .map_err(|e| fail_write(path, "write", e))
        })
        .and_then(|()| match &meta {
            // Keep the mode of the file it replaces.
            Ok(m) => fs::set_permissions(&tmp, fs::Permissions::from_mode(m.permissions().mode()))
                .map_err(|e| fail_write(path, "write", e)),
            Err(_) => Ok(()),
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| fail_write(path, "write", e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".warmpool-upload.{}", std::process::id()));
    path.with_file_name(name)
}

fn read_file(path: &Path) -> Result<(), Failure> {
    let meta = fs::metadata(path).map_err(|e| fail_read(path, "read", e))?;
    if !meta.is_file() {
        return Err((
            WRONG_KIND,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut f = File::open(path).map_err(|e| fail_read(path, "read", e))?;
    io::copy(&mut f, &mut io::stdout().lock()).map_err(|e| fail_read(path, "read", e))?;
    Ok(())
}

fn tar(dir: &Path) -> Result<(), Failure> {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    tar::write(dir, &mut out)?;
    out.flush().map_err(|e| fail_read(dir, "send", e))
}

fn untar(dir: &Path) -> Result<(), Failure> {
    let mut data = Vec::new();
    io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| fail_write(dir, "read the archive for", e))?;
    tar::extract(dir, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_refused() {
        assert_eq!(check_path(Path::new("work/x")).unwrap_err().0, INVALID_PATH);
    }
}
