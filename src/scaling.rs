//! The autoscaling decision, as a pure function of a pool's numbers, so every rule is tested
//! on its own without engines or clocks.
//!
//! Growth is immediate and sized to the demand (busy plus queued tasks), so a burst gets the
//! containers it needs in one step rather than one per tick. Shrinking waits until
//! utilization has stayed below the low threshold for a whole stabilization window, so a
//! pause between two bursts does not throw away warm containers.

use std::time::Duration;

use tokio::time::Instant;

/// What the autoscaler looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Containers running a task.
    pub busy: usize,
    /// Containers that exist or are starting (idle + busy + probing + starting).
    pub live: usize,
    /// Tasks waiting for a container.
    pub queued: usize,
    /// The pool's configured bounds.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// Utilization above which the pool grows.
    pub scale_up_threshold: f64,
    /// Utilization below which, for a whole window, the pool shrinks.
    pub scale_down_threshold: f64,
}

/// What the autoscaler remembers between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Memory {
    /// The target decided at the last look.
    pub target: usize,
    /// Since when utilization has been below the low threshold without a break.
    pub low_since: Option<Instant>,
}

/// A change of the target, counted in `warmpool_scale_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The target went up.
    Up,
    /// The target went down.
    Down,
}

/// How long utilization must stay low before the pool shrinks: twelve looks of the
/// autoscaler, 60 s with the default `scale_interval` of 5 s. Warm containers are cheap and
/// cold starts are not, so the pool is slow to shrink and quick to grow.
pub fn stabilization_window(scale_interval: Duration) -> Duration {
    scale_interval * 12
}

/// A pool's utilization: the demand on it (`busy` tasks running plus `queued` ones waiting)
/// over its `live` containers (idle, busy, being probed and starting), capped at 1: 0 to 1,
/// 0 for an empty pool with no demand, 1 for an empty pool with some. The cap changes no
/// decision: above 1 means tasks queue, and a queued task grows the pool anyway.
///
/// The one definition: the autoscaler acts on it, `warmpool_pool_utilization_ratio` and
/// `GET /v1/pools` show it (docs/scaling.md, "What it looks at"). Queued tasks count because
/// a pool with every container busy and tasks waiting is more than fully used; starting
/// containers count because they are already on their way to meet that demand.
pub fn utilization(busy: usize, queued: usize, live: usize) -> f64 {
    let demand = busy + queued;
    if live == 0 {
        if demand > 0 {
            1.0
        } else {
            0.0
        }
    } else {
        (demand as f64 / live as f64).min(1.0)
    }
}

/// The containers needed for `demand` busy ones to sit at the high threshold.
fn sized_for(demand: usize, threshold: f64) -> usize {
    (demand as f64 / threshold).ceil() as usize
}

/// Decides the pool's target size. Returns the new memory and the step taken, if any.
pub fn decide(
    obs: &Observation,
    mem: Memory,
    now: Instant,
    window: Duration,
) -> (Memory, Option<Step>) {
    let clamp = |n: usize| n.clamp(obs.min, obs.max.max(obs.min));
    let current = clamp(mem.target);
    let demand = obs.busy + obs.queued;
    let utilization = utilization(obs.busy, obs.queued, obs.live);

    if obs.queued > 0 || utilization > obs.scale_up_threshold {
        // Headroom for the busy ones, plus one container per queued task.
        let wanted = clamp(sized_for(obs.busy, obs.scale_up_threshold) + obs.queued);
        let next = Memory {
            target: wanted.max(current),
            low_since: None,
        };
        let step = (next.target > current).then_some(Step::Up);
        return (next, step);
    }

    if utilization < obs.scale_down_threshold {
        let since = mem.low_since.unwrap_or(now);
        if now.duration_since(since) >= window {
            let wanted = clamp(sized_for(demand, obs.scale_up_threshold));
            if wanted < current {
                // Each step needs a fresh window, so a pool steps down gently.
                return (
                    Memory {
                        target: wanted,
                        low_since: Some(now),
                    },
                    Some(Step::Down),
                );
            }
        }
        return (
            Memory {
                target: current,
                low_since: Some(since),
            },
            None,
        );
    }

    (
        Memory {
            target: current,
            low_since: None,
        },
        None,
    )
}

/// A floor under the target for a while (`POST /v1/pools/{pool}/prewarm`), applied after
/// [`decide`] as an input of its own: `floor` is the floor in force now (0 for none), `was`
/// the one at the previous look. Below the floor the target rises to it at once (capped at
/// `max`). When the floor ends or is lowered, what it added goes at once, down to what the
/// demand needs (and never below the new floor or `min`), instead of waiting for a whole
/// stabilization window.
pub fn floor(obs: &Observation, mem: Memory, floor: usize, was: usize) -> (Memory, Option<Step>) {
    let cap = obs.max.max(obs.min);
    let (floor, was) = (floor.min(cap), was.min(cap));
    if mem.target < floor {
        let next = Memory {
            target: floor,
            low_since: None,
        };
        return (next, Some(Step::Up));
    }
    if floor < was {
        let demand = sized_for(obs.busy + obs.queued, obs.scale_up_threshold);
        let wanted = demand.max(floor).clamp(obs.min, cap);
        if wanted < mem.target {
            let next = Memory {
                target: wanted,
                low_since: None,
            };
            return (next, Some(Step::Down));
        }
    }
    (mem, None)
}

#[cfg(test)]
mod floor_tests {
    use super::*;

