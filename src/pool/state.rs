//! A pool's bookkeeping: its members, its queue, its counters, and the two rules that read
//! them: [`Member::retire_reason`] (when does a container stop serving) and [`plan`] (what
//! must start and what must go for the pool to reach its target).
//!
//! Nothing here locks, spawns or awaits: the pool calls these under its lock and carries the
//! outcome out (bb8's "decide under the lock, act outside it"), and the unit tests call them
//! on hand-built states, like `scaling::decide`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lease::Lease;
use crate::config::PoolConfig;
use crate::exec::Conn;
use crate::metrics::RemoveReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemberState {
    Idle,
    Busy,
    /// Taken out of rotation while its health probe runs.
    Probing,
}

/// A live container of the pool.
pub(super) struct Member {
    pub(super) container: String,
    pub(super) name: String,
    pub(super) conn: Conn,
    pub(super) state: MemberState,
    pub(super) created: Instant,
    pub(super) last_used: Instant,
    pub(super) uses: u64,
    /// `max_age` with this container's jitter, so a pool does not renew all at once.
    pub(super) max_age: Duration,
    pub(super) spec_hash: String,
    /// Started beyond `max` by `on_exhausted = "cold"`: retired after its one task.
    pub(super) extra: bool,
    /// A task ran since the workdir was last wiped; the next lease wipes it first.
    pub(super) dirty: bool,
    /// When it last proved healthy: a probe passed, or a task ended on it; for a member
    /// never probed, when it joined set back by its stagger (`add_member`).
    pub(super) last_checked: Instant,
    /// Its health probe failed: never handed out again, replaced surge first.
    pub(super) failed_probe: bool,
}

/// What a member is judged against: the pool's current spec and limits, at one instant.
pub(super) struct Rules<'a> {
    pub(super) spec_hash: &'a str,
    pub(super) max_uses: u64,
    pub(super) closed: bool,
    pub(super) now: Instant,
}

impl Member {
    /// Why this container must not take another task, if it must not: the one rule, used
    /// when a lease ends, when the reconcile loop looks, and nowhere else.
    ///
    /// A dead channel comes first: a container that failed is counted as failed whatever
    /// else is true of it. The others are renewals (docs/scaling.md, "Renewal").
    pub(super) fn retire_reason(&self, rules: &Rules<'_>) -> Option<RemoveReason> {
        if self.conn.is_dead() || self.failed_probe {
            Some(RemoveReason::Unhealthy)
        } else if self.extra {
            Some(RemoveReason::ScaleDown)
        } else if self.uses >= rules.max_uses {
            Some(RemoveReason::Uses)
        } else if rules.now.duration_since(self.created) >= self.max_age {
            Some(RemoveReason::Age)
        } else if *self.spec_hash != *rules.spec_hash {
            Some(RemoveReason::Reload)
        } else if rules.closed {
            Some(RemoveReason::Shutdown)
        } else {
            None
        }
    }
}

impl Member {
    /// Whether it may be handed to a task now: idle members that failed a probe or are of
    /// a spec a reload replaced stay in the pool until their replacements are up (surge
    /// first), but no task starts on them.
    pub(super) fn servable(&self, spec_hash: &str) -> bool {
        !self.conn.is_dead() && !self.failed_probe && *self.spec_hash == *spec_hash
    }
}

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) tx: oneshot::Sender<Lease>,
}

/// Counts at one instant, for the autoscaler, the API and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Ready and free.
    pub idle: usize,
    /// Running a task (or leased and about to).
    pub busy: usize,
    /// Being created and started, not yet ready.
    pub starting: usize,
    /// Idle containers taken out of rotation for a moment while their health probe runs.
    pub probing: usize,
    /// Being removed for age, uses, scale down, shutdown, ...
    pub retiring: usize,
    /// Being removed because they failed: a failed probe, a dead agent, a timed-out task.
    pub unhealthy: usize,
    /// Tasks waiting for a container.
    pub queued: usize,
    /// What the autoscaler wants, between `min` and `max`.
    pub target: usize,
    /// The pre-warm floor in force (`POST /v1/pools/{pool}/prewarm`), 0 for none.
    pub prewarm: usize,
    /// When that floor ends.
    pub prewarm_until: Option<Instant>,
    /// The engine refuses the pool's containers ([`Failure`]).
    pub failed: bool,
}

