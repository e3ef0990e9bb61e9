//! warmpool-shim: the in-container agent of warmpool.
//!
//! It is the container's entrypoint (PID 1). The daemon attaches once to the container's
//! stdin/stdout and sends framed requests (see `src/shim_proto.rs`); the shim runs one task at
//! a time in its own process group, streams its output back, and reports how it ended. That
//! replaces a `docker exec` per task (about 50 ms) with a spawn (1 to 2 ms, mostly the kernel's
//! fork and exec).
//!
//! Built with plain `rustc` as one static binary, std only, so it runs in any image, even one
//! holding nothing else. Its stderr is for its own diagnostics only.
//!
//! Threads: the main thread reads requests and never waits on a task; one reaper thread reaps
//! every child (PID 1 inherits all orphans); one signal thread handles SIGTERM/SIGINT; and a
//! small pool of reused workers runs, per task, a supervisor (waits for the main process,
//! enforces the timeout, sends Exit), two output readers and, when there is stdin to give, a
//! stdin writer.
//!
//! End of stdin means the daemon is gone for good (it creates the container with `OpenStdin` and
//! without `StdinOnce`, so detaching never closes it): the shim lets the running task finish,
//! sends its Exit, and exits 0. SIGTERM/SIGINT: SIGKILL the running task's group, exit 0.

// Unused half (request encoding, event decoding) allowed in the module itself.
#[path = "../src/shim_proto.rs"]
mod shim_proto;

mod files;

use shim_proto::{Event, Exit, Request, Spawn, PROTOCOL_VERSION};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Largest output chunk per Stdout/Stderr frame: one pipe's worth, so a frame is never big.
const CHUNK: usize = 64 << 10;
/// How long output already in the pipes may still be delivered after the main process exited.
const GRACE: Duration = Duration::from_millis(50);

fn main() {
    // The same binary serves a session's file transfers, run as ordinary tasks.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = files::dispatch(&args) {
        std::process::exit(code);
    }
    // Before any thread exists. SIGTERM and SIGINT only write their number to a pipe that the
    // signal thread reads (see `sys::catch_shutdown_signals`); no signal is blocked, so tasks
    // start with an empty signal mask and default dispositions without a `pre_exec` hook.
    if let Err(e) = sys::catch_shutdown_signals() {
        die(1, &format!("cannot set up the signal handlers: {e}"));
    }

    // Own descriptors for the protocol stream: unbuffered (one write per frame) and close-on-exec.
    let (input, output) = match (
        dup_file(io::stdin().as_fd()),
        dup_file(io::stdout().as_fd()),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => die(1, &format!("cannot use stdin/stdout: {e}")),
    };
    let shim: &'static Shim = Box::leak(Box::new(Shim {
        out: Output(Mutex::new(output)),
        reaper: Reaper::default(),
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
    shim.out.send(&Event::Hello {
        version: PROTOCOL_VERSION,
    });
    shim.serve(input);
}

