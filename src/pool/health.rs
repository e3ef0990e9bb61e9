//! Health probes of idle containers (docs/scaling.md, "Health"). Busy containers are not
//! probed: the task they run is the proof.

use tokio::time::Instant;

use super::state::{MemberState, State};
use crate::exec::{Conn, PROBE_TIMEOUT};
use crate::metrics::HealthResult;

/// Takes the idle members unused for at least `older_than` out of rotation for their probe;
/// returns them with their channels. The caller holds the pool's lock.
pub(super) fn take_due(
    st: &mut State,
    now: Instant,
    older_than: std::time::Duration,
) -> Vec<(u64, Conn)> {
    let due: Vec<u64> = st
        .idle
        .iter()
        .copied()
        .filter(|id| {
            st.members
                .get(id)
                .is_some_and(|m| now.duration_since(m.last_used) >= older_than)
        })
        .collect();
    let mut out = Vec::with_capacity(due.len());
    for id in due {
        let m = st.members.get_mut(&id).expect("idle member present");
        m.state = MemberState::Probing;
        out.push((id, m.conn.clone()));
    }
    st.idle.retain(|id| !out.iter().any(|(o, _)| o == id));
    out
}

/// One probe: a round trip to the shim, then `health_cmd` where configured, each within
/// [`PROBE_TIMEOUT`]. A failure is logged with its cause.
pub(super) async fn probe(pool: &str, conn: &Conn, cmd: Option<&[String]>) -> HealthResult {
    match conn.probe(cmd, PROBE_TIMEOUT).await {
        Ok(()) => HealthResult::Healthy,
        Err(e) => {
            tracing::warn!(pool = %pool, error = %e, "health check failed; replacing the container");
            HealthResult::Unhealthy
        }
    }
}