    fn obs(busy: usize) -> Observation {
        Observation {
            busy,
            live: 2,
            queued: 0,
            min: 1,
            max: 6,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
        }
    }

    fn at(target: usize) -> Memory {
        Memory {
            target,
            low_since: None,
        }
    }

    #[test]
    fn a_floor_raises_the_target_at_once_never_above_max() {
        assert_eq!(floor(&obs(0), at(2), 5, 0), (at(5), Some(Step::Up)));
        assert_eq!(floor(&obs(0), at(2), 9, 0), (at(6), Some(Step::Up)));
        assert_eq!(floor(&obs(0), at(5), 5, 5), (at(5), None));
        // Demand above the floor keeps what the autoscaler decided.
        assert_eq!(floor(&obs(0), at(6), 4, 0), (at(6), None));
    }

    #[test]
    fn an_ended_floor_falls_back_to_what_demand_needs() {
        assert_eq!(floor(&obs(0), at(5), 0, 5), (at(1), Some(Step::Down)));
        // 4 busy need 5 at the 0.8 threshold: the floor's end takes nothing they need.
        assert_eq!(floor(&obs(4), at(6), 0, 6), (at(5), Some(Step::Down)));
        assert_eq!(floor(&obs(4), at(5), 0, 5), (at(5), None));
        // A lowered floor stays a floor.
        assert_eq!(floor(&obs(0), at(6), 3, 6), (at(3), Some(Step::Down)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(busy: usize, live: usize, queued: usize) -> Observation {
        Observation {
            busy,
            live,
            queued,
            min: 1,
            max: 6,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
        }
    }

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn a_burst_grows_to_its_demand_at_once_capped_at_max() {
        let now = Instant::now();
        let (m, step) = decide(
            &obs(1, 1, 39),
            Memory {
                target: 1,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!(m.target, 6);
        assert_eq!(step, Some(Step::Up));
    }

    #[test]
    fn growth_leaves_headroom_under_the_high_threshold() {
        let now = Instant::now();
        // 4 busy of 4: 4 / 0.8 = 5 containers keep utilization at the threshold.
        let (m, _) = decide(
            &obs(4, 4, 0),
            Memory {
                target: 4,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!(m.target, 5);
    }

    #[test]
    fn utilization_at_the_threshold_does_not_grow() {
        let now = Instant::now();
        let (m, step) = decide(
            &obs(4, 5, 0),
            Memory {
                target: 5,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!((m.target, step), (5, None));
    }

    #[test]
    fn a_custom_up_threshold_is_honoured() {
        let now = Instant::now();
        let mut o = obs(2, 4, 0);
        o.scale_up_threshold = 0.4;
        let (m, step) = decide(
            &o,
            Memory {
                target: 4,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!((m.target, step), (5, Some(Step::Up)));
    }

    #[test]
    fn shrinking_waits_for_the_whole_window() {
        let t0 = Instant::now();
        let mut mem = Memory {
            target: 6,
            low_since: None,
        };
        let (m, step) = decide(&obs(0, 6, 0), mem, t0, W);
        assert_eq!((m.target, step), (6, None));
        mem = m;
        let (m, step) = decide(&obs(0, 6, 0), mem, t0 + W - Duration::from_millis(1), W);
        assert_eq!((m.target, step), (6, None));
        let (m, step) = decide(&obs(0, 6, 0), m, t0 + W, W);
        assert_eq!((m.target, step), (1, Some(Step::Down)));
    }

    #[test]
    fn a_busy_moment_restarts_the_window() {
        let t0 = Instant::now();
        let (m, _) = decide(
            &obs(0, 6, 0),
            Memory {
                target: 6,
                low_since: None,
            },
            t0,
            W,
        );
        // Utilization 0.5: between the thresholds, the low streak is broken.
        let (m, _) = decide(&obs(3, 6, 0), m, t0 + W / 2, W);
        assert_eq!(m.low_since, None);
        let (m, step) = decide(&obs(0, 6, 0), m, t0 + W, W);
        assert_eq!((m.target, step), (6, None));
    }

    #[test]
    fn shrinking_keeps_what_the_busy_ones_need_and_never_goes_below_min() {
        let t0 = Instant::now();
        let mut o = obs(1, 10, 0);
        o.max = 10;
        o.min = 3;
        let mem = Memory {
            target: 10,
            low_since: Some(t0),
        };
        let (m, step) = decide(&o, mem, t0 + W, W);
        assert_eq!((m.target, step), (3, Some(Step::Down)));
    }

    #[test]
    fn target_stays_within_min_and_max() {
        let now = Instant::now();
        let mut o = obs(0, 0, 0);
        o.min = 2;
        let (m, _) = decide(
            &o,
            Memory {
                target: 0,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!(m.target, 2);
        let (m, _) = decide(
            &obs(1, 1, 100),
            Memory {
                target: 50,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!(m.target, 6);
    }

    #[test]
    fn a_lazy_pool_grows_from_zero_on_its_first_task() {
        let now = Instant::now();
        let mut o = obs(0, 0, 1);
        o.min = 0;
        let (m, step) = decide(
            &o,
            Memory {
                target: 0,
                low_since: None,
            },
            now,
            W,
        );
        assert_eq!((m.target, step), (1, Some(Step::Up)));
    }

    #[test]
    fn the_window_is_twelve_looks() {
        assert_eq!(
            stabilization_window(Duration::from_secs(5)),
            Duration::from_secs(60)
        );
    }
}
