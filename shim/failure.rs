//! How the shim's file commands fail: the exit codes the daemon maps to HTTP statuses
//! (mirrored in the daemon's `src/api/files.rs`) and the mapping from an I/O error to a code
//! and a message. Both `files.rs` and `tar.rs` use it, so neither depends on the other for it.

use std::io;
use std::path::Path;

pub const NOT_FOUND: i32 = 3;
pub const NOT_WRITABLE: i32 = 4;
pub const WRONG_KIND: i32 = 5;
pub const BAD_ARCHIVE: i32 = 6;
pub const NOT_READABLE: i32 = 7;
pub const NO_SPACE: i32 = 8;
pub const INVALID_PATH: i32 = 9;

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// An exit code and a message naming the path.
pub type Failure = (i32, String);

/// The exit code of an I/O error that is not about the direction of the transfer.
fn common_code(e: &io::Error) -> Option<i32> {
    if matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) {
        return Some(NO_SPACE);
    }
    match e.kind() {
        io::ErrorKind::NotFound => Some(NOT_FOUND),
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => Some(WRONG_KIND),
        io::ErrorKind::InvalidInput if e.to_string().contains("nul byte") => Some(INVALID_PATH),
        _ => None,
    }
}

/// Maps an error reading `path` (to send it) to an exit code and a message.
pub fn fail_read(path: &Path, what: &str, e: io::Error) -> Failure {
    let code = common_code(&e).unwrap_or(match e.kind() {
        io::ErrorKind::PermissionDenied => NOT_READABLE,
        _ => 1,
    });
    let why = if code == NOT_READABLE {
        " (not readable by the container's user)"
    } else {
        ""
    };
    (code, format!("cannot {what} {}: {e}{why}", path.display()))
}

/// Maps an error writing `path` (to store what was sent) to an exit code and a message.
pub fn fail_write(path: &Path, what: &str, e: io::Error) -> Failure {
    let code = common_code(&e).unwrap_or(match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => NOT_WRITABLE,
        _ => 1,
    });
    let why = if code == NO_SPACE {
        " (no space left: the filesystem is full)"
    } else {
        ""
    };
    (code, format!("cannot {what} {}: {e}{why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_cause() {
        let p = Path::new("/work/x");
        let denied = || io::Error::from_raw_os_error(13);
        assert_eq!(fail_read(p, "read", denied()).0, NOT_READABLE);
        assert!(fail_read(p, "read", denied()).1.contains("not readable"));
        assert_eq!(fail_write(p, "write", denied()).0, NOT_WRITABLE);
        let full = fail_write(p, "write", io::Error::from_raw_os_error(ENOSPC));
        assert_eq!(full.0, NO_SPACE);
        assert!(full.1.contains("no space left"), "{}", full.1);
        assert_eq!(
            fail_read(p, "read", io::Error::from_raw_os_error(2)).0,
            NOT_FOUND
        );
    }
}