impl Counts {
    /// Containers that exist or are coming: what `min`/`max` bound.
    pub fn live(&self) -> usize {
        self.idle + self.busy + self.starting + self.probing
    }

    /// Containers that can take a task now (a probe takes about a millisecond).
    pub fn up(&self) -> usize {
        self.idle + self.busy + self.probing
    }

    /// The pool's utilization, 0 to 1: `(busy + queued) / live`, capped at 1, the one
    /// definition the autoscaler acts on and `/metrics` and the API show (see
    /// [`crate::scaling::utilization`] and docs/scaling.md).
    pub fn utilization(&self) -> f64 {
        crate::scaling::utilization(self.busy, self.queued, self.live())
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) members: HashMap<u64, Member>,
    /// Idle members, most recently used last: taking from the end keeps hot containers hot
    /// and lets the others age out under idle_timeout.
    pub(super) idle: Vec<u64>,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) starting: usize,
    pub(super) retiring: usize,
    /// Retiring for [`RemoveReason::Unhealthy`]: shown as unhealthy until removed.
    pub(super) retiring_unhealthy: usize,
    pub(super) target: usize,
    pub(super) next_id: u64,
    pub(super) closed: bool,
    /// The last container start failure, shown to tasks that time out waiting.
    pub(super) last_start_error: Option<String>,
    /// Consecutive start failures, for back-off.
    pub(super) start_failures: u32,
    pub(super) backoff_until: Option<Instant>,
    /// Names of containers being created, so the reaper leaves them alone.
    pub(super) creating: HashSet<String>,
    /// Ids of retired containers whose removal is in flight, for the same reason (and so that
    /// a removal is counted once, under its real reason, not again as an orphan).
    pub(super) removing: HashSet<String>,
    /// Containers this pool removed lately (ids, or names of failed starts), with when: the
    /// reaper may have listed one just before it went. It prunes what went before its listing.
    pub(super) gone: Vec<(String, Instant)>,
    /// A pre-warm floor and when it ends; cleared by the loop once past.
    pub(super) prewarm: Option<(usize, Instant)>,
    /// The engine refused the pool's last container start for good: the pool is failed.
    /// While set, `backoff_until` is when it tries one start again.
    pub(super) failure: Option<Failure>,
}

/// Why a pool is failed: the engine refused its last container start in a way that a
/// retry of the same start cannot get past (an option or a runtime it does not take), so
/// the pool starts one container per `health_check_interval` instead of backing off and
/// retrying (docs/operations.md, "A failed pool").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The engine's own words.
    pub reason: String,
    /// What to do about it.
    pub hint: String,
    /// When the pool became failed, on the wall clock.
    pub since: std::time::SystemTime,
    /// How often it tries one start again: the pool's `health_check_interval`.
    pub retry_every: Duration,
}

impl State {
    pub(super) fn counts(&self) -> Counts {
        let mut c = Counts {
            starting: self.starting,
            retiring: self.retiring,
            unhealthy: self.retiring_unhealthy,
            queued: self.waiters.len(),
            target: self.target,
            prewarm: self.prewarm.map_or(0, |(n, _)| n),
            prewarm_until: self.prewarm.map(|(_, until)| until),
            failed: self.failure.is_some(),
            ..Default::default()
        };
        for m in self.members.values() {
            match m.state {
                MemberState::Idle => c.idle += 1,
                MemberState::Busy => c.busy += 1,
                MemberState::Probing => c.probing += 1,
            }
        }
        c
    }

    /// Makes a running, attached container a member, busy until the caller offers it.
    /// Its first health probe is due `health_interval - stagger` from now
    /// ([`stagger`]), so members that join together are probed apart.
    pub(super) fn add_member(
        &mut self,
        new: NewMember,
        max_age: Duration,
        health_interval: Duration,
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let now = Instant::now();
        // An adopted container is as old as the engine says; one older than this process's
        // clock can express is past any age.
        let (created, max_age) = match now.checked_sub(new.history.age) {
            Some(created) => (created, jitter(max_age)),
            None => (now, Duration::ZERO),
        };
        self.members.insert(
            id,
            Member {
                container: new.container,
                name: new.name,
                conn: new.conn,
                state: MemberState::Busy,
                created,
                last_used: now,
                uses: new.history.uses,
                max_age,
                spec_hash: new.spec_hash,
                extra: new.extra,
                dirty: new.history.dirty,
                last_checked: now.checked_sub(stagger(id, health_interval)).unwrap_or(now),
                failed_probe: false,
            },
        );
        id
    }
}

