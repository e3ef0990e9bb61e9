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
    /// What the policies keep (spare, schedule, forecast; see [`policy_floor`]): the pool
    /// never shrinks below it.
    pub floor: usize,
    /// `predictive`: the pool also shrinks when, for a whole window, the target is above
    /// what both the floor and the high threshold ask for, even if utilization is not below
    /// the low threshold; it shrinks to that, one step a window.
    pub shrink_to_forecast: bool,
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

    let needed = clamp(sized_for(demand, obs.scale_up_threshold).max(obs.floor));
    let low =
        utilization < obs.scale_down_threshold || (obs.shrink_to_forecast && needed < current);
    if low {
        let since = mem.low_since.unwrap_or(now);
        if now.duration_since(since) >= window {
            let wanted = needed;
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

// ---------------------------------------------------------------------------------------
// The policies that warm a pool before its tasks arrive. Each is a pure function of a few
// numbers; the supervisor takes the highest of their floors and of `decide`'s target
// (docs/scaling.md, "Policies").
// ---------------------------------------------------------------------------------------

/// `spare = N`: the containers that keep `spare` idle beyond the busy ones and one for each
/// queued task; 0 when the policy is off (`spare = 0`).
pub fn spare_floor(busy: usize, queued: usize, spare: usize) -> usize {
    if spare == 0 {
        0
    } else {
        busy + queued + spare
    }
}

/// One entry of a pool's `schedule`: from each time `cron` matches, for `duration`, the pool
/// keeps at least `min` containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFloor {
    /// The parsed expression (five fields, UTC).
    pub cron: croner::Cron,
    /// The expression as written, for messages and logs.
    pub expr: String,
    /// The floor while the entry is in force.
    pub min: usize,
    /// How long the floor holds after each match (`for` in pools.toml).
    pub duration: Duration,
}

impl ScheduleFloor {
    /// Parses a five-field cron expression (minute hour day-of-month month day-of-week).
    ///
    /// Errors: the parser's reason, for the config's message.
    pub fn parse(expr: &str, min: usize, duration: Duration) -> Result<ScheduleFloor, String> {
        use croner::parser::{CronParser, Seconds, Year};
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| e.to_string())?;
        Ok(ScheduleFloor {
            cron,
            expr: expr.to_string(),
            min,
            duration,
        })
    }

    /// Whether the entry is in force at `at`: its latest match at or before `at` is less than
    /// `duration` ago. Only the latest match matters: every window has the same length.
    pub fn active_at(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        match self.cron.find_previous_occurrence(&at, true) {
            Ok(start) => (at - start)
                .to_std()
                .is_ok_and(|since| since < self.duration),
            Err(_) => false,
        }
    }
}

/// `schedule = [...]`: the highest `min` of the entries in force at `now` or at `now + lead`
/// (so that the containers are up when the window opens, not `lead` later); 0 when none is.
pub fn schedule_floor(
    schedule: &[ScheduleFloor],
    now: chrono::DateTime<chrono::Utc>,
    lead: Duration,
) -> usize {
    let later = now + chrono::Duration::from_std(lead).unwrap_or_default();
    schedule
        .iter()
        .filter(|s| s.active_at(now) || s.active_at(later))
        .map(|s| s.min)
        .max()
        .unwrap_or(0)
}

/// Cumulative demand counters of a pool, as its metrics count them: what the forecast reads
/// at each look (only the differences between two looks matter).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Tasks that arrived (got a container, or were refused).
    pub arrivals: u64,
    /// Tasks that ran to their end.
    pub finished: u64,
    /// The run time of those tasks, in seconds.
    pub task_seconds: f64,
    /// Container starts that succeeded.
    pub starts: u64,
    /// Their create-to-ready time, in seconds.
    pub start_seconds: f64,
}

