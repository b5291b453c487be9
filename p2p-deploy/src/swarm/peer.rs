//! A node's own part in swarm transfers: the releases it is receiving,
//! the standing of the peers it met, its bandwidth caps, the connections
//! it dialed to swarm peers, and the seeded randomness of its choices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use p2p_core::sync::lock;

use super::config::SwarmConfig;
use super::reputation::Reputation;
use super::throttle::Throttle;
use super::transfer::Transfer;
use crate::package::PackageId;
use crate::pool::Pool;

/// A node as a swarm peer (the agent holds one).
pub(crate) struct SwarmPeer {
    /// Releases being received, for the sessions about them.
    pub(crate) transfers: Mutex<BTreeMap<PackageId, Arc<Transfer>>>,
    /// Scores and bans of the peers met.
    pub(crate) reputation: Reputation,
    /// Cap on the chunk bytes served, if any.
    pub(crate) upload: Option<Arc<Throttle>>,
    /// Cap on the chunk bytes fetched, if any.
    pub(crate) download: Option<Arc<Throttle>>,
    /// Connections this node dialed to swarm peers, reused.
    pub(crate) dialed: Pool,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
}

impl SwarmPeer {
    /// A peer under `cfg`, its choices drawn from an RNG seeded with
    /// `seed`.
    pub(crate) fn new(cfg: &SwarmConfig, seed: u64) -> Self {
        use rand::SeedableRng;
        SwarmPeer {
            transfers: Mutex::new(BTreeMap::new()),
            reputation: Reputation::new(cfg.reputation.clone()),
            upload: cfg.upload_limit.map(|r| Arc::new(Throttle::new(r))),
            download: cfg.download_limit.map(|r| Arc::new(Throttle::new(r))),
            dialed: Pool::default(),
            rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// A uniform number in `0..n` (`0` when `n` is 0).
    pub(crate) fn random(&self, n: usize) -> usize {
        rand::RngExt::random_range(&mut *lock(&self.rng), 0..n.max(1))
    }

    /// The transfer of `package` being received, if any.
    pub(crate) fn receiving(&self, package: &PackageId) -> Option<Arc<Transfer>> {
        lock(&self.transfers).get(package).cloned()
    }
}