/// A container about to become a member.
pub(super) struct NewMember {
    pub(super) container: String,
    pub(super) name: String,
    pub(super) conn: Conn,
    pub(super) spec_hash: String,
    pub(super) extra: bool,
    pub(super) history: History,
}

/// What a container brings with it into the pool: nothing for a fresh one; for one a
/// previous daemon run left (adoption), its age as the engine reports it, the uses it may
/// already have served, and files a previous tenant may have left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Since the engine created it.
    pub age: Duration,
    /// Tasks it is taken to have run already.
    pub uses: u64,
    /// Its workdir and /tmp must be wiped before its next task.
    pub dirty: bool,
}

impl History {
    /// A container a previous daemon run left idle. Its use count died with that run, so it
    /// is taken to be one task short of `max_uses`, the most an idle member can have served
    /// (a member reaching `max_uses` is retired when its task ends): it serves one more
    /// task, then it is replaced, so `max_uses` holds across a crash. Its files are wiped
    /// before that task, as after any pool task.
    pub fn adopted(age: Duration, max_uses: u64) -> History {
        History {
            age,
            uses: max_uses.saturating_sub(1),
            dirty: true,
        }
    }
}

fn jitter(max_age: Duration) -> Duration {
    // Up to 10% earlier, so containers created together do not all expire together.
    let f = 1.0 - rand::random::<f64>() * 0.1;
    max_age.mul_f64(f)
}

/// What the pool should converge to, as the reconcile loop decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// The autoscaler's target, before `min`/`max` clamp it.
    pub target: usize,
    /// The engine answers: when it does not, nothing is started (and no failures pile up).
    pub engine_up: bool,
    /// The highest floor in force: the scaling policies' (spare, schedule, forecast) and a
    /// pre-warm's (`POST /v1/pools/{pool}/prewarm`), 0 for none. Like `min`, idle containers
    /// up to it are not removed for `idle_timeout`, so it does not remove what the next look
    /// would start again.
    pub floor: usize,
}

/// What the pool's pure `plan` decided: carried out by the pool outside the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Members to retire, and why.
    pub retire: Vec<(u64, RemoveReason)>,
    /// Containers to start.
    pub start: usize,
    /// The target after the plan: lower than asked when idle containers timed out.
    pub target: usize,
    /// Each lowering of the target by `idle_timeout`, as (from, to): each is a scale down.
    pub lowered: Vec<(usize, usize)>,
}