/// How the forecast smooths and how long it remembers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastParams {
    /// Time constant of the arrival rate's exponential smoothing.
    pub rate_tau: Duration,
    /// Time constant of the task duration's and the create time's smoothing.
    pub duration_tau: Duration,
    /// How long a forecast is remembered: the pool never shrinks below the highest
    /// forecast of this window.
    pub hold: Duration,
    /// The share of arrivals that may find every container the forecast keeps busy. 5 %:
    /// the thresholds and the immediate growth on a queued task catch most of the rest, and
    /// on the shipped traces 1 % cost 5 to 25 % more container-seconds for at most 0.1 % more
    /// warm hits (docs/scaling.md).
    pub miss: f64,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams {
            rate_tau: Duration::from_secs(30),
            duration_tau: Duration::from_secs(300),
            hold: Duration::from_secs(180),
            miss: 0.05,
        }
    }
}

/// Exponentially smoothed arrival rate, task duration and create time of one pool, and the
/// forecasts of the last `hold`. A plain state machine fed by [`Forecaster::observe`]: no
/// clock, no I/O, so the tests drive it with made-up counters and instants.
#[derive(Debug, Clone, Default)]
pub struct Forecaster {
    /// Arrivals per second.
    rate: f64,
    /// Decayed sums of task seconds and of finished tasks: their ratio is the mean duration.
    task_seconds: f64,
    tasks: f64,
    /// Decayed sums of start seconds and starts: their ratio is the create time.
    start_seconds: f64,
    starts: f64,
    last: Option<(Instant, Demand)>,
    /// (when, forecast) of the last `hold`, oldest first.
    history: std::collections::VecDeque<(Instant, usize)>,
}

/// Before the pool has started a container, the create time assumed (measured on the
/// reference machine: about 0.3 s, more when several start together).
const PRIOR_CREATE_SECONDS: f64 = 0.5;

impl Forecaster {
    /// Takes the counters in at `now`: the rate decays by `e^(-dt/tau)` and gains the new
    /// arrivals over `tau` (an exponentially weighted count, right for irregular looks); the
    /// durations are decayed sums likewise.
    pub fn observe(&mut self, now: Instant, demand: Demand, p: &ForecastParams) {
        let Some((then, before)) = self.last.replace((now, demand)) else {
            return;
        };
        let dt = now.saturating_duration_since(then).as_secs_f64();
        let tau = p.rate_tau.as_secs_f64().max(1e-3);
        let tau_d = p.duration_tau.as_secs_f64().max(1e-3);
        // A counter that went down was reset (a reload re-created the pool's series).
        let delta = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let delta_f = |a: f64, b: f64| (a - b).max(0.0);
        // Weight of this look: the arrivals over dt, weighted by 1 - e^(-dt/tau), so a
        // steady rate is estimated without bias whatever the spacing of the looks.
        let decay = (-dt / tau).exp();
        let per_arrival = if dt > 1e-9 {
            (1.0 - decay) / dt
        } else {
            1.0 / tau
        };
        self.rate = self.rate * decay + delta(demand.arrivals, before.arrivals) * per_arrival;
        let keep = (-dt / tau_d).exp();
        self.task_seconds =
            self.task_seconds * keep + delta_f(demand.task_seconds, before.task_seconds);
        self.tasks = self.tasks * keep + delta(demand.finished, before.finished);
        self.start_seconds =
            self.start_seconds * keep + delta_f(demand.start_seconds, before.start_seconds);
        self.starts = self.starts * keep + delta(demand.starts, before.starts);
    }

    /// The smoothed arrival rate, per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The smoothed mean task duration, in seconds (0 before any task ended).
    pub fn mean_duration(&self) -> f64 {
        if self.tasks > 1e-9 {
            self.task_seconds / self.tasks
        } else {
            0.0
        }
    }

    /// The smoothed create-to-ready time of the pool's containers, in seconds.
    pub fn create_time(&self) -> f64 {
        if self.starts > 1e-9 {
            self.start_seconds / self.starts
        } else {
            PRIOR_CREATE_SECONDS
        }
    }

