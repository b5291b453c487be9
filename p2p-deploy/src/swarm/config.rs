//! How an agent takes part in swarms: neighbours, requests in flight,
//! upload slots, timeouts, reputation and bandwidth caps.

use std::time::Duration;

use super::reputation::ReputationPolicy;

/// How an agent takes part in swarms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Neighbours a target wants: it opens sessions to peers from the
    /// deploy's list, a few at a time, until it has this many, counting
    /// the sessions others opened to it. So every target ends up with
    /// about as many, and none is left with a few slow sources.
    pub dial: usize,
    /// Most neighbours per transfer, sessions opened by others included.
    pub max_neighbors: usize,
    /// Chunk requests in flight to one neighbour (one, after it failed or
    /// said it was busy, until it serves a chunk faster than usual; twice
    /// as many while the node is behind its neighbours, to catch up).
    pub per_peer: usize,
    /// Chunk requests this node serves at once (at least 1); one more is
    /// refused as busy at once, and its client asks another holder. A
    /// node that holds a chunk new to the fleet is asked for it by all its
    /// neighbours: without a limit each copy crawls through a shared
    /// uplink while other holders wait idle.
    pub upload_slots: usize,
    /// "Any chunk" requests in flight to the seed.
    pub seed_inflight: usize,
    /// How long one chunk request may take before it counts as failed.
    pub chunk_timeout: Duration,
    /// How scores move and when a peer is banned.
    pub reputation: ReputationPolicy,
    /// Most bytes per second of chunks this node serves to peers (swarm
    /// and chunk requests); `None`: no cap.
    pub upload_limit: Option<u64>,
    /// Most bytes per second of chunks this node fetches; `None`: no cap.
    pub download_limit: Option<u64>,
    /// Site awareness: a node that knows its site (its `site` label) and
    /// its neighbours' (from membership records) fetches from neighbours
    /// at other sites only the chunks no neighbour at its own site holds,
    /// and of those only the ones it is designated for among its site's
    /// peers in the deploy, so that each chunk crosses the site's WAN
    /// link about once. See the [swarm docs](super).
    pub sites: bool,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            dial: 10,
            max_neighbors: 24,
            per_peer: 2,
            upload_slots: 16,
            seed_inflight: 2,
            chunk_timeout: Duration::from_secs(60),
            reputation: ReputationPolicy::default(),
            upload_limit: None,
            download_limit: None,
            sites: true,
        }
    }
}
