//! The lease: one task's exclusive claim on one container, which puts the container back or
//! retires it when dropped, on every path, cancellation included.
//!
//! The lease knows its pool only as a [`Home`] (deadpool's Object knows its Manager the same
//! way), so this file and the pool's do not import each other.

use std::sync::Arc;

use crate::exec::Conn;
use crate::metrics::RemoveReason;

/// Where a lease's container goes back to: the pool.
pub(super) trait Home: Send + Sync {
    /// The pool's name, for logs.
    fn home_name(&self) -> &str;
    /// The lease ended. `used`: a task began on it; `dirty`: its workdir holds a task's
    /// files; `retire`: the lease's verdict when it must not serve again.
    fn give_back(
        self: Arc<Self>,
        member: u64,
        used: bool,
        dirty: bool,
        retire: Option<RemoveReason>,
    );
    /// The container leaves the pool for good without being removed (a session takes it).
    fn take_out(self: Arc<Self>, member: u64);
}

/// A task's exclusive claim on one container. Dropped without a verdict after its task
/// began (the request was cancelled, the handler panicked), it retires the container: the
/// task may still be running in there.
pub struct Lease {
    home: Arc<dyn Home>,
    member: u64,
    /// The container's id.
    pub container: String,
    /// The channel to run the task on.
    pub conn: Conn,
    /// The task waited for a container that was started while it waited (no running one
    /// was free). Waiting for a busy container to free up is not a cold start.
    pub cold: bool,
    /// The previous task's files are still in the workdir and /tmp: wipe before use.
    pub dirty: bool,
    task_started: bool,
    outcome: Option<RemoveReason>,
    armed: bool,
}

impl Lease {
    pub(super) fn new(
        home: Arc<dyn Home>,
        member: u64,
        container: String,
        conn: Conn,
        dirty: bool,
    ) -> Lease {
        Lease {
            home,
            member,
            container,
            conn,
            cold: false,
            dirty,
            task_started: false,
            outcome: None,
            armed: true,
        }
    }

    /// Makes dropping this lease do nothing: for a lease that never reached a task (its
    /// waiter gave up), dropped while the pool's lock is held.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// From here on, dropping the lease without [`Lease::finish`] retires the container.
    pub fn begin(&mut self) {
        self.task_started = true;
        self.outcome = Some(RemoveReason::Unhealthy);
    }

    /// The task ended cleanly: the container may serve again.
    pub fn finish(mut self) {
        self.outcome = None;
    }

    /// The container must not serve again (timed out, broken channel).
    pub fn retire(mut self, reason: RemoveReason) {
        self.outcome = Some(reason);
    }

    /// The container leaves the pool for good without being removed (a session takes it);
    /// returns its id and channel.
    pub fn detach(mut self) -> (String, Conn) {
        self.armed = false;
        self.home.clone().take_out(self.member);
        (self.container.clone(), self.conn.clone())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.home.home_name())
            .field("container", &self.container)
            .field("cold", &self.cold)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.home.clone().give_back(
                self.member,
                self.task_started,
                self.dirty,
                self.outcome.take(),
            );
        }
    }
}
