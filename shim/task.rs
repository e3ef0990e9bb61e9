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
use crate::threads::{lock, wait, Workers};
use crate::{dirs, resolve};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex};
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

/// A task [`Runner::launch`] started.
pub struct Started {
    /// Its pid, also its process group id.
    pub pid: i32,
    /// Its supervisor when launched `here`: to be run by the caller, on its own thread.
    pub supervisor: Option<Box<dyn FnOnce() + Send>>,
}

impl Runner {
    /// Start the task and its helper threads; returns its pid, which is also its process
    /// group id. `start_dir` is where an empty or relative workdir starts from. `ended` runs
    /// once, when the task is over (never if this returns `Err`). The caller holds `busy`, so
    /// the supervisor cannot report Idle before the task is recorded as running.
    ///
    /// With `here`, the supervisor is not handed to a worker but returned, for the caller to
    /// run on its own thread once it has recorded the task (a caller that is a worker already
    /// saves a hand-off).
    pub fn launch(
        self,
        spawn: Spawn,
        start_dir: &Path,
        here: bool,
        ended: impl FnOnce(Ended) + Send + 'static,
    ) -> Result<Started, String> {
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
        }
        // A name found once for good (`resolve.rs`) is run by its path, with the name as
        // argv[0] as a search would pass it; a task that sets its own PATH is searched.
        let sets_path = env.iter().any(|(key, _)| key == b"PATH");
        let found = resolve::own_path()
            .filter(|_| !sets_path)
            .and_then(|path| resolve::FOUND.lookup(program, path));
        let command = |path: Option<&OsStr>| {
            let mut cmd = Command::new(path.unwrap_or(OsStr::from_bytes(program)));
            cmd.arg0(OsStr::from_bytes(program))
                .args(args.iter().map(|a| OsStr::from_bytes(a)))
                .envs(
                    env.iter()
                        .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))),
                )
                // No `pre_exec` hook: with one std must fork, without it std uses vfork-based
                // posix_spawn (about 0.3 ms a task less). The task inherits our signal mask,
                // which is empty, and gets default dispositions for the signals we catch (exec
                // resets them; posix_spawn resets them before it runs anything in the child).
                // Its own group, so that a timeout or Kill reaches its children too.
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd
        };
        // The shim moves into the workdir itself rather than through `current_dir`: for a
        // static binary std can only do the latter with fork, while without it std uses
        // vfork-based posix_spawn, about 0.3 ms faster here. Nothing else in the shim uses the
        // cwd, and spawns never overlap: each happens with `busy` held.
        let dir = start_dir.join(OsStr::from_bytes(&workdir));
        // A kept workdir (the pool's, see `dirs.rs`) exists and needs no walk of its path.
        match dirs::KEPT.kept(dir.as_os_str().as_bytes()) {
            Some(fd) => sys::chdir_fd(fd),
            None => fs::create_dir_all(&dir).and_then(|()| std::env::set_current_dir(&dir)),
        }
        .map_err(|e| format!("cannot use workdir {}: {e}", dir.display()))?;
        let spawned = match found.as_deref() {
            Some(path) => match self.reaper.spawn(&mut command(Some(path))) {
                // What a search goes on from (a script whose interpreter is missing: ENOENT;
                // EACCES): search as posix_spawnp would, from the first entry.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                    ) =>
                {
                    self.reaper.spawn(&mut command(None))
                }
                spawned => spawned,
            },
            None => self.reaper.spawn(&mut command(None)),
        };
        let (mut child, pidfd) = spawned
            .map_err(|e| format!("cannot run {:?}: {e}", String::from_utf8_lossy(program)))?;
        let pid = pid_of(&child);
        let child_in = child.stdin.take();
        // As plain files, so that one loop serves both streams.
        let pipes = [
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
        ];
        // `child` is dropped without waiting: the reaper owns all waiting.

        let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        let forward = Forward {
            id,
            max: if max_output == 0 {
                u64::MAX
            } else {
                max_output
            },
            sent: [0; 2],
            truncated: [false; 2],
            buf: vec![0; CHUNK],
        };
        // One thread per task waits for its exit and forwards both streams (poll on a pidfd
        // and the pipes): a thread per stream and a hand-off from the reaper cost a wake-up
        // each, which is most of what the shim adds to a short task on a small machine.
        let supervisor = move || ended(self.supervise(pid, pidfd, pipes, deadline, forward));
        let supervisor: Option<Box<dyn FnOnce() + Send>> = if here {
            Some(Box::new(supervisor))
        } else if let Err(e) = self.workers.run(supervisor) {
            sys::kill_group(pid);
            self.reaper.forget(pid);
            return Err(format!("cannot start a thread for the task: {e}"));
        } else {
            None
        };
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
        Ok(Started { pid, supervisor })
    }

    /// Forward the task's output until its main process, which alone decides when the task
    /// is over (a background child holding the pipes open must not keep it running), has
    /// exited; then clean up and say how it ended.
    fn supervise(
        self,
        pid: i32,
        mut pidfd: Option<OwnedFd>,
        mut pipes: [Option<File>; 2],
        mut deadline: Option<Instant>,
        mut fwd: Forward,
    ) -> Ended {
        let mut timed_out = false;
        // The reaper sleeps while the shim has no children, and a short task is reaped here
        // (see `Reaper::take`): it is woken only once the task has run for REAPER_LAG, to reap
        // the orphans a longer task leaves as it goes, and by the sweep.
        let reaper_due = Instant::now() + REAPER_LAG;
        let mut reaper_woken = false;
        let status = loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                timed_out = true;
                sys::kill_task(pid);
                deadline = None;
            }
            if !reaper_woken && (now >= reaper_due || pidfd.is_none()) {
                self.reaper.wake();
                reaper_woken = true;
            }
            let mut wait = deadline.map(|d| d - now);
            if pidfd.is_none() {
                // No pidfd (a kernel before 5.3): look at the reaper's news now and then.
                wait = Some(wait.map_or(NO_PIDFD_SLICE, |w| w.min(NO_PIDFD_SLICE)));
            }
            if !reaper_woken {
                let until_due = reaper_due.saturating_duration_since(now);
                wait = Some(wait.map_or(until_due, |w| w.min(until_due)));
            }
            let exited = fwd.pump(self.out, &mut pipes, pidfd.as_ref(), wait);
            if exited || pidfd.is_none() {
                if let Some(status) = self.reaper.take(pid) {
                    break status;
                }
                if exited {
                    // Readable but not reapable yet (a leader whose other threads are still
                    // exiting): fall back to asking the reaper in slices.
                    pidfd = None;
                }
            }
        };
        // Whatever the task left running goes with it: its group at once, then every other
        // process of the container (a loop that left the group must not spy on the next
        // task). Before the output is closed, so that the pipes they held reach EOF.
        sys::kill_group(pid);
        let swept = sweep::end_all(
            sweep::Scope::for_pid(sys::my_pid()),
            Instant::now() + sweep::DEADLINE,
            &|| self.reaper.wake(),
        );
        // Up to GRACE to deliver what is already in the pipes; later output is dropped, so
        // that Exit is the last event of the task.
        let end = Instant::now() + GRACE;
        while pipes.iter().any(Option::is_some) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            fwd.pump(self.out, &mut pipes, None, Some(end - now));
        }
        let exit = Exit {
            id: fwd.id,
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout_truncated: fwd.truncated[0],
            stderr_truncated: fwd.truncated[1],
            spawn_error: None,
            reset_error: None,
        };
        let swept = swept.map_err(|left| {
            format!(
                "task {} left processes that could not be ended: {left}",
                fwd.id
            )
        });
        (exit, swept)
    }
}