fn dup_file(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

/// Report on stderr and exit; PID 1 exiting takes the whole container down.
fn die(code: i32, msg: &str) -> ! {
    eprintln!("warmpool-shim: {msg}");
    std::process::exit(code)
}

// With panic=abort a poisoned mutex cannot be observed, so these helpers just look through it.

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

fn wait_timeout<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, d)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Linux pids fit in an i32 (`pid_max` is at most 2^22), the type the libc calls take.
#[allow(clippy::cast_possible_wrap)]
fn pid_of(child: &std::process::Child) -> i32 {
    child.id() as i32
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
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
struct Workers {
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
    fn run(&'static self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
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

struct Shim {
    out: Output,
    reaper: Reaper,
    /// Runs the per-task helpers (supervisor, output readers, stdin writer) and resets.
    workers: Workers,
    /// What the shim is doing; Spawn and Reset are refused unless Idle.
    busy: Mutex<Busy>,
    /// Signalled whenever `busy` returns to Idle.
    idle: Condvar,
    /// The container's working directory: tasks with an empty or relative workdir start from it.
    start_dir: std::path::PathBuf,
}

#[derive(Clone, Copy)]
enum Busy {
    Idle,
    Task { id: u64, pgid: i32 },
    Resetting,
}

impl Shim {
    /// Read and dispatch requests until end of input. Nothing here waits on a task.
    fn serve(&'static self, mut input: File) -> ! {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        loop {
            let mut used = 0;
            loop {
                match Request::decode(&buf[used..]) {
                    Ok(Some((req, n))) => {
                        used += n;
                        self.handle(req);
                    }
                    Ok(None) => break,
                    // The stream cannot be resynchronised: better a dead container, which the
                    // daemon replaces, than one that misreads requests.
                    Err(e) => self.stop(3, &e.to_string()),
                }
            }
            buf.drain(..used);
            if buf.len() < CHUNK && buf.capacity() > 16 * CHUNK {
                // A big Spawn (large stdin) must not pin its buffer for the container's life.
                buf.shrink_to(2 * CHUNK);
            }
            let len = buf.len();
            buf.resize(len + CHUNK, 0);
            let n = loop {
                match input.read(&mut buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("warmpool-shim: reading stdin: {e}");
                        break 0;
                    }
                }
            };
            buf.truncate(len + n);
            if n == 0 {
                break;
            }
        }
        if !buf.is_empty() {
            eprintln!(
                "warmpool-shim: {} bytes of an incomplete frame at end of input",
                buf.len()
            );
        }
        // Idle is set in the same critical section that sends the final Exit/ResetDone, so
        // once we see it nothing is left to say.
        let mut busy = lock(&self.busy);
        while !matches!(*busy, Busy::Idle) {
            busy = wait(&self.idle, busy);
        }
        std::process::exit(0)
    }

    fn handle(&'static self, req: Request) {
        match req {
            Request::Spawn(spawn) => self.start_task(spawn),
            Request::Ping { nonce } => {
                let busy = lock(&self.busy);
                self.out.send(&Event::Pong {
                    nonce,
                    busy: !matches!(*busy, Busy::Idle),
                });
            }
            Request::Kill { id } => {
                if let Busy::Task { id: running, pgid } = *lock(&self.busy) {
                    if running == id {
                        sys::kill_group(pgid);
                    }
                }
            }
            Request::Reset { paths } => self.start_reset(paths),
        }
    }

    fn start_task(&'static self, spawn: Spawn) {
        let id = spawn.id;
        let mut busy = lock(&self.busy);
        let error = if !matches!(*busy, Busy::Idle) {
            "busy".to_string()
        } else if !spawn.reset.is_empty() {
            // Wipe the previous task's files first. From a thread, like a Reset, so that pings
            // are still answered while a big tree is deleted; the task starts from there.
            *busy = Busy::Resetting;
            drop(busy);
            if let Err(e) = self.workers.run(move || self.reset_then_launch(spawn)) {
                let mut busy = lock(&self.busy);
                *busy = Busy::Idle;
                self.out.send(&Event::Exit(not_started(
                    id,
                    "not started: the workdir was not wiped".into(),
                    Some(format!("cannot start the reset thread: {e}")),
                )));
                drop(busy);
                self.idle.notify_all();
            }
            return;
        } else {
            match self.launch(spawn) {
                Ok(pgid) => {
                    *busy = Busy::Task { id, pgid };
                    return;
                }
                Err(e) => e,
            }
        };
        self.out.send(&Event::Exit(not_started(id, error, None)));
    }

    /// The worker's half of a Spawn with `reset`: wipe, then start the task, or report why not.
    fn reset_then_launch(&'static self, mut spawn: Spawn) {
        let id = spawn.id;
        let error = wipe(&std::mem::take(&mut spawn.reset));
        let mut busy = lock(&self.busy);
        let exit = match error {
            Some(error) => not_started(
                id,
                "not started: the workdir was not wiped".into(),
                Some(error),
            ),
            None => match self.launch(spawn) {
                Ok(pgid) => {
                    *busy = Busy::Task { id, pgid };
                    return;
                }
                Err(e) => not_started(id, e, None),
            },
        };
        *busy = Busy::Idle;
        self.out.send(&Event::Exit(exit));
        drop(busy);
        self.idle.notify_all();
    }

    /// Start the task and its helper threads; returns its pid, which is also its process
    /// group id. Called with `busy` held, so the supervisor cannot report Idle before we have
    /// recorded the task as running.
    fn launch(&'static self, spawn: Spawn) -> Result<i32, String> {
        let Spawn {
            id,
            argv,
            env,
            workdir,
            stdin,
            timeout_ms,
            max_output,
            reset: _,
        } = spawn;
        let (program, args) = argv.split_first().ok_or("empty argv")?;
        let mut cmd = Command::new(OsStr::from_bytes(program));
        cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
        for (key, value) in &env {
            if key.is_empty() || key.contains(&b'=') || key.contains(&0) {
                return Err(format!(
                    "invalid environment variable name {:?}",
                    String::from_utf8_lossy(key)
                ));
            }
            cmd.env(OsStr::from_bytes(key), OsStr::from_bytes(value));
        }
        // The shim moves into the workdir itself rather than through `current_dir`: for a
        // static binary std can only do the latter with fork, while without it std uses
        // vfork-based posix_spawn, about 0.3 ms faster here. Nothing else in the shim uses the
        // cwd, and spawns never overlap: each happens with `busy` held.
        let dir = self.start_dir.join(OsStr::from_bytes(&workdir));
        fs::create_dir_all(&dir)
            .and_then(|()| std::env::set_current_dir(&dir))
            .map_err(|e| format!("cannot use workdir {}: {e}", dir.display()))?;
        // No `pre_exec` hook: with one std must fork, without it std uses vfork-based
        // posix_spawn (about 0.3 ms a task less). The task inherits our signal mask, which is
        // empty, and gets default dispositions for the signals we catch (exec resets them;
        // posix_spawn resets them before it runs anything in the child).
        // Its own group, so that a timeout or Kill reaches its children too.
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot run {:?}: {e}", String::from_utf8_lossy(program)))?;
        let pid = pid_of(&child);
        let child_in = child.stdin.take();
        // As plain files, so that one reader function serves both streams.
        let child_out = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
        let child_err = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
        // `child` is dropped without waiting: the reaper owns all waiting.

        let output = Arc::new(TaskOutput {
            id,
            max: if max_output == 0 {
                u64::MAX
            } else {
                max_output
            },
            state: Mutex::new(OutState {
                closed: false,
                open_readers: 2,
                sent: [0; 2],
                truncated: [false; 2],
            }),
            done: Condvar::new(),
        });
        let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        let supervised = Arc::clone(&output);
        if let Err(e) = self
            .workers
            .run(move || self.supervise(id, pid, deadline, &supervised))
        {
            sys::kill_group(pid);
            self.reaper.forget(pid);
            return Err(format!("cannot start a thread for the task: {e}"));
        }
        for (stream, pipe) in [(0, child_out), (1, child_err)] {
            let Some(mut pipe) = pipe else {
                output.reader_done();
                continue;
            };
            let reader = Arc::clone(&output);
            if let Err(e) = self
                .workers
                .run(move || reader.pump(&self.out, stream, &mut pipe))
            {
                // The pipe is closed with the closure: the task sees EPIPE, the Exit still comes.
                eprintln!("warmpool-shim: cannot start an output thread: {e}");
                output.reader_done();
            }
        }
        if let (Some(mut pipe), false) = (child_in, stdin.is_empty()) {
            // From a thread: a task that does not read its stdin must not block this loop.
            let writer = move || {
                // EPIPE just means the task did not want it all.
                let _ = pipe.write_all(&stdin);
            };
            if let Err(e) = self.workers.run(writer) {
                eprintln!("warmpool-shim: cannot start the stdin thread: {e}");
            }
        }
        Ok(pid)
    }

    /// Wait for the task's main process, which alone decides when the task is over (a
    /// background child holding the pipes open must not keep it running), then clean up and
    /// report.
    fn supervise(&self, id: u64, pid: i32, deadline: Option<Instant>, output: &TaskOutput) {
        let mut timed_out = false;
        let status = self.reaper.wait(pid, deadline, || {
            timed_out = true;
            sys::kill_group(pid);
        });
        // Whatever the task left running in its group goes with it.
        sys::kill_group(pid);
        let [stdout_truncated, stderr_truncated] = output.close(GRACE);
        let mut busy = lock(&self.busy);
        *busy = Busy::Idle;
        self.out.send(&Event::Exit(Exit {
            id,
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout_truncated,
            stderr_truncated,
            spawn_error: None,
            reset_error: None,
        }));
        drop(busy);
        self.idle.notify_all();
    }

    fn start_reset(&'static self, paths: Vec<Vec<u8>>) {
        let mut busy = lock(&self.busy);
        if !matches!(*busy, Busy::Idle) {
            self.out.send(&Event::ResetDone {
                error: Some("busy: a task is running".into()),
            });
            return;
        }
        *busy = Busy::Resetting;
        drop(busy);
        // From a thread, so that pings are still answered while a big tree is deleted.
        let job = move || {
            let error = wipe(&paths);
            let mut busy = lock(&self.busy);
            *busy = Busy::Idle;
            self.out.send(&Event::ResetDone { error });
            drop(busy);
            self.idle.notify_all();
        };
        if let Err(e) = self.workers.run(job) {
            let mut busy = lock(&self.busy);
            *busy = Busy::Idle;
            self.out.send(&Event::ResetDone {
                error: Some(format!("cannot start the reset thread: {e}")),
            });
            drop(busy);
            self.idle.notify_all();
        }
    }

    /// SIGTERM (docker stop) or SIGINT: PID 1 gets no default action for them, so without
    /// this docker would wait its whole stop timeout and then SIGKILL.
    fn on_shutdown_signal(&self) {
        let sig = sys::wait_shutdown_signal();
        self.stop(0, &format!("signal {sig}, stopping"));
    }

    /// Kill the running task's group and exit with `code`. Never blocks: if `busy` is held
    /// (say, by a write to a daemon that stopped reading), exiting is enough, since the kernel
    /// kills every process of a pid namespace whose init exits.
    fn stop(&self, code: i32, msg: &str) -> ! {
        if let Ok(busy) = self.busy.try_lock() {
            if let Busy::Task { pgid, .. } = *busy {
                sys::kill_group(pgid);
            }
        }
        die(code, msg)
    }
}

/// The protocol stream to the daemon. One mutex, so that frames never interleave.
struct Output(Mutex<File>);

impl Output {
    fn send(&self, event: &Event) {
        let mut frame = Vec::new();
        event.encode(&mut frame);
        if let Err(e) = lock(&self.0).write_all(&frame) {
            // Docker keeps the container's stdout open while it runs, so this is not a detach:
            // a shim that cannot talk is useless, and its exit tells the daemon.
            die(2, &format!("cannot write to stdout: {e}"));
        }
    }
}

/// One task's output forwarding state, shared by its two readers and its supervisor.
struct TaskOutput {
    id: u64,
    max: u64,
    state: Mutex<OutState>,
    done: Condvar,
}

struct OutState {
    /// Set once Exit is about to be sent; later output is dropped, so that Exit is the last
    /// event of a task.
    closed: bool,
    open_readers: u32,
    sent: [u64; 2],
    truncated: [bool; 2],
}

impl TaskOutput {
    /// Forward one stream (0 = stdout, 1 = stderr) until EOF. Past the cap, and after Exit,
    /// keep reading and drop: a blocked writer would never exit.
    fn pump(&self, out: &Output, stream: usize, pipe: &mut impl Read) {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("warmpool-shim: reading task output: {e}");
                    break;
                }
            };
            let mut st = lock(&self.state);
            if st.closed {
                continue;
            }
            let room = self.max - st.sent[stream];
            let take = n.min(usize::try_from(room).unwrap_or(usize::MAX));
            if take < n {
                st.truncated[stream] = true;
            }
            if take > 0 {
                st.sent[stream] += take as u64;
                let (id, data) = (self.id, buf[..take].to_vec());
                // Sent under the lock: `close` cannot slip an Exit in before this chunk.
                out.send(&if stream == 0 {
                    Event::Stdout { id, data }
                } else {
                    Event::Stderr { id, data }
                });
            }
        }
        self.reader_done();
    }

    fn reader_done(&self) {
        lock(&self.state).open_readers -= 1;
        self.done.notify_all();
    }

    /// Give the readers up to `grace` to deliver what is already in the pipes, then stop
    /// forwarding. Returns the truncation flags (stdout, stderr).
    fn close(&self, grace: Duration) -> [bool; 2] {
        let end = Instant::now() + grace;
        let mut st = lock(&self.state);
        while st.open_readers > 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            st = wait_timeout(&self.done, st, end - now);
        }
        st.closed = true;
        st.truncated
    }
}

