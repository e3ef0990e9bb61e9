//! Why a pool woke its reconcile loop: typed, so the loop can log why it ran.

/// Why a pool's reconcile loop was woken before its next tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A task had to queue: demand the autoscaler acts on at once.
    Queued,
    /// A container left the pool (retired, found dead, taken by a session).
    Retired,
    /// A container start ended, well or not.
    StartEnded,
    /// A reload changed the pool's config.
    Config,
    /// The engine answers again after an outage.
    Engine,
    /// The pool was closed.
    Closed,
    /// A task took an idle container: the policies that keep spares look again.
    Taken,
    /// A pre-warm floor was set or cleared through the API.
    Prewarm,
}

impl Wake {
    const ALL: [Wake; 8] = [
        Wake::Queued,
        Wake::Retired,
        Wake::StartEnded,
        Wake::Config,
        Wake::Engine,
        Wake::Closed,
        Wake::Taken,
        Wake::Prewarm,
    ];

    pub(super) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The reasons a loop was woken for since it last looked.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Wakes(u8);

impl Wakes {
    pub(super) fn from_bits(bits: u8) -> Wakes {
        Wakes(bits)
    }

    /// Whether `w` is among the reasons.
    pub fn contains(&self, w: Wake) -> bool {
        self.0 & w.bit() != 0
    }
}

impl std::fmt::Debug for Wakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(Wake::ALL.iter().filter(|w| self.contains(**w)))
            .finish()
    }
}
