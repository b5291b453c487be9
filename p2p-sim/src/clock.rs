//! [`SimClock`]: wall-clock timestamps that follow virtual time.

use p2p_core::{Clock, Timestamp};
use tokio::time::Instant;

/// A [`Clock`] that starts at a fixed wall time and advances with tokio's
/// (paused, virtual) time, so records made in a simulation are the same on
/// every run.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start_ms: u64,
    epoch: Instant,
}

impl SimClock {
    /// The default start: 2030-01-01T00:00:00Z.
    pub const DEFAULT_START_MS: u64 = 1_893_456_000_000;

    /// A clock reading `start_ms` (Unix milliseconds) now.
    pub fn new(start_ms: u64) -> Self {
        SimClock {
            start_ms,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn with_epoch(start_ms: u64, epoch: Instant) -> Self {
        SimClock { start_ms, epoch }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.start_ms + self.epoch.elapsed().as_millis() as u64)
    }
}