/// The only place that waits for children. As PID 1 the shim inherits every orphan in the
/// container, so it must reap with `waitpid(-1)`; std's `Child::wait` would race with that,
/// so tasks get their status from here instead.
#[derive(Default)]
struct Reaper {
    children: Mutex<Children>,
    changed: Condvar,
}

#[derive(Default)]
struct Children {
    /// Bumped by every spawn; wakes the reaper when it had no children.
    spawned: u64,
    /// Pids whose status someone will ask for; other statuses (orphans) are dropped.
    watched: HashSet<i32>,
    exited: HashMap<i32, ExitStatus>,
}

impl Reaper {
    fn run(&self) {
        loop {
            let seen = lock(&self.children).spawned;
            match sys::wait_for_exited_child() {
                Ok(()) => {
                    let mut children = lock(&self.children);
                    while let Some((pid, status)) = sys::reap_any() {
                        if children.watched.remove(&pid) {
                            children.exited.insert(pid, status);
                        }
                    }
                    drop(children);
                    self.changed.notify_all();
                }
                Err(e) if e.raw_os_error() == Some(sys::ECHILD) => {
                    let mut children = lock(&self.children);
                    while children.spawned == seen {
                        children = wait(&self.changed, children);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("warmpool-shim: waitid: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Spawn with the children lock held. That lock keeps the reaper from reaping during the
    /// spawn (std itself waits for a child whose exec failed, and must find it), and the pid
    /// is watched before the reaper can see it exit.
    fn spawn(&self, cmd: &mut Command) -> io::Result<std::process::Child> {
        let mut children = lock(&self.children);
        let child = cmd.spawn()?;
        children.watched.insert(pid_of(&child));
        children.spawned += 1;
        drop(children);
        self.changed.notify_all();
        Ok(child)
    }

    fn forget(&self, pid: i32) {
        let mut children = lock(&self.children);
        children.watched.remove(&pid);
        children.exited.remove(&pid);
    }

    /// Block until `pid` has exited; `expired` runs once if `deadline` passes first.
    fn wait(
        &self,
        pid: i32,
        mut deadline: Option<Instant>,
        mut expired: impl FnMut(),
    ) -> ExitStatus {
        let mut children = lock(&self.children);
        loop {
            if let Some(status) = children.exited.remove(&pid) {
                return status;
            }
            children = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        expired();
                        deadline = None;
                        continue;
                    }
                    wait_timeout(&self.changed, children, d - now)
                }
                None => wait(&self.changed, children),
            };
        }
    }
}

/// The Exit of a task that was never started.
fn not_started(id: u64, spawn_error: String, reset_error: Option<String>) -> Exit {
    Exit {
        id,
        code: None,
        signal: None,
        timed_out: false,
        stdout_truncated: false,
        stderr_truncated: false,
        spawn_error: Some(spawn_error),
        reset_error,
    }
}

/// Delete the contents of each directory in `paths`, best effort. Symlinks are removed, never
/// followed (`remove_dir_all` does not follow them either). Returns what could not be removed.
fn wipe(paths: &[Vec<u8>]) -> Option<String> {
    const SHOWN: usize = 10;
    let mut problems = Vec::new();
    for path in paths {
        wipe_dir(Path::new(OsStr::from_bytes(path)), &mut problems);
    }
    if problems.len() > SHOWN {
        let more = problems.len() - SHOWN;
        problems.truncate(SHOWN);
        problems.push(format!("and {more} more"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
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

/// The few libc calls std does not wrap. Values are those of Linux `x86_64` with glibc (the one
/// target this is built for).
mod sys {
    use std::io;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    pub const ECHILD: i32 = 10;
    const SIGINT: i32 = 2;
    const SIGKILL: i32 = 9;
    const SIGTERM: i32 = 15;
    const SA_RESTART: i32 = 0x1000_0000;
    const O_CLOEXEC: i32 = 0o2_000_000;
    const O_NONBLOCK: i32 = 0o4000;
    const F_SETFL: i32 = 4;
    const P_ALL: u32 = 0;
    const WNOHANG: i32 = 1;
    const WEXITED: i32 = 4;
    const WNOWAIT: i32 = 0x0100_0000;
    /// Also children whose exit signal is not SIGCHLD: PID 1 must reap whatever it inherits.
    const WALL: i32 = 0x4000_0000;

    /// glibc's `sigset_t`: 1024 bits.
    #[repr(C)]
    struct SigSet([u64; 16]);
    /// glibc's `siginfo_t`: 128 bytes; its contents are not needed here.
    #[repr(C)]
    struct SigInfo([u64; 16]);
    /// glibc's `struct sigaction` on x86_64 (152 bytes; `sigaction()` fills in the restorer).
    #[repr(C)]
    struct SigAction {
        handler: usize,
        mask: SigSet,
        flags: i32,
        restorer: usize,
    }

    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
        fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
        fn waitid(idtype: u32, id: u32, info: *mut SigInfo, options: i32) -> i32;
        fn sigemptyset(set: *mut SigSet) -> i32;
        fn sigaction(sig: i32, act: *const SigAction, old: *mut SigAction) -> i32;
        fn pipe2(fds: *mut i32, flags: i32) -> i32;
        fn fcntl(fd: i32, cmd: i32, arg: i32) -> i32;
        fn read(fd: i32, buf: *mut u8, count: usize) -> isize;
        fn write(fd: i32, buf: *const u8, count: usize) -> isize;
        fn __errno_location() -> *mut i32;
    }

    /// SIGKILL a whole process group: the task and everything it started that did not leave
    /// the group.
    pub fn kill_group(pgid: i32) {
        // Never 0 (our own group) or 1 (kill(-1) means every process we may signal).
        if pgid > 1 {
            // SAFETY: kill takes plain integers and touches no memory of ours. ESRCH (the
            // group is already gone) is the expected, harmless failure.
            unsafe { kill(-pgid, SIGKILL) };
        }
    }

    /// Block until some child has exited, without reaping it (so that a spawn in progress
    /// can still reap its own failed child). Err(ECHILD) when there is no child at all.
    pub fn wait_for_exited_child() -> io::Result<()> {
        let mut info = SigInfo([0; 16]);
        // SAFETY: `info` is a properly sized, writable siginfo_t that outlives the call.
        let r = unsafe { waitid(P_ALL, 0, &raw mut info, WEXITED | WNOWAIT | WALL) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Reap one exited child if there is one.
    pub fn reap_any() -> Option<(i32, ExitStatus)> {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int for the duration of the call.
        let pid = unsafe { waitpid(-1, &raw mut status, WNOHANG | WALL) };
        (pid > 0).then(|| (pid, ExitStatus::from_raw(status)))
    }

    /// The write end of the pipe the signal handler writes to, and its read end.
    static SIGNAL_WRITE: AtomicI32 = AtomicI32::new(-1);
    static SIGNAL_READ: AtomicI32 = AtomicI32::new(-1);

    /// Writes the signal's number to the pipe: nothing else, since only async-signal-safe
    /// calls may be made here. The write end is non-blocking (a full pipe drops the byte; one
    /// is enough), and errno is put back for the code the signal interrupted.
    extern "C" fn on_shutdown_signal(sig: i32) {
        // SAFETY: errno is this thread's own; write() is async-signal-safe and reads one byte
        // that outlives the call.
        unsafe {
            let errno = __errno_location();
            let saved = *errno;
            let byte = sig as u8;
            write(SIGNAL_WRITE.load(Ordering::Relaxed), &raw const byte, 1);
            *errno = saved;
        }
    }

    /// Catch SIGTERM and SIGINT with [`on_shutdown_signal`] (the self-pipe trick), so that
    /// [`wait_shutdown_signal`] can take them on a thread of its own. A caught signal is
    /// delivered even to PID 1, which the kernel spares signals left at their default action.
    /// Nothing is blocked, so the tasks' signal mask stays empty; exec (and posix_spawn,
    /// before it runs anything in the child) resets caught signals to their default action.
    /// `SA_RESTART` keeps the other threads' blocking calls going.
    pub fn catch_shutdown_signals() -> io::Result<()> {
        let mut fds = [-1i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl on a descriptor we own, with an integer argument.
        if unsafe { fcntl(fds[1], F_SETFL, O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        SIGNAL_READ.store(fds[0], Ordering::Relaxed);
        SIGNAL_WRITE.store(fds[1], Ordering::Relaxed);
        let mut action = SigAction {
            handler: on_shutdown_signal as extern "C" fn(i32) as usize,
            mask: SigSet([0; 16]),
            flags: SA_RESTART,
            restorer: 0,
        };
        // SAFETY: `action` is a valid struct sigaction for the duration of the calls, its
        // handler an `extern "C" fn(i32)`; a null old-action pointer is allowed.
        unsafe {
            sigemptyset(&raw mut action.mask);
            for sig in [SIGTERM, SIGINT] {
                if sigaction(sig, &raw const action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Block until SIGTERM or SIGINT arrives; returns its number.
    pub fn wait_shutdown_signal() -> i32 {
        let fd = SIGNAL_READ.load(Ordering::Relaxed);
        loop {
            let mut byte = 0u8;
            // SAFETY: reads at most one byte into `byte`, which outlives the call.
            let n = unsafe { read(fd, &raw mut byte, 1) };
            if n == 1 {
                return i32::from(byte);
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // We hold the write end, so neither EOF nor an error can happen; do not spin.
            eprintln!("warmpool-shim: reading the signal pipe: {e}");
            loop {
                std::thread::park();
            }
        }
    }
}
