//! The acquire path: a task takes an idle member or queues for one (FIFO, up to
//! `acquire_timeout`), and a member that becomes available is handed to the first waiter
//! or parked idle.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::OnExhausted;
use crate::metrics::{Acquisition, RemoveReason};

use super::lease::Home;
use super::state::{MemberState, State, Waiter};
use super::{AcquireError, Lease, Pool, Wake};

impl Pool {
    /// Takes an idle container, or queues for one up to `acquire_timeout`.
    ///
    /// Errors: the queue is full, `on_exhausted = "fail"` at max, no container within
    /// `acquire_timeout` (with the last start error as a hint), the pool is failed and has
    /// no idle container (at once, or while queued when it becomes failed), or it is closed.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let cfg = self.config();
        let started = Instant::now();
        let (waiter_id, mut rx) = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(AcquireError::Closed(self.name.clone()));
            }
            if let Some(lease) = self.take_idle(&mut st) {
                self.acquired(Acquisition::Warm, started);
                self.publish(&st);
                drop(st);
                if cfg.spare > 0 || cfg.predictive {
                    // One spare fewer: let the loop top it up now, not at its next tick.
                    self.wake(Wake::Taken);
                }
                return Ok(lease);
            }
            // A failed pool starts nothing a task could wait for: say so at once.
            if let Some(failure) = &st.failure {
                return Err(AcquireError::Failed {
                    pool: self.name.clone(),
                    failure: failure.clone(),
                });
            }
            let c = st.counts();
            let at_max = c.live() >= cfg.max && st.waiters.len() >= c.starting;
            if cfg.on_exhausted == OnExhausted::Fail && at_max {
                return Err(AcquireError::Exhausted {
                    pool: self.name.clone(),
                    max: cfg.max,
                });
            }
            if st.waiters.len() >= cfg.max_queue {
                return Err(AcquireError::QueueFull {
                    pool: self.name.clone(),
                    queued: st.waiters.len(),
                });
            }
            // Only for a task that will wait for it: a refused one must not start a container.
            if cfg.on_exhausted == OnExhausted::Cold && at_max {
                st.starting += 1;
                self.spawn_start(true);
            }
            let (tx, rx) = oneshot::channel();
            st.next_id += 1;
            let id = st.next_id;
            st.waiters.push_back(Waiter { id, tx });
            self.publish(&st);
            (id, rx)
        };
        // Demand: let the reconcile loop grow the pool now rather than at its next tick.
        self.wake(Wake::Queued);
        let waited = tokio::time::timeout(cfg.acquire_timeout, &mut rx).await;
        let lease = match waited {
            Ok(Ok(lease)) => lease,
            // The queue was dropped: the pool became failed, or closed.
            Ok(Err(_)) => {
                return Err(match self.failure() {
                    Some(failure) => AcquireError::Failed {
                        pool: self.name.clone(),
                        failure,
                    },
                    None => AcquireError::Closed(self.name.clone()),
                })
            }
            Err(_) => {
                let mut st = self.state.lock();
                let before = st.waiters.len();
                st.waiters.retain(|w| w.id != waiter_id);
                if st.waiters.len() == before {
                    // Handed a container in the same instant: it is in the channel, use it.
                    drop(st);
                    match rx.try_recv() {
                        Ok(lease) => lease,
                        Err(_) => return Err(AcquireError::Closed(self.name.clone())),
                    }
                } else {
                    self.publish(&st);
                    let hint = st
                        .last_start_error
                        .as_ref()
                        .map(|e| format!("; the last container start failed: {e}"))
                        .unwrap_or_default();
                    return Err(AcquireError::Timeout {
                        pool: self.name.clone(),
                        timeout: cfg.acquire_timeout,
                        hint,
                    });
                }
            }
        };
        // Cold only when the container was started while this task waited; one that
        // another task (or a workdir reset, or a health probe) handed back is warm.
        let how = if lease.cold {
            Acquisition::Cold
        } else {
            Acquisition::Warm
        };
        self.acquired(how, started);
        Ok(lease)
    }

    fn acquired(&self, kind: Acquisition, started: Instant) {
        self.metrics
            .acquired(&self.name, kind, started.elapsed().as_secs_f64());
    }

    /// Claims an idle member in the caller's critical section: the most recently used one
    /// that may serve ([`state::Member::servable`]). Dead ones found on the way are retired;
    /// ones that failed a probe or are of a replaced spec stay idle until the loop replaces
    /// them, surge first, but no task starts on them.
    ///
    /// [`state::Member::servable`]: super::state::Member::servable
    fn take_idle(&self, st: &mut State) -> Option<Lease> {
        let spec_hash = self.spec_hash();
        let mut i = st.idle.len();
        while i > 0 {
            i -= 1;
            let id = st.idle[i];
            let (idle, dead, servable) = match st.members.get(&id) {
                Some(m) => (
                    m.state == MemberState::Idle,
                    m.conn.is_dead(),
                    m.servable(&spec_hash),
                ),
                None => (false, false, false),
            };
            if !idle {
                st.idle.remove(i);
                continue;
            }
            if dead {
                // Found dead on the way out: replace it (the loop starts the replacement).
                st.idle.remove(i);
                self.retire_locked(st, id, RemoveReason::Unhealthy);
                self.wake(Wake::Retired);
                continue;
            }
            if !servable {
                continue;
            }
            st.idle.remove(i);
            let m = st.members.get_mut(&id).expect("member present");
            m.state = MemberState::Busy;
            return Some(self.lease(id, st));
        }
        None
    }

    fn lease(&self, id: u64, st: &State) -> Lease {
        let m = &st.members[&id];
        let home: Arc<dyn Home> = self.me();
        Lease::new(home, id, m.container.clone(), m.conn.clone(), m.dirty)
    }

    /// A member became available: hand it to the first waiter still waiting, else idle it.
    /// `fresh` says it was just started, so a waiter that gets it had a cold start.
    /// The one way into idle: a member that may not serve ([`state::Member::servable`]: a
    /// start or probe that began before a reload, a failed probe) is parked idle for the
    /// loop to replace, never handed to a waiter.
    ///
    /// [`state::Member::servable`]: super::state::Member::servable
    pub(super) fn offer(&self, st: &mut State, id: u64, fresh: bool) {
        let spec_hash = self.spec_hash();
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if !m.servable(&spec_hash) {
            m.state = MemberState::Idle;
            st.idle.insert(0, id);
            self.wake(Wake::Retired);
            return;
        }
        m.state = MemberState::Busy;
        while let Some(w) = st.waiters.pop_front() {
            let mut lease = self.lease(id, st);
            lease.cold = fresh;
            match w.tx.send(lease) {
                Ok(()) => return,
                // That waiter gave up; its lease must not run Drop under our lock.
                Err(mut lease) => lease.disarm(),
            }
        }
        let m = st.members.get_mut(&id).expect("member present");
        m.state = MemberState::Idle;
        st.idle.push(id);
    }
}