/// How long a task runs before the reaper is woken to reap its orphans as they die.
const REAPER_LAG: Duration = Duration::from_millis(10);

/// How often the supervisor asks the reaper about the task when it has no pidfd to wait on.
const NO_PIDFD_SLICE: Duration = Duration::from_millis(5);

/// One task's output forwarding state.
struct Forward {
    id: u64,
    /// Bytes forwarded per stream at most.
    max: u64,
    sent: [u64; 2],
    truncated: [bool; 2],
    buf: Vec<u8>,
}

impl Forward {
    /// Wait up to `wait` (`None`: no limit) for output on the open `pipes` (0 = stdout, 1 =
    /// stderr) or the exit of the process behind `pidfd`; forward what came, and close a pipe
    /// at its EOF. Past the cap, keep reading and drop: a blocked writer would never exit.
    /// Returns whether the pidfd is readable (the process has exited).
    fn pump(
        &mut self,
        out: &Output,
        pipes: &mut [Option<File>; 2],
        pidfd: Option<&OwnedFd>,
        wait: Option<Duration>,
    ) -> bool {
        use std::os::fd::AsRawFd;
        let entry = |fd: i32| sys::PollFd {
            fd,
            events: sys::POLLIN,
            revents: 0,
        };
        // -1 entries are ignored by poll: a closed pipe, or no pidfd.
        let raw = |f: Option<&File>| f.map_or(-1, AsRawFd::as_raw_fd);
        let mut fds = [
            entry(pidfd.map_or(-1, AsRawFd::as_raw_fd)),
            entry(raw(pipes[0].as_ref())),
            entry(raw(pipes[1].as_ref())),
        ];
        match sys::poll_fds(&mut fds, wait) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(e) => {
                eprintln!("warmpool-shim: poll: {e}");
                thread::sleep(Duration::from_millis(10));
                return false;
            }
        }
        for stream in 0..2 {
            if fds[stream + 1].revents == 0 {
                continue;
            }
            let Some(pipe) = pipes[stream].as_mut() else {
                continue;
            };
            // Ready: one read does not block (POLLHUP/POLLERR read as EOF or an error).
            let n = match pipe.read(&mut self.buf) {
                Ok(0) => {
                    pipes[stream] = None;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("warmpool-shim: reading task output: {e}");
                    pipes[stream] = None;
                    continue;
                }
            };
            let room = self.max - self.sent[stream];
            let take = n.min(usize::try_from(room).unwrap_or(usize::MAX));
            if take < n {
                self.truncated[stream] = true;
            }
            if take > 0 {
                self.sent[stream] += take as u64;
                let (id, data) = (self.id, self.buf[..take].to_vec());
                out.send(&if stream == 0 {
                    Event::Stdout { id, data }
                } else {
                    Event::Stderr { id, data }
                });
            }
        }
        fds[0].revents != 0
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
    /// Bumped by [`Reaper::wake`]; wakes the reaper when it had no children.
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
    ///
    /// Also returns a pidfd for the child, opened while the lock keeps it from being reaped,
    /// so that it cannot name another process.
    fn spawn(&self, cmd: &mut Command) -> io::Result<(std::process::Child, Option<OwnedFd>)> {
        let mut children = lock(&self.children);
        let child = cmd.spawn()?;
        let pid = pid_of(&child);
        let pidfd = sys::pidfd_open(pid);
        if pidfd.is_none() {
            // Said once: without pidfds (a kernel before 5.3, a seccomp profile that denies
            // pidfd_open) each task's end is noticed within 5 ms rather than at once.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!(
                    "warmpool-shim: pidfd_open failed ({}); a task's end is noticed within 5 ms instead of at once",
                    io::Error::last_os_error()
                );
            }
        }
        children.watched.insert(pid);
        // The reaper is not woken: the supervisor does it (see `Runner::supervise`).
        Ok((child, pidfd))
    }

    /// Have the reaper look for exited children again (it sleeps once it has none).
    pub fn wake(&self) {
        lock(&self.children).spawned += 1;
        self.changed.notify_all();
    }

    /// The exit status of `pid` if it has exited: from the reaper if it got there first,
    /// else reaped here (under the lock, so the two cannot both take it), which spares the
    /// supervisor a wake-up of the reaper thread and one of its own.
    fn take(&self, pid: i32) -> Option<ExitStatus> {
        let mut children = lock(&self.children);
        if let Some(status) = children.exited.remove(&pid) {
            return Some(status);
        }
        let status = sys::reap_pid(pid)?;
        children.watched.remove(&pid);
        Some(status)
    }

    fn forget(&self, pid: i32) {
        let mut children = lock(&self.children);
        children.watched.remove(&pid);
        children.exited.remove(&pid);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An Output writing to a pipe, and the pipe's read end to decode what was sent.
    fn output() -> (&'static Output, File) {
        let (r, w) = std::io::pipe().unwrap();
        let out = Box::leak(Box::new(Output {
            stream: Mutex::new(Some(File::from(OwnedFd::from(w)))),
            direct: true,
        }));
        (out, File::from(OwnedFd::from(r)))
    }

    fn forward(max: u64) -> Forward {
        Forward {
            id: 7,
            max,
            sent: [0; 2],
            truncated: [false; 2],
            buf: vec![0; CHUNK],
        }
    }

    #[test]
    fn output_is_forwarded_up_to_the_cap_and_the_pipes_close_at_eof() {
        let (out, mut sent) = output();
        let (r1, mut w1) = std::io::pipe().unwrap();
        let (r2, mut w2) = std::io::pipe().unwrap();
        let mut pipes = [
            Some(File::from(OwnedFd::from(r1))),
            Some(File::from(OwnedFd::from(r2))),
        ];
        w1.write_all(b"hello world").unwrap();
        w2.write_all(b"err").unwrap();
        drop((w1, w2));
        let mut fwd = forward(5);
        for _ in 0..10 {
            if pipes.iter().all(Option::is_none) {
                break;
            }
            assert!(!fwd.pump(out, &mut pipes, None, Some(Duration::from_secs(5))));
        }
        assert!(pipes.iter().all(Option::is_none), "both pipes reach EOF");
        assert_eq!(fwd.truncated, [true, false]);
        *lock(&out.stream) = None;
        let mut bytes = Vec::new();
        sent.read_to_end(&mut bytes).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while let Some((ev, n)) = Event::decode(&bytes[at..]).unwrap() {
            events.push(ev);
            at += n;
        }
        events.sort_by_key(|e| matches!(e, Event::Stderr { .. }));
        assert_eq!(
            events,
            [
                Event::Stdout {
                    id: 7,
                    data: b"hello".to_vec()
                },
                Event::Stderr {
                    id: 7,
                    data: b"err".to_vec()
                }
            ]
        );
    }

    #[test]
    fn the_pidfd_says_when_the_task_exited_and_its_status_is_taken_once() {
        let (out, _sent) = output();
        let child = Command::new("sh")
            .args(["-c", "sleep 0.2; exit 3"])
            .spawn()
            .unwrap();
        let pid = pid_of(&child);
        let pidfd = sys::pidfd_open(pid).expect("Linux 5.3 or later");
        let mut pipes = [None, None];
        let mut fwd = forward(u64::MAX);
        let short = Some(Duration::from_millis(10));
        assert!(
            !fwd.pump(out, &mut pipes, Some(&pidfd), short),
            "still running"
        );
        assert_eq!(sys::reap_pid(pid), None, "a running task is not reaped");
        assert!(fwd.pump(out, &mut pipes, Some(&pidfd), Some(Duration::from_secs(5))));
        assert_eq!(sys::reap_pid(pid).and_then(|s| s.code()), Some(3));
        assert_eq!(sys::reap_pid(pid), None, "reaped once");
    }
}