    /// The containers the next interval needs, and remembers it: see [`containers_needed`]
    /// with the smoothed numbers, then the highest of the last `hold`.
    pub fn forecast(&mut self, now: Instant, p: &ForecastParams) -> usize {
        let need = containers_needed(self.rate, self.mean_duration(), self.create_time(), p.miss);
        while let Some((at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) > p.hold {
                self.history.pop_front();
            } else {
                break;
            }
        }
        // Only a new value that is not below the last one needs keeping twice.
        while self.history.back().is_some_and(|(_, n)| *n <= need) {
            self.history.pop_back();
        }
        self.history.push_back((now, need));
        self.history.iter().map(|(_, n)| *n).max().unwrap_or(need)
    }
}

/// The forecast: by Little's law, tasks arriving at `rate` per second that run
/// `mean_duration` seconds keep `c = rate × (mean_duration + create_time)` containers
/// occupied, counting the create time a replacement takes to be ready. With arrivals of a
/// Poisson process the number busy is Poisson(c) (the M/G/∞ queue), so the pool needs the
/// smallest `k` for which an arriving task finds all `k` busy with a probability of at most
/// `miss`: `P(N >= k) <= miss`. 0 when nothing arrives.
pub fn containers_needed(rate: f64, mean_duration: f64, create_time: f64, miss: f64) -> usize {
    let c = rate * (mean_duration + create_time);
    if !c.is_finite() || c < 1e-3 {
        return 0;
    }
    poisson_quantile(c, miss)
}

/// The smallest `k` with `P(N >= k) <= miss` for `N ~ Poisson(c)`.
fn poisson_quantile(c: f64, miss: f64) -> usize {
    if c > 500.0 {
        // Normal approximation, far past any pool's max.
        return (c + 2.33 * c.sqrt()).ceil() as usize + 1;
    }
    let mut pmf = (-c).exp();
    let mut below = 0.0;
    let mut k = 0usize;
    // P(N >= k) = 1 - P(N <= k - 1).
    loop {
        if 1.0 - below <= miss {
            return k;
        }
        below += pmf;
        k += 1;
        pmf *= c / k as f64;
        if k > 10_000 {
            return k;
        }
    }
}

/// The floor of every policy at once, between `min` and `max`: what the pool keeps whatever
/// the thresholds say.
pub fn policy_floor(
    spare: usize,
    schedule: usize,
    forecast: usize,
    min: usize,
    max: usize,
) -> usize {
    spare.max(schedule).max(forecast).clamp(min, max.max(min))
}

