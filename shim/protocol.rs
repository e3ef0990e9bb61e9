//! The protocol loop: reads the daemon's requests, dispatches them, and writes events back.
//! Nothing here waits on a task; tasks run on worker threads (see `task.rs`).

use crate::output::{Output, CHUNK};
use crate::shim_proto::{Event, Exit, Request, Spawn};
use crate::sys::{self, die};
use crate::task::{not_started, Reaper, Runner, Started};
use crate::threads::{lock, wait, Workers};
use crate::wipe;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::{Condvar, Mutex, MutexGuard};

pub struct Shim {
    pub out: Output,
    pub reaper: Reaper,
    /// Runs the per-task helpers (supervisor, stdin writer) and resets.
    pub workers: Workers,
    /// What the shim is doing; Spawn and Reset are refused unless Idle.
    pub busy: Mutex<Busy>,
    /// Signalled whenever `busy` returns to Idle.
    pub idle: Condvar,
    /// The container's working directory: tasks with an empty or relative workdir start from it.
    pub start_dir: std::path::PathBuf,
}

#[derive(Clone, Copy)]
pub enum Busy {
    Idle,
    Task { id: u64, pgid: i32 },
    Resetting,
}

impl Shim {
    /// Attached: read and dispatch requests until end of stdin, which means the daemon is
    /// gone for good; let the running task finish and exit.
    pub fn serve(&'static self, input: File) -> ! {
        self.serve_stream(input);
        // Idle is set in the same critical section that sends the final Exit/ResetDone, so
        // once we see it nothing is left to say.
        let mut busy = lock(&self.busy);
        while !matches!(*busy, Busy::Idle) {
            busy = wait(&self.idle, busy);
        }
        std::process::exit(0)
    }

