//! The direct transport: the shim listens on a unix socket in a host directory that is
//! bind-mounted into its container only, and the daemon connects to it. Same protocol as the
//! attached stream, but no engine process (dockerd, containerd-shim) copies the bytes.
//!
//! Layout: `<run root>/<container name>/shim.sock` on the host (the run root is
//! `/run/warmpool/<instance>` for a root daemon, see [`run_root`]), mounted at
//! `/.warmpool/run` in that one container. The directory is mode 0700 and belongs to the
//! container's user (so the shim can create its socket there); the socket is 0600. Another
//! container never has that directory mounted, so it cannot even see the socket; host users
//! other than root and that uid cannot traverse the run root (0700, the daemon's).
//!
//! The container's exit shows as end of stream on the socket: the shim is PID 1, and when it
//! exits every process of the container goes, so nothing else can hold the connection open.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{ExecError, ShimConn};
use crate::config::ExecTransport;
use crate::runtime::{Attached, Runtime};

/// Where a container's socket directory is mounted inside it.
pub const SOCKET_DIR_IN_CONTAINER: &str = "/.warmpool/run";
/// The socket's name in that directory.
pub const SOCKET_NAME: &str = "shim.sock";
/// The label that records a direct container's host socket path (for adoption after a
/// daemon restart, and to tell direct containers from attached ones).
pub const LABEL_SOCKET: &str = "warmpool.shim_socket";

/// The engine address the daemon talks to, set once at start-up (`[docker] host`, else
/// `DOCKER_HOST`, else the local socket): the direct transport needs the engine to see the
/// daemon's files.
static ENGINE_HOST: OnceLock<String> = OnceLock::new();

/// Records the engine address the daemon uses (`[docker] host`); see [`engine_host`].
pub fn set_engine_host(configured: Option<&str>) {
    let _ = ENGINE_HOST.set(crate::config::engine_address(configured));
}

/// The engine address, as [`set_engine_host`] recorded it (the local default when unset).
pub fn engine_host() -> String {
    ENGINE_HOST
        .get()
        .cloned()
        .unwrap_or_else(|| crate::config::engine_address(None))
}

/// The owner a container's socket directory gets: the container's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Whether a shim pool's containers use the direct transport, and if not why not (for the
/// log line). Pure: `engine_host` is the engine's address, `daemon_uid` the daemon's
/// effective uid, `user` the pool's `security.user`.
///
/// Direct needs a local engine (`unix://`: a `tcp://` or `ssh://` engine does not see this
/// host's files), and a directory the container's user can create the socket in while no
/// one else can: a root daemon gives it to a numeric `uid[:gid]` (or to root for `""`/`0`);
/// a non-root daemon only to its own uid.
pub fn decide(
    requested: ExecTransport,
    engine_host: &str,
    daemon_uid: u32,
    user: &str,
) -> Result<Owner, String> {
    if requested == ExecTransport::Attach {
        return Err("exec_transport = \"attach\"".into());
    }
    if !crate::config::is_local_engine(engine_host) {
        let scheme = engine_host.split("://").next().unwrap_or(engine_host);
        return Err(format!(
            "the engine ({scheme}://) is not local: it cannot bind-mount this host's socket directory"
        ));
    }
    let mut ids = user.splitn(2, ':');
    let uid = match ids.next().unwrap_or("") {
        "" | "root" => Some(0),
        u => u.parse::<u32>().ok(),
    };
    let gid = match ids.next() {
        None => uid,
        Some("" | "root") => Some(0),
        Some(g) => g.parse::<u32>().ok(),
    };
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err(format!(
            "security.user {user:?} is not a numeric uid[:gid]: the socket directory cannot be given to it"
        ));
    };
    if daemon_uid != 0 && daemon_uid != uid {
        return Err(format!(
            "the daemon runs as uid {daemon_uid}, not root nor the containers' uid {uid}: it cannot give them a socket directory"
        ));
    }
    Ok(Owner { uid, gid })
}

/// The daemon's effective uid (the owner of `/proc/self`), 0 if it cannot be told.
pub fn daemon_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// The host directory holding this instance's socket directories: `WARMPOOL_RUN_DIR` if set,
/// else `/run/warmpool/<instance>` for a root daemon, `$XDG_RUNTIME_DIR/warmpool/<instance>`
/// for another, and `<temp dir>/warmpool-run-<uid>/<instance>` without either.
pub fn run_root(instance: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("WARMPOOL_RUN_DIR") {
        return PathBuf::from(dir).join(instance);
    }
    let uid = daemon_uid();
    if uid == 0 {
        return PathBuf::from("/run/warmpool").join(instance);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("warmpool").join(instance),
        None => std::env::temp_dir()
            .join(format!("warmpool-run-{uid}"))
            .join(instance),
    }
}