/// Decides how the pool reaches `desired` from `st`, a pure function of its inputs.
///
/// Stale members (dead, used up, of an old spec, past their age) are replaced surge first:
/// one goes only when enough fresh ones are up without it; a dead one goes at once, it
/// cannot serve. Busy stale ones retire when their task ends, but count as stale now so
/// their replacements start early. Then surplus fresh idle ones go, least recently used
/// first: above the target (scale down), then past `idle_timeout` while above `min` (which
/// lowers the target, so no replacement starts). Finally what is missing starts, unless
/// the pool backs off after failed starts or the engine is down; a failed pool (the engine
/// refused its last start for good) starts one at a time, when its retry is due. Stale
/// members being replaced do not count toward `max`, so a pool at `max` can still renew
/// itself.
pub(super) fn plan(
    st: &State,
    cfg: &PoolConfig,
    spec_hash: &str,
    desired: Desired,
    now: Instant,
) -> Plan {
    let rules = Rules {
        spec_hash,
        max_uses: cfg.max_uses,
        closed: st.closed,
        now,
    };
    let min = cfg.min.max(desired.floor.min(cfg.max));
    let clamp = |t: usize| t.max(min).min(cfg.max);
    let mut target = desired.target;
    let want = clamp(target);
    // In id order, so that which stale member is kept is the same on every run.
    let mut ids: Vec<u64> = st.members.keys().copied().collect();
    ids.sort_unstable();
    let mut idle: Vec<(u64, Instant)> = Vec::new();
    let mut stale_idle: Vec<(u64, RemoveReason)> = Vec::new();
    let mut stale_busy = 0;
    for id in &ids {
        let m = &st.members[id];
        match (m.state, m.retire_reason(&rules)) {
            (MemberState::Idle, Some(r)) => stale_idle.push((*id, r)),
            (MemberState::Idle, None) => idle.push((*id, m.last_used)),
            (_, Some(_)) => stale_busy += 1,
            (_, None) => {}
        }
    }
    let mut retire = Vec::new();
    let mut fresh_up = ids.len() - stale_idle.len() - stale_busy;
    // Stale ones kept serving until their replacements are up.
    let mut keep = want.saturating_sub(fresh_up + stale_busy);
    for (id, reason) in stale_idle {
        // A dead one cannot even be kept as a placeholder; a failed probe can, until its
        // replacement is up (it is never handed out meanwhile, see `Member::servable`).
        if !st.members[&id].conn.is_dead() && keep > 0 {
            keep -= 1;
            continue;
        }
        retire.push((id, reason));
    }

    let mut lowered = Vec::new();
    idle.sort_by_key(|(_, last)| *last);
    for (id, last_used) in idle {
        if fresh_up > want {
            retire.push((id, RemoveReason::ScaleDown));
            fresh_up -= 1;
        } else if fresh_up > min && now.duration_since(last_used) >= cfg.idle_timeout {
            retire.push((id, RemoveReason::Idle));
            fresh_up -= 1;
            let to = target.min(fresh_up).max(min);
            if to < target {
                lowered.push((target, to));
            }
            target = to;
        }
    }

    let want = clamp(target);
    let have = fresh_up + st.starting;
    let backing_off = st.backoff_until.is_some_and(|t| now < t);
    let start = if want > have && !backing_off && desired.engine_up {
        // A failed pool's retry is one start, not one per missing container: the engine
        // will most likely refuse it again.
        if st.failure.is_some() {
            usize::from(st.starting == 0)
        } else {
            want - have
        }
    } else {
        0
    };
    Plan {
        retire,
        start,
        target,
        lowered,
    }
}

/// How long a pool starts nothing after `failures` failed starts in a row: 250 ms × 2ⁿ,
/// at most 30 s (docs/scaling.md, "Failed starts: back-off").
pub(super) fn backoff(failures: u32) -> Duration {
    let backoff = Duration::from_millis(250) * 2u32.saturating_pow(failures.min(7));
    backoff.min(Duration::from_secs(30))
}