    /// Direct: serve one daemon connection at a time, for the container's whole life. A
    /// connection's end is not the daemon's for good (a restarted daemon adopts the container
    /// by connecting again), so the running task goes on and the shim waits for the next.
    pub fn serve_socket(&'static self, listener: UnixListener) -> ! {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => self.stop(1, &format!("cannot accept on the socket: {e}")),
            };
            // Only the daemon, outside the container: a process of the container (a task,
            // same user) sees the socket too, but its pid in our namespace is not 0.
            if sys::my_pid() == 1 && sys::peer_pid(stream.as_fd()) != Some(0) {
                eprintln!("warmpool-shim: refused a connection from inside the container");
                continue;
            }
            let reader = match stream.try_clone() {
                Ok(r) => File::from(std::os::fd::OwnedFd::from(r)),
                Err(e) => {
                    eprintln!("warmpool-shim: cannot use a connection: {e}");
                    continue;
                }
            };
            self.out
                .connect(File::from(std::os::fd::OwnedFd::from(stream)));
            self.serve_stream(reader);
            self.out.disconnect();
        }
    }

    /// Read and dispatch requests until end of input. Nothing here waits on a task.
    fn serve_stream(&'static self, mut input: File) {
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
                        eprintln!("warmpool-shim: reading requests: {e}");
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
                        // The group is the task's main pid (`process_group(0)`).
                        sys::kill_task(pgid);
                    }
                }
            }
            Request::Reset { paths } => self.start_reset(paths),
        }
    }

    /// The one way a task or reset ends: back to Idle and its last event (Exit or ResetDone)
    /// sent in the same critical section, so that whoever sees Idle knows nothing is left to
    /// say, then the waiters for Idle are woken.
    pub fn finish(&self, mut busy: MutexGuard<'_, Busy>, last: &Event) {
        *busy = Busy::Idle;
        self.out.send(last);
        drop(busy);
        self.idle.notify_all();
    }

    /// Like [`Shim::finish`], but the container is not fit for another task (something of the
    /// last one could not be ended): send the last event, then exit with `busy` still held so
    /// that nothing else starts. The daemon sees the shim gone and replaces the container; the
    /// kernel ends what is left in the pid namespace when its init exits.
    pub fn give_up(&self, last: &Event, why: &str) -> ! {
        let _busy = lock(&self.busy);
        self.out.send(last);
        die(
            4,
            &format!("{why}; exiting so that the container is replaced"),
        )
    }

    /// Start a task (see [`Runner::launch`]); its end is reported through [`Shim::finish`],
    /// or [`Shim::give_up`] when something it left could not be ended.
    fn launch(&'static self, spawn: Spawn, here: bool) -> Result<Started, String> {
        let runner = Runner {
            reaper: &self.reaper,
            workers: &self.workers,
            out: &self.out,
        };
        runner.launch(
            spawn,
            &self.start_dir,
            here,
            move |(exit, swept)| match swept {
                Ok(()) => self.finish(lock(&self.busy), &Event::Exit(exit)),
                Err(why) => self.give_up(&Event::Exit(exit), &why),
            },
        )
    }

    fn start_task(&'static self, spawn: Spawn) {
        let id = spawn.id;
        let mut busy = lock(&self.busy);
        if !matches!(*busy, Busy::Idle) {
            // Not ours to end: the running task's Exit comes from its own supervisor.
            self.out
                .send(&Event::Exit(not_started(id, "busy".into(), None)));
            return;
        }
        if spawn.reset.is_empty() {
            let exit = match self.launch(spawn, false) {
                Ok(started) => {
                    *busy = Busy::Task {
                        id,
                        pgid: started.pid,
                    };
                    return;
                }
                Err(e) => not_started(id, e, None),
            };
            return self.finish(busy, &Event::Exit(exit));
        }
        // Wipe the previous task's files first. From a thread, like a Reset, so that pings are
        // still answered while a big tree is deleted; the task starts from there.
        *busy = Busy::Resetting;
        drop(busy);
        if let Err(e) = self.workers.run(move || self.reset_then_launch(spawn)) {
            let exit = not_started(
                id,
                "not started: the workdir was not wiped".into(),
                Some(format!("cannot start the reset thread: {e}")),
            );
            self.finish(lock(&self.busy), &Event::Exit(exit));
        }
    }

    /// The worker's half of a Spawn with `reset`: wipe, then start the task and supervise it
    /// on this same worker (no hand-off to another), or report why not.
    fn reset_then_launch(&'static self, mut spawn: Spawn) {
        let id = spawn.id;
        let error = wipe::wipe(&std::mem::take(&mut spawn.reset));
        let mut busy = lock(&self.busy);
        let exit: Exit = match error {
            Some(error) => not_started(
                id,
                "not started: the workdir was not wiped".into(),
                Some(error),
            ),
            None => match self.launch(spawn, true) {
                Ok(started) => {
                    *busy = Busy::Task {
                        id,
                        pgid: started.pid,
                    };
                    drop(busy);
                    if let Some(supervise) = started.supervisor {
                        supervise();
                    }
                    return;
                }
                Err(e) => not_started(id, e, None),
            },
        };
        self.finish(busy, &Event::Exit(exit));
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
            let error = wipe::wipe(&paths);
            self.finish(lock(&self.busy), &Event::ResetDone { error });
        };
        if let Err(e) = self.workers.run(job) {
            let error = Some(format!("cannot start the reset thread: {e}"));
            self.finish(lock(&self.busy), &Event::ResetDone { error });
        }
    }

    /// SIGTERM (docker stop) or SIGINT: PID 1 gets no default action for them, so without
    /// this docker would wait its whole stop timeout and then SIGKILL.
    pub fn on_shutdown_signal(&self) {
        let sig = sys::wait_shutdown_signal();
        self.stop(0, &format!("signal {sig}, stopping"));
    }

    /// Kill the running task's group and exit with `code`. Never blocks: if `busy` is held
    /// (say, by a write to a daemon that stopped reading), exiting is enough, since the kernel
    /// kills every process of a pid namespace whose init exits.
    pub fn stop(&self, code: i32, msg: &str) -> ! {
        if let Ok(busy) = self.busy.try_lock() {
            if let Busy::Task { pgid, .. } = *busy {
                sys::kill_group(pgid);
            }
        }
        die(code, msg)
    }
}
