//! The shim binary, built by `build.rs` and embedded in the daemon, so the one `warmpool`
//! executable is all there is to install.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The static shim, as built for this daemon.
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/warmpool-shim"));

/// Writes the shim where the engine can bind-mount it from, named by its content hash so
/// daemons of different versions never overwrite one another's. Returns its path.
///
/// The engine must see the same path: this works with a local engine. With a remote one,
/// use `exec = "docker-exec"` (see docs/operations.md).
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(BINARY)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("shim-{hash}"));
    if std::fs::read(&path).is_ok_and(|existing| existing == BINARY) {
        return Ok(path);
    }
    // Write then rename, so a container never mounts a half-written binary.
    let tmp = dir.join(format!(".shim-{hash}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(BINARY)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Where the shim is written unless `WARMPOOL_SHIM_DIR` says otherwise.
pub fn default_dir() -> PathBuf {
    std::env::var_os("WARMPOOL_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("warmpool"))
}