/// How far back a new member's "last proven" is set, so that its first probe comes
/// `interval - stagger` after it joins: members that join together (a warm-up, an
/// adoption after a restart) are then probed at different times, and stay apart since
/// each is due one interval after its own last probe. The member's number (1, 2, 3, ... in
/// the pool) times the golden ratio, modulo 1, spreads any run of consecutive numbers
/// evenly over [0, interval).
pub(super) fn stagger(member: u64, interval: Duration) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    let fraction = (member as f64 * GOLDEN).fract();
    interval.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::DockerExecConn;
    use crate::runtime::fake::FakeRuntime;

    #[test]
    fn staggers_spread_consecutive_members_over_the_interval() {
        let interval = Duration::from_secs(30);
        for n in [10u64, 100, 1000] {
            let mut offsets: Vec<Duration> = (1..=n).map(|m| stagger(m, interval)).collect();
            assert!(offsets.iter().all(|o| *o < interval));
            offsets.sort();
            // Evenly spread: no gap between neighbours (the wrap-around included) is more
            // than three times the even share, so no slice of the interval is crowded.
            let even = interval / n as u32;
            let mut gaps: Vec<Duration> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.push(interval - offsets[n as usize - 1] + offsets[0]);
            let widest = gaps.iter().max().unwrap();
            assert!(
                *widest <= even * 3,
                "n={n}: widest gap {widest:?}, even share {even:?}"
            );
        }
        // The same member always gets the same offset; no interval, no offset.
        assert_eq!(stagger(7, interval), stagger(7, interval));
        assert_eq!(stagger(7, Duration::ZERO), Duration::ZERO);
    }

    fn cfg(min: usize, max: usize) -> PoolConfig {
        let mut c = PoolConfig::new("p", "img");
        c.min = min;
        c.max = max;
        c.idle_timeout = Duration::from_secs(60);
        c.max_age = Duration::from_secs(3600);
        c
    }

    /// A state with `n` members, all idle, of spec "a", created and used at `at`.
    fn state(n: usize, at: Instant) -> State {
        let mut st = State::default();
        let rt = FakeRuntime::new();
        for i in 0..n {
            st.next_id += 1;
            st.members.insert(
                st.next_id,
                Member {
                    container: format!("c{i}"),
                    name: format!("n{i}"),
                    conn: Conn::DockerExec(DockerExecConn {
                        runtime: rt.clone(),
                        container: format!("c{i}"),
                    }),
                    state: MemberState::Idle,
                    created: at,
                    last_used: at,
                    uses: 0,
                    max_age: Duration::from_secs(3600),
                    spec_hash: "a".into(),
                    extra: false,
                    dirty: false,
                    last_checked: at,
                    failed_probe: false,
                },
            );
            st.idle.push(st.next_id);
        }
        st
    }

    fn up(target: usize) -> Desired {
        Desired {
            target,
            engine_up: true,
            floor: 0,
        }
    }

    #[test]
    fn a_pool_below_its_target_starts_the_difference() {
        let now = Instant::now();
        let mut st = state(1, now);
        st.starting = 1;
        let p = plan(&st, &cfg(1, 10), "a", up(4), now);
        assert_eq!((p.start, p.retire.len(), p.target), (2, 0, 4));
    }

    #[test]
    fn nothing_starts_while_backing_off_or_with_the_engine_down() {
        let now = Instant::now();
        let mut st = state(0, now);
        let down = Desired {
            target: 2,
            engine_up: false,
            floor: 0,
        };
        assert_eq!(plan(&st, &cfg(1, 10), "a", down, now).start, 0);
        st.backoff_until = Some(now + Duration::from_secs(1));
        assert_eq!(plan(&st, &cfg(1, 10), "a", up(2), now).start, 0);
        assert_eq!(
            plan(&st, &cfg(1, 10), "a", up(2), now + Duration::from_secs(1)).start,
            2
        );
    }

    #[test]
    fn a_failed_pool_starts_one_container_when_its_retry_is_due_and_none_before() {
        let now = Instant::now();
        let mut st = state(0, now);
        st.failure = Some(Failure {
            reason: "unknown or invalid runtime name: nope".into(),
            hint: "install it".into(),
            since: std::time::SystemTime::now(),
            retry_every: Duration::from_secs(30),
        });
        st.backoff_until = Some(now + Duration::from_secs(30));
        assert_eq!(plan(&st, &cfg(3, 10), "a", up(3), now).start, 0);
        let due = now + Duration::from_secs(30);
        assert_eq!(plan(&st, &cfg(3, 10), "a", up(3), due).start, 1);
        // Its retry in flight: nothing more.
        st.starting = 1;
        assert_eq!(plan(&st, &cfg(3, 10), "a", up(3), due).start, 0);
        // Not failed: the whole difference.
        st.starting = 0;
        st.failure = None;
        assert_eq!(plan(&st, &cfg(3, 10), "a", up(3), due).start, 3);
    }

    #[test]
    fn above_the_target_the_least_recently_used_idle_ones_go() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(5);
        let mut st = state(3, now);
        st.members.get_mut(&2).unwrap().last_used = t0;
        let p = plan(&st, &cfg(1, 10), "a", up(2), now);
        assert_eq!(p.retire, vec![(2, RemoveReason::ScaleDown)]);
        assert_eq!(p.start, 0);
    }

    #[test]
    fn a_stale_spec_is_replaced_surge_first() {
        let now = Instant::now();
        let st = state(2, now);
        // Both stale, target 2: both keep serving while two replacements start.
        let p = plan(&st, &cfg(2, 2), "b", up(2), now);
        assert_eq!((p.retire.len(), p.start), (0, 2));
        // With two fresh ones up, the stale ones go.
        let mut st = state(4, now);
        for id in [1, 2] {
            st.members.get_mut(&id).unwrap().spec_hash = "old".into();
        }
        let p = plan(&st, &cfg(2, 2), "a", up(2), now);
        assert_eq!(
            p.retire,
            vec![(1, RemoveReason::Reload), (2, RemoveReason::Reload)]
        );
        assert_eq!(p.start, 0);
    }

    #[test]
    fn past_its_age_a_container_is_renewed() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(3600);
        let mut st = state(2, t0);
        let young = st.members.get_mut(&2).unwrap();
        young.created = t0 + Duration::from_secs(3000);
        young.last_used = now;
        let p = plan(&st, &cfg(1, 1), "a", up(1), now);
        assert_eq!(p.retire, vec![(1, RemoveReason::Age)]);
    }

    #[test]
    fn idle_timeout_lowers_the_target_down_to_min() {
        let t0 = Instant::now();
        let st = state(3, t0);
        let now = t0 + Duration::from_secs(60);
        let p = plan(&st, &cfg(1, 10), "a", up(3), now);
        assert_eq!(p.retire.len(), 2);
        assert!(p.retire.iter().all(|(_, r)| *r == RemoveReason::Idle));
        assert_eq!((p.target, p.start), (1, 0));
        assert_eq!(p.lowered, vec![(3, 2), (2, 1)]);
        // A pre-warm floor keeps idle containers up to it, as min does.
        let floored = Desired { floor: 2, ..up(3) };
        let p = plan(&st, &cfg(1, 10), "a", floored, now);
        assert_eq!((p.retire.len(), p.target), (1, 2));
    }

    #[test]
    fn idle_timeout_keeps_what_the_policies_floor_asks_for() {
        let t0 = Instant::now();
        let st = state(3, t0);
        let now = t0 + Duration::from_secs(60);
        let desired = Desired { floor: 2, ..up(3) };
        let p = plan(&st, &cfg(1, 10), "a", desired, now);
        assert_eq!(p.retire.len(), 1);
        assert_eq!((p.target, p.start), (2, 0));
    }

    #[test]
    fn the_one_retire_rule_puts_a_failure_first_and_spares_a_fresh_container() {
        let now = Instant::now();
        let st = state(1, now);
        let m = &st.members[&1];
        let rules = |spec_hash, max_uses, closed| Rules {
            spec_hash,
            max_uses,
            closed,
            now,
        };
        assert_eq!(m.retire_reason(&rules("a", 100, false)), None);
        assert_eq!(
            m.retire_reason(&rules("a", 0, false)),
            Some(RemoveReason::Uses)
        );
        assert_eq!(
            m.retire_reason(&rules("b", 100, false)),
            Some(RemoveReason::Reload)
        );
        assert_eq!(
            m.retire_reason(&rules("a", 100, true)),
            Some(RemoveReason::Shutdown)
        );
    }

    #[test]
    fn a_failed_probe_is_replaced_surge_first_and_never_served() {
        let now = Instant::now();
        let mut st = state(1, now);
        st.members.get_mut(&1).unwrap().failed_probe = true;
        assert!(!st.members[&1].servable("a"));
        // Kept (counted as up) while its replacement starts...
        let p = plan(&st, &cfg(1, 1), "a", up(1), now);
        assert_eq!((p.retire.len(), p.start), (0, 1));
        // ...and retired once one is up.
        let mut st = state(2, now);
        st.members.get_mut(&1).unwrap().failed_probe = true;
        let p = plan(&st, &cfg(1, 1), "a", up(1), now);
        assert_eq!(p.retire, vec![(1, RemoveReason::Unhealthy)]);
        // A member of a replaced spec is never served either.
        assert!(!st.members[&2].servable("b"));
    }

    #[test]
    fn probes_take_a_bounded_share_and_never_the_last_idle_one() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        let every = Duration::from_secs(30);
        // Eight idle, all due: a quarter at a time, counting probes in flight.
        let mut st = state(8, t0);
        assert_eq!(
            super::super::health::take_due(&mut st, now, every, "a").len(),
            2
        );
        assert_eq!(
            super::super::health::take_due(&mut st, now, every, "a").len(),
            0
        );
        // Two idle: one, never both.
        let mut st = state(2, t0);
        assert_eq!(
            super::super::health::take_due(&mut st, now, every, "a").len(),
            1
        );
        assert_eq!(
            super::super::health::take_due(&mut st, now, every, "a").len(),
            0
        );
        // None while a task waits.
        let mut st = state(4, t0);
        let (tx, _rx) = oneshot::channel();
        st.waiters.push_back(Waiter { id: 99, tx });
        assert!(super::super::health::take_due(&mut st, now, every, "a").is_empty());
        // Not due within the interval of its last proof.
        let mut st = state(4, now);
        assert!(super::super::health::take_due(&mut st, now, every, "a").is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(6), Duration::from_secs(16));
        assert_eq!(backoff(7), Duration::from_secs(30));
        assert_eq!(backoff(100), Duration::from_secs(30));
    }
}