/// Creates the run root (0700, the daemon's) and removes what a previous run of this instance
/// left there: every directory whose socket no shim listens on any more. A live one belongs
/// to a container that adoption may take over.
pub fn prepare_root(root: &Path) -> io::Result<()> {
    std::fs::create_dir_all(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(root)? {
        let Ok(entry) = entry else { continue };
        let dir = entry.path();
        let live = std::os::unix::net::UnixStream::connect(dir.join(SOCKET_NAME)).is_ok();
        if !live {
            tracing::debug!(dir = %dir.display(), "removing a socket directory left by a previous run");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a leftover socket directory");
            }
        }
    }
    Ok(())
}

/// A container's socket directory; removed from the host when dropped (with the last handle
/// on the container's connection, which is when the container is retired).
#[derive(Debug)]
pub struct SocketDir {
    pub dir: PathBuf,
}

impl SocketDir {
    /// Creates `<root>/<name>` with mode 0700 for `owner`.
    pub fn create(root: &Path, name: &str, owner: Owner) -> io::Result<SocketDir> {
        let dir = root.join(name);
        // Longer than sun_path (108 bytes) cannot be connected to.
        if dir.join(SOCKET_NAME).as_os_str().len() >= 108 {
            return Err(io::Error::other(format!(
                "socket path {} is too long for a unix socket; set WARMPOOL_RUN_DIR to a shorter directory",
                dir.join(SOCKET_NAME).display()
            )));
        }
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_dir_all(&dir)?;
                std::fs::create_dir(&dir)?;
            }
            r => r?,
        }
        let made = SocketDir { dir };
        std::fs::set_permissions(&made.dir, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&made.dir, Some(owner.uid), Some(owner.gid))?;
        Ok(made)
    }

    /// The socket's host path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a socket directory");
            }
        }
    }
}

/// Connects to a started container's shim: waits for its socket (the shim creates it as it
/// starts), then, when `wait_hello` is set, for its greeting. Gives up early when the engine
/// says the container stopped.
pub async fn connect(
    runtime: &Arc<dyn Runtime>,
    container: &str,
    socket: &Path,
    dir: Option<SocketDir>,
    wait_hello: Option<Duration>,
) -> Result<Arc<ShimConn>, ExecError> {
    let limit = wait_hello.unwrap_or(Duration::from_secs(2));
    let begun = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut next_check = begun + Duration::from_millis(200);
    let stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                let now = tokio::time::Instant::now();
                if now - begun > limit {
                    return Err(ExecError::Dead(format!(
                        "the shim's socket {} did not accept within {limit:?} ({e}); with a remote or user-namespaced engine set exec_transport = \"attach\"",
                        socket.display()
                    )));
                }
                if now >= next_check {
                    next_check = now + Duration::from_millis(500);
                    if !runtime.is_running(container).await.unwrap_or(true) {
                        return Err(ExecError::Dead(
                            "the container stopped before its shim listened (see its logs)".into(),
                        ));
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(ExecError::Dead(format!(
                    "cannot connect to the shim's socket {}: {e}",
                    socket.display()
                )))
            }
        }
    };
    let (read, write) = stream.into_split();
    let attached = Attached {
        stdout: Box::pin(read),
        stdin: Box::pin(write),
    };
    ShimConn::connect_with(attached, wait_hello, dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "unix:///var/run/docker.sock";

    #[test]
    fn remote_engines_fall_back_to_attach() {
        for host in [
            "tcp://10.0.0.1:2375",
            "ssh://user@box",
            "https://engine:2376",
        ] {
            let why = decide(ExecTransport::Direct, host, 0, "1000:1000").unwrap_err();
            assert!(why.contains("not local"), "{host}: {why}");
        }
    }

    #[test]
    fn local_engine_goes_direct_for_the_containers_user() {
        assert_eq!(
            decide(ExecTransport::Direct, LOCAL, 0, "1000:1000"),
            Ok(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            decide(ExecTransport::Direct, LOCAL, 0, "1000"),
            Ok(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            decide(ExecTransport::Direct, LOCAL, 0, ""),
            Ok(Owner { uid: 0, gid: 0 })
        );
        // A non-root daemon can only hand its own uid a directory.
        assert!(decide(ExecTransport::Direct, LOCAL, 1000, "1000:1000").is_ok());
        assert!(decide(ExecTransport::Direct, LOCAL, 1001, "1000:1000").is_err());
    }

    #[test]
    fn attach_when_asked_or_the_user_is_a_name() {
        assert!(decide(ExecTransport::Attach, LOCAL, 0, "1000:1000").is_err());
        let why = decide(ExecTransport::Direct, LOCAL, 0, "nobody").unwrap_err();
        assert!(why.contains("numeric"), "{why}");
    }
}
