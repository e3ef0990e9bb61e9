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
//! Files: `protocol.rs` reads requests and answers them, `task.rs` runs and supervises a task,
//! `sweep.rs` ends what it left, `wipe.rs` resets the workdir, `files.rs` and `tar.rs` serve
//! file transfers (the same binary, run as a task), `sys.rs` holds every libc declaration.
//!
//! Threads: the main thread reads requests and never waits on a task; one reaper thread reaps
//! every child (PID 1 inherits all orphans); one signal thread handles SIGTERM/SIGINT; and a
//! small pool of reused workers runs, per task, a supervisor (waits for the main process,
//! enforces the timeout, sends Exit), two output readers and, when there is stdin to give, a
//! stdin writer.
//!
//! Attached, end of stdin means the daemon is gone for good (it creates the container with
//! `OpenStdin` and without `StdinOnce`, so detaching never closes it): the shim lets the
//! running task finish, sends its Exit, and exits 0. Direct, the end of a connection is not:
//! the task goes on and the shim waits for the next daemon (adoption after a restart).
//! SIGTERM/SIGINT: SIGKILL the running task's group, exit 0.

// Unused half (request encoding, event decoding) allowed in the module itself.
#[path = "../src/shim_proto.rs"]
mod shim_proto;

mod failure;
mod files;
mod protocol;
mod sweep;
mod sys;
mod tar;
mod task;
mod wipe;

use protocol::{Busy, Output, Shim};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

/// Largest output chunk per Stdout/Stderr frame: one pipe's worth, so a frame is never big.
const CHUNK: usize = 64 << 10;

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

/// Report on stderr and exit; PID 1 exiting takes the whole container down.
pub fn die(code: i32, msg: &str) -> ! {
    eprintln!("warmpool-shim: {msg}");
    std::process::exit(code)
}

// With panic=abort a poisoned mutex cannot be observed, so these helpers just look through it.

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    d: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, d)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Linux pids fit in an i32 (`pid_max` is at most 2^22), the type the libc calls take.
#[allow(clippy::cast_possible_wrap)]
pub fn pid_of(child: &std::process::Child) -> i32 {
    child.id() as i32
}

pub fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(f)
        .map(drop)
}

/// Threads kept for reuse. Every task needs three or four helper threads, and starting them
/// costs about as much as all the rest of the shim's work for a short task; reused threads
/// also cannot fail to start when the container is at its pids limit.
#[derive(Default)]
pub struct Workers {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Box<dyn FnOnce() + Send>>,
    /// Workers waiting for a job.
    idle: usize,
}

/// Idle workers beyond this many exit instead of waiting.
const MAX_IDLE_WORKERS: usize = 8;

impl Workers {
    /// Run `job` on an idle worker, or on a new one if none is free.
    pub fn run(&'static self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let mut q = lock(&self.queue);
        if q.idle > q.jobs.len() {
            q.jobs.push_back(Box::new(job));
            drop(q);
            self.ready.notify_one();
            return Ok(());
        }
        drop(q);
        spawn_thread("worker", move || {
            job();
            self.work();
        })
    }

    fn work(&self) {
        let mut q = lock(&self.queue);
        while q.idle < MAX_IDLE_WORKERS {
            q.idle += 1;
            while q.jobs.is_empty() {
                q = wait(&self.ready, q);
            }
            q.idle -= 1;
            let job = q.jobs.pop_front();
            drop(q);
            if let Some(job) = job {
                job();
            }
            q = lock(&self.queue);
        }
    }
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
