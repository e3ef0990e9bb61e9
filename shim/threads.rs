//! Threads and their locks: the lock helpers every file uses, and the pool of reused worker
//! threads that run each task's helpers.

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

// With panic=abort a poisoned mutex cannot be observed, so these helpers just look through it.

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

pub fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(f)
        .map(drop)
}

/// Threads kept for reuse. Every task needs a helper thread or two, and starting them
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
