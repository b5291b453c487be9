//! Bandwidth caps on the chunk bytes a node serves and fetches.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A byte-rate cap: each [`take`](Self::take) reserves the time its bytes
/// take at the rate, after the reservations before it, and waits until its
/// turn. The first caller goes at once; over time no more than the rate
/// goes through. On tokio time, so runs in the simulator are the same for
/// the same seed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use p2p_deploy::swarm::Throttle;
/// let t = Throttle::new(1000); // bytes per second
/// let begun = tokio::time::Instant::now();
/// for _ in 0..3 {
///     t.take(500).await; // at 0 s, 0.5 s and 1 s
/// }
/// assert_eq!(begun.elapsed(), std::time::Duration::from_secs(1));
/// # }
/// ```
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(None),
        }
    }

    /// The cap, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` may go, and books them.
    pub async fn take(&self, bytes: u64) {
        let start = self.book(bytes, None).unwrap_or_else(Instant::now);
        tokio::time::sleep_until(start).await;
    }

    /// Books `bytes` and returns when they may go, unless that would be
    /// after `latest`: then nothing is booked and the answer is `None`.
    pub fn book(&self, bytes: u64, latest: impl Into<Option<Instant>>) -> Option<Instant> {
        let mut next = p2p_core::sync::lock(&self.next);
        let now = Instant::now();
        let start = next.map_or(now, |n| n.max(now));
        if latest.into().is_some_and(|l| start > l) {
            return None;
        }
        *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64));
        Some(start)
    }
}
