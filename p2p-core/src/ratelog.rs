//! Log lines that a peer can trigger at will (a refused handshake, a bad
//! request), rate-limited so that a misbehaving peer cannot flood a
//! node's log: at most one line per key (a peer's address, say) per
//! period, and the next one says how many were held back.
//!
//! ```
//! use std::time::Duration;
//! use p2p_core::ratelog::LogLimiter;
//!
//! let limit = LogLimiter::new(Duration::from_secs(10));
//! if let Some(held_back) = limit.allow("10.0.0.7:4100") {
//!     // log the refusal, saying `held_back` more were not logged before
//!     assert_eq!(held_back, 0);
//! }
//! assert_eq!(limit.allow("10.0.0.7:4100"), None); // within the period
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Keys remembered at most: past this, keys whose period ran out are
/// forgotten, and if none has, lines for new keys are held back.
const MAX_KEYS: usize = 4096;

/// Allows one log line per key per period; see the [module docs](self).
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    seen: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// At most one line per key per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a line for `key` may be logged now: `Some(n)` with the
    /// number of lines for it held back since the last one, or `None`
    /// (counted, to be reported with the next line).
    pub fn allow(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((last, held)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let n = std::mem::take(held);
            *last = now;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            let every = self.every;
            seen.retain(|_, (last, _)| now.duration_since(*last) < every);
            if seen.len() >= MAX_KEYS {
                return None;
            }
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

/// The tail of a line let through after `held` were held back: empty, or
/// " (N more like it not logged)".
pub fn held_back(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more like it not logged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period_and_the_count_held_back() {
        let l = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("b"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow("a"), Some(2));
        assert_eq!(l.allow("b"), Some(0));
    }
}
