//! Request rates: how many read-only requests each peer may send, so that
//! one peer polling in a tight loop cannot starve a deploy or the others.

use std::collections::BTreeMap;
use std::time::Duration;

use p2p_core::PeerId;

use crate::proto::Request;

/// A per-peer token bucket: `per_second` requests on average, up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests at once, after a quiet spell.
    pub burst: f64,
}

impl Default for RequestRate {
    /// 50 a second, 100 at once: far above what `p2pctl` or a dashboard
    /// polling every 50 ms asks.
    fn default() -> Self {
        RequestRate {
            per_second: 50.0,
            burst: 100.0,
        }
    }
}

/// The request buckets of the peers that asked lately.
#[derive(Default)]
pub(in crate::agent) struct RateBook {
    buckets: BTreeMap<PeerId, (f64, tokio::time::Instant)>,
}

/// How long a request over its peer's rate waits for its "busy".
pub(in crate::agent) const OVER_RATE_DELAY: Duration = Duration::from_secs(1);

/// Peers remembered at most; past it, those whose bucket is full again
/// are forgotten.
const MAX_RATED_PEERS: usize = 4096;

impl RateBook {
    /// Takes a token from `peer`'s bucket; false when it is empty.
    pub(in crate::agent) fn take(&mut self, peer: PeerId, rate: RequestRate) -> bool {
        let now = tokio::time::Instant::now();
        let refill = |(tokens, at): (f64, tokio::time::Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * rate.per_second).min(rate.burst)
        };
        if self.buckets.len() >= MAX_RATED_PEERS && !self.buckets.contains_key(&peer) {
            self.buckets.retain(|_, b| refill(*b) < rate.burst);
        }
        let b = self.buckets.entry(peer).or_insert((rate.burst, now));
        let tokens = refill(*b);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            true
        } else {
            *b = (tokens, now);
            false
        }
    }
}

/// Whether `r` counts against a peer's [`RequestRate`]: the read-only
/// requests. Changes come from operators, and chunk transfers have
/// upload slots.
pub(in crate::agent) fn counts_against_rate(r: &Request) -> bool {
    !r.is_mutating()
        && !matches!(
            r,
            Request::FetchChunks { .. }
                | Request::Swarm { .. }
                | Request::FetchAny { .. }
                | Request::Gossip { .. }
        )
}
