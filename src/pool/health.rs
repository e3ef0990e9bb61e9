//! Health probes of idle containers (docs/scaling.md, "Health"). Busy containers are not
//! probed: the task they run is the proof.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{MemberState, State};
use crate::exec::Conn;
use crate::metrics::HealthResult;

/// Takes the idle members due for a probe out of rotation and returns them with their
/// channels; the caller holds the pool's lock. Due: not proven healthy (a probe passed, a
/// task ended on it) for `interval`. Bounded so that probes never take the pool out of
/// service: none while tasks wait, at most a quarter of the servable idle members per round
/// (at least one, probes in flight included), and never the last servable idle one of two
/// or more. The supervisor runs a round every [`round_period`], and members that joined
/// together are due at different times ([`super::state::stagger`]), so every idle member is probed about
/// once per interval, spread over it rather than in bursts.
pub(super) fn take_due(
    st: &mut State,
    now: Instant,
    interval: Duration,
    spec_hash: &str,
) -> Vec<(u64, Conn)> {
    if !st.waiters.is_empty() {
        return Vec::new();
    }
    let servable: Vec<u64> = st
        .idle
        .iter()
        .copied()
        .filter(|id| {
            st.members
                .get(id)
                .is_some_and(|m| m.state == MemberState::Idle && m.servable(spec_hash))
        })
        .collect();
    // Probes in flight count against the share: a round never adds to a full one.
    let probing = st
        .members
        .values()
        .filter(|m| m.state == MemberState::Probing)
        .count();
    let total = servable.len() + probing;
    let mut allowed = (total / 4).max(1);
    if total >= 2 {
        allowed = allowed.min(total - 1);
    }
    let share = allowed.saturating_sub(probing);
    let mut due: Vec<(u64, Instant)> = servable
        .iter()
        .filter_map(|id| {
            let m = &st.members[id];
            // A task ending sets last_checked too; a new member's is set back by its stagger.
            let proven = m.last_checked;
            (now.duration_since(proven) >= interval).then_some((*id, proven))
        })
        .collect();
    due.sort_by_key(|(_, proven)| *proven);
    due.truncate(share);
    let mut out = Vec::with_capacity(due.len());
    for (id, _) in due {
        let m = st.members.get_mut(&id).expect("idle member present");
        m.state = MemberState::Probing;
        m.last_checked = now;
        out.push((id, m.conn.clone()));
    }
    st.idle.retain(|id| !out.iter().any(|(o, _)| o == id));
    out
}

/// How often the pool's loop runs a probe round for `interval`: a twentieth of it (1.5 s
/// for the default 30 s), so the members due are taken a few at a time, at least every
/// millisecond's worth for tests' tiny intervals.
pub fn round_period(interval: Duration) -> Duration {
    (interval / 20).max(Duration::from_millis(1))
}

/// One probe: a round trip to the shim, then `health_cmd` where configured, within
/// `timeout` (the pool's `health_check_timeout`). A failure is logged with its cause.
pub(super) async fn probe(
    pool: &str,
    conn: &Conn,
    cmd: Option<&[String]>,
    timeout: Duration,
) -> HealthResult {
    match conn.probe(cmd, timeout).await {
        Ok(()) => HealthResult::Healthy,
        Err(e) => {
            tracing::warn!(pool = %pool, error = %e, "health check failed; replacing the container (surge first)");
            HealthResult::Unhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_a_twentieth_of_the_interval() {
        assert_eq!(
            round_period(Duration::from_secs(30)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            round_period(Duration::from_millis(4)),
            Duration::from_millis(1)
        );
    }
}
