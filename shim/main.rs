//! warmpool-shim: the in-container agent of warmpool.
//!
//! It is the container's entrypoint (PID 1). The daemon either connects to the unix socket the
//! shim listens on with `--listen PATH` (the direct transport: a host directory of this
//! container's own, one daemon connection at a time, for the container's whole life), or
//! attaches once to the container's stdin/stdout; either way it sends framed requests (see
//! `src/shim_proto.rs`), each connection starting with a Hello. The shim runs one task at
//! a time in its own process group, streams its output back, ends every process the task left
//! behind (`sweep.rs`), and reports how it ended. That replaces a `docker exec` per task
//! (about 50 ms) with a spawn (1 to 2 ms, mostly the kernel's fork and exec).
//!
//! Built with plain `rustc` as one static binary, std only, so it runs in any image, even one
//! holding nothing else. Its stderr is for its own diagnostics only.
//!
//! Files, each using only those after it: `protocol.rs` reads requests and answers them,
//! `task.rs` runs and supervises a task (told what it needs, it knows nothing of the request
//! loop), `output.rs` is the stream events go back on, `sweep.rs` ends what a task left,
//! `wipe.rs` resets the workdir, `dirs.rs` keeps open the directories used around every task
//! (a path walk costs a FUSE round trip on some storage drivers), `resolve.rs` finds a command
//! in `PATH` once where the answer cannot change, `threads.rs` holds the lock helpers and the
//! reused workers, `sys.rs` every libc declaration; `files.rs`, `tar.rs` and `failure.rs` serve file transfers
//! (the same binary, run as a task). This file only wires them together; no file uses it.
//!
//! Threads: the main thread reads requests and never waits on a task; one reaper thread reaps
//! every child (PID 1 inherits all orphans); one signal thread handles SIGTERM/SIGINT; and a
//! small pool of reused workers runs, per task, a supervisor (one thread polling a pidfd of
//! the main process and both output pipes: it forwards the output, enforces the timeout, reaps
//! the main process and sends Exit) and, when there is stdin to give, a stdin writer.
//!
//! Attached, end of stdin means the daemon is gone for good (it creates the container with
//! `OpenStdin` and without `StdinOnce`, so detaching never closes it): the shim lets the
//! running task finish, sends its Exit, and exits 0. Direct, the end of a connection is not:
//! the task goes on and the shim waits for the next daemon (adoption after a restart).
//! SIGTERM/SIGINT: SIGKILL the running task's group, exit 0.

// Unused half (request encoding, event decoding) allowed in the module itself.
#[path = "../src/shim_proto.rs"]
mod shim_proto;

mod dirs;
mod failure;
mod files;
mod output;
mod protocol;
mod resolve;
mod sweep;
mod sys;
mod tar;
mod task;
mod threads;
mod wipe;

use output::Output;
use protocol::{Busy, Shim};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Condvar, Mutex};
use sys::die;
use threads::{spawn_thread, Workers};

fn main() {
    // The same binary serves a session's file transfers, run as ordinary tasks.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = files::dispatch(&args) {
        std::process::exit(code);
    }
    // Before any thread exists. SIGTERM and SIGINT only write their number to a pipe that the
    // signal thread reads (see `sys::catch_shutdown_signals`); no signal is blocked, so tasks
    // start with an empty signal mask and default dispositions without a `pre_exec` hook.
    if let Err(e) = sys::catch_shutdown_signals() {
        die(1, &format!("cannot set up the signal handlers: {e}"));
    }

    // Before any task can change them: what a wipe gives the workdir and /tmp back.
    dirs::note_start_modes();

    // Outside a container's pid namespace orphans would go to the real init, out of reach of
    // the sweep that ends what each task leaves behind (see `sweep.rs`).
    if sys::my_pid() != 1 {
        if let Err(e) = sys::become_subreaper() {
            eprintln!("warmpool-shim: cannot become a child subreaper: {e}");
        }
    }

    // `--listen PATH` (the direct transport): the daemon connects to a unix socket at PATH, a
    // directory of this container's own bind-mounted from the host. Otherwise the protocol
    // runs over the attached stdin/stdout.
    let listen = match args.as_slice() {
        [_, flag, path] if flag == "--listen" => Some(std::path::PathBuf::from(path)),
        _ => None,
    };
    let listener = listen.as_deref().map(|path| match listen_on(path) {
        Ok(l) => l,
        Err(e) => die(1, &format!("cannot listen on {}: {e}", path.display())),
    });
    // Own descriptors for the protocol stream: unbuffered (one write per frame) and close-on-exec.
    let (input, output) = if listener.is_some() {
        (None, None)
    } else {
        match (
            dup_file(io::stdin().as_fd()),
            dup_file(io::stdout().as_fd()),
        ) {
            (Ok(i), Ok(o)) => (Some(i), Some(o)),
            (Err(e), _) | (_, Err(e)) => die(1, &format!("cannot use stdin/stdout: {e}")),
        }
    };
    let shim: &'static Shim = Box::leak(Box::new(Shim {
        out: Output {
            stream: Mutex::new(None),
            direct: listener.is_some(),
        },
        reaper: task::Reaper::default(),
        workers: Workers::default(),
        busy: Mutex::new(Busy::Idle),
        idle: Condvar::new(),
        start_dir: std::env::current_dir().unwrap_or_else(|_| "/".into()),
    }));
    if let Err(e) = spawn_thread("reaper", move || shim.reaper.run()) {
        die(1, &format!("cannot start the reaper thread: {e}"));
    }
    if let Err(e) = spawn_thread("signals", move || shim.on_shutdown_signal()) {
        die(1, &format!("cannot start the signal thread: {e}"));
    }
    match (listener, input, output) {
        (Some(listener), _, _) => shim.serve_socket(listener),
        (None, Some(input), Some(output)) => {
            shim.out.connect(output);
            shim.serve(input)
        }
        _ => unreachable!("either a socket or stdin/stdout"),
    }
}

/// The direct transport's socket: only its owner (the container's user, the daemon being
/// root or that user) may connect. A socket left by an earlier run of the shim is replaced.
fn listen_on(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn dup_file(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn a_peer_in_the_same_pid_namespace_has_its_pid() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            crate::sys::peer_pid(a.as_fd()),
            Some(crate::sys::my_pid()),
            "a process of the container is told from the daemon (pid 0)"
        );
    }
}