/// A floor under the target for a while (`POST /v1/pools/{pool}/prewarm`), applied after
/// [`decide`] as an input of its own: `floor` is the floor in force now (0 for none), `was`
/// the one at the previous look. Below the floor the target rises to it at once (capped at
/// `max`). When the floor ends or is lowered, what it added goes at once, down to what the
/// demand needs (and never below the new floor, the policies' floor `obs.floor` or `min`),
/// instead of waiting for a whole stabilization window.
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
        let wanted = demand.max(floor).max(obs.floor).clamp(obs.min, cap);
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
            floor: 0,
            shrink_to_forecast: false,
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
        // The policies' floor (spare, schedule, forecast) stays too.
        let kept = Observation { floor: 4, ..obs(0) };
        assert_eq!(floor(&kept, at(6), 0, 6), (at(4), Some(Step::Down)));
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
            floor: 0,
            shrink_to_forecast: false,
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
    fn shrinking_never_goes_below_the_policies_floor() {
        let t0 = Instant::now();
        let mut o = obs(0, 6, 0);
        o.floor = 4;
        let mem = Memory {
            target: 6,
            low_since: Some(t0),
        };
        let (m, step) = decide(&o, mem, t0 + W, W);
        assert_eq!((m.target, step), (4, Some(Step::Down)));
    }

    #[test]
    fn with_the_forecast_a_pool_above_what_it_needs_shrinks_after_a_window() {
        let t0 = Instant::now();
        // 3 busy of 10: utilization 0.3, not low; the floor (forecast) says 6.
        let mut o = obs(3, 10, 0);
        o.max = 10;
        o.floor = 6;
        let mem = Memory {
            target: 10,
            low_since: None,
        };
        // Without shrink_to_forecast the thresholds alone keep 10.
        let (m, _) = decide(&o, mem, t0, W);
        let (m, step) = decide(&o, m, t0 + W, W);
        assert_eq!((m.target, step), (10, None));
        o.shrink_to_forecast = true;
        let (m, step) = decide(&o, mem, t0, W);
        assert_eq!((m.target, step), (10, None));
        let (m, step) = decide(&o, m, t0 + W, W);
        assert_eq!((m.target, step), (6, Some(Step::Down)));
        // Never below what the busy ones need at the high threshold: ⌈5 / 0.8⌉ = 7.
        let mut busy = o;
        busy.busy = 5;
        let (m, _) = decide(&busy, mem, t0, W);
        let (m, step) = decide(&busy, m, t0 + W, W);
        assert_eq!((m.target, step), (7, Some(Step::Down)));
    }

    #[test]
    fn the_window_is_twelve_looks() {
        assert_eq!(
            stabilization_window(Duration::from_secs(5)),
            Duration::from_secs(60)
        );
    }

    // ---- the policies ----

    #[test]
    fn spare_keeps_n_idle_beyond_the_busy_and_queued_and_zero_is_off() {
        assert_eq!(spare_floor(3, 0, 2), 5);
        assert_eq!(spare_floor(3, 2, 2), 7);
        assert_eq!(spare_floor(3, 2, 0), 0);
        // Between min and max, like every floor.
        assert_eq!(policy_floor(spare_floor(9, 0, 2), 0, 0, 1, 8), 8);
        assert_eq!(policy_floor(spare_floor(0, 0, 0), 0, 0, 2, 8), 2);
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_schedule_floors_the_pool_from_each_match_for_its_duration() {
        let office = ScheduleFloor::parse("0 9 * * 1-5", 6, Duration::from_secs(9 * 3600)).unwrap();
        let s = [office];
        let lead = Duration::ZERO;
        // 2026-11-30 is a Monday.
        assert_eq!(schedule_floor(&s, at("2026-11-30T08:59:00Z"), lead), 0);
        assert_eq!(schedule_floor(&s, at("2026-11-30T09:00:00Z"), lead), 6);
        assert_eq!(schedule_floor(&s, at("2026-11-30T17:59:59Z"), lead), 6);
        assert_eq!(schedule_floor(&s, at("2026-11-30T18:00:00Z"), lead), 0);
        // Saturday: no match that day, Friday's window is long over.
        assert_eq!(schedule_floor(&s, at("2026-12-05T10:00:00Z"), lead), 0);
        // The lead starts it early enough for the containers to be up at 09:00.
        let early = Duration::from_secs(30);
        assert_eq!(schedule_floor(&s, at("2026-11-30T08:59:40Z"), early), 6);
    }

    #[test]
    fn overlapping_schedule_entries_take_the_highest_floor() {
        let s = [
            ScheduleFloor::parse("0 9 * * *", 4, Duration::from_secs(8 * 3600)).unwrap(),
            ScheduleFloor::parse("0 12 * * *", 10, Duration::from_secs(3600)).unwrap(),
        ];
        assert_eq!(
            schedule_floor(&s, at("2026-11-30T12:30:00Z"), Duration::ZERO),
            10
        );
        assert_eq!(
            schedule_floor(&s, at("2026-11-30T13:30:00Z"), Duration::ZERO),
            4
        );
    }

    #[test]
    fn a_bad_cron_expression_is_refused_with_the_parsers_reason() {
        assert!(ScheduleFloor::parse("0 25 * * *", 1, Duration::from_secs(60)).is_err());
        assert!(ScheduleFloor::parse("every morning", 1, Duration::from_secs(60)).is_err());
        // Six fields (seconds) are not the five-field form pools.toml documents.
        assert!(ScheduleFloor::parse("0 0 9 * * *", 1, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn the_forecast_is_the_poisson_quantile_of_littles_law() {
        // Nothing arrives: nothing needed.
        assert_eq!(containers_needed(0.0, 1.0, 0.3, 0.01), 0);
        // 2 tasks/s of 1 s plus 0.3 s create: c = 2.6; P(N >= 8) < 1 % < P(N >= 7).
        assert_eq!(containers_needed(2.0, 1.0, 0.3, 0.01), 8);
        // A looser miss needs fewer.
        assert!(containers_needed(2.0, 1.0, 0.3, 0.1) < 8);
        // A rare task: one container covers 98.7 % of arrivals; the 1 % goal takes a second.
        assert_eq!(containers_needed(0.01, 1.0, 0.3, 0.05), 1);
        assert_eq!(containers_needed(0.01, 1.0, 0.3, 0.01), 2);
    }

    fn demand(arrivals: u64, finished: u64, task_seconds: f64) -> Demand {
        Demand {
            arrivals,
            finished,
            task_seconds,
            starts: 1,
            start_seconds: 0.3,
        }
    }

    #[test]
    fn the_forecaster_follows_the_arrival_rate_and_the_durations() {
        let p = ForecastParams::default();
        let t0 = Instant::now();
        let mut f = Forecaster::default();
        f.observe(t0, demand(0, 0, 0.0), &p);
        // 4 tasks/s of 1 s each, looked at every second for 5 minutes.
        for s in 1..=300u64 {
            let at = t0 + Duration::from_secs(s);
            f.observe(at, demand(4 * s, 4 * s, 4.0 * s as f64), &p);
        }
        assert!((f.rate() - 4.0).abs() < 0.05, "rate {}", f.rate());
        assert!((f.mean_duration() - 1.0).abs() < 1e-9);
        let n = f.forecast(t0 + Duration::from_secs(300), &p);
        assert_eq!(n, containers_needed(f.rate(), 1.0, f.create_time(), p.miss));
        // c = 4 × (1 s + 0.5 s of prior create time) = 6: Poisson(6) reaches 11 with a
        // probability of 4.3 %, 10 with 8.4 %.
        assert_eq!(n, 11, "forecast {n}");
    }

    #[test]
    fn a_forecast_is_held_for_its_window_then_forgotten() {
        let p = ForecastParams {
            hold: Duration::from_secs(60),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut f = Forecaster::default();
        f.observe(t0, demand(0, 0, 0.0), &p);
        // A burst: 100 tasks of 2 s in 10 s.
        f.observe(t0 + Duration::from_secs(10), demand(100, 100, 200.0), &p);
        let peak = f.forecast(t0 + Duration::from_secs(10), &p);
        assert!(peak >= 4, "peak {peak}");
        // Quiet: the smoothed rate falls, the held forecast does not, for the window.
        f.observe(t0 + Duration::from_secs(60), demand(100, 100, 200.0), &p);
        assert_eq!(f.forecast(t0 + Duration::from_secs(60), &p), peak);
        f.observe(t0 + Duration::from_secs(300), demand(100, 100, 200.0), &p);
        assert!(f.forecast(t0 + Duration::from_secs(300), &p) < peak);
    }

    #[test]
    fn the_create_time_is_measured_and_a_prior_is_used_before_any_start() {
        let p = ForecastParams::default();
        let t0 = Instant::now();
        let mut f = Forecaster::default();
        assert_eq!(f.create_time(), PRIOR_CREATE_SECONDS);
        f.observe(t0, Demand::default(), &p);
        let d = Demand {
            starts: 4,
            start_seconds: 4.0,
            ..Default::default()
        };
        f.observe(t0 + Duration::from_secs(1), d, &p);
        assert!((f.create_time() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_reset_counter_is_not_negative_demand() {
        let p = ForecastParams::default();
        let t0 = Instant::now();
        let mut f = Forecaster::default();
        f.observe(t0, demand(1000, 1000, 1000.0), &p);
        f.observe(t0 + Duration::from_secs(1), demand(0, 0, 0.0), &p);
        assert!(f.rate() >= 0.0 && f.mean_duration() >= 0.0);
    }
}
