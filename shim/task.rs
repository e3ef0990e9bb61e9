//! Process supervision: starting a task in its own process group, forwarding its output,
//! waiting for it through the one reaper, enforcing its timeout, and reporting how it ended.
//!
//! This file knows nothing of the request loop (`protocol.rs`): it is handed what a task
//! needs ([`Runner`]) and says how the task ended through a callback, so the dependency runs
//! one way, protocol → task.

use crate::output::{Output, CHUNK};
use crate::shim_proto::{Event, Exit, Spawn};
use crate::sweep;
use crate::sys::{self, pid_of};
use crate::threads::{lock, wait, wait_timeout, Workers};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long output already in the pipes may still be delivered after the main process exited.
const GRACE: Duration = Duration::from_millis(50);

/// What running a task takes from the shim: the one reaper, the worker threads, and the
/// stream its output and Exit go to. All live as long as the shim does.
#[derive(Clone, Copy)]
pub struct Runner {
    pub reaper: &'static Reaper,
    pub workers: &'static Workers,
    pub out: &'static Output,
}

/// How a started task ended, handed to the `ended` callback of [`Runner::launch`] on the
/// supervisor's thread: its Exit, and whether everything it left running could be ended
/// (`Err` says what could not, and the container is then unfit for another task).
pub type Ended = (Exit, Result<(), String>);

impl Runner {
    /// Start the task and its helper threads; returns its pid, which is also its process
    /// group id. `start_dir` is where an empty or relative workdir starts from. `ended` runs
    /// once, when the task is over (never if this returns `Err`). The caller holds `busy`, so
    /// the supervisor cannot report Idle before the task is recorded as running.
    pub fn launch(
        self,
        spawn: Spawn,
        start_dir: &Path,
        ended: impl FnOnce(Ended) + Send + 'static,
    ) -> Result<i32, String> {
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
        // The kernel takes C strings: say which argument cannot be passed, rather than std's
        // "nul byte found in provided data".
        if let Some(i) = argv.iter().position(|a| a.contains(&0)) {
            return Err(format!(
                "not started: argument {i} ({:?}) contains a NUL byte, which no program can \
                 receive (a path cannot contain one either)",
                String::from_utf8_lossy(&argv[i])
            ));
        }
        let mut cmd = Command::new(OsStr::from_bytes(program));
        cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
        for (key, value) in &env {
            if value.contains(&0) {
                return Err(format!(
                    "not started: the value of the environment variable {:?} contains a NUL byte",
                    String::from_utf8_lossy(key)
                ));
            }
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
        let dir = start_dir.join(OsStr::from_bytes(&workdir));
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
        if let Err(e) = self.workers.run(move || {
            ended(self.supervise(id, pid, deadline, &supervised));
        }) {
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
                .run(move || reader.pump(self.out, stream, &mut pipe))
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
    /// say how it ended.
    fn supervise(self, id: u64, pid: i32, deadline: Option<Instant>, output: &TaskOutput) -> Ended {
        let mut timed_out = false;
        let status = self.reaper.wait(pid, deadline, || {
            timed_out = true;
            sys::kill_group(pid);
        });
        // Whatever the task left running goes with it: its group at once, then every other
        // process of the container (a loop that left the group must not spy on the next
        // task). Before the output is closed, so that the pipes they held reach EOF.
        sys::kill_group(pid);
        let swept = sweep::end_all(
            sweep::Scope::for_pid(sys::my_pid()),
            Instant::now() + sweep::DEADLINE,
        );
        let [stdout_truncated, stderr_truncated] = output.close(GRACE);
        let exit = Exit {
            id,
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout_truncated,
            stderr_truncated,
            spawn_error: None,
            reset_error: None,
        };
        let swept = swept
            .map_err(|left| format!("task {id} left processes that could not be ended: {left}"));
        (exit, swept)
    }
}

/// One task's output forwarding state, shared by its two readers and its supervisor.
pub struct TaskOutput {
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
pub struct Reaper {
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
    pub fn run(&self) {
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
pub fn not_started(id: u64, spawn_error: String, reset_error: Option<String>) -> Exit {
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
