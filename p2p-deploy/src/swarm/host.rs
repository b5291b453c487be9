//! What the swarm needs from the node it runs on (the agent, or a test).

use std::sync::Arc;

use futures::future::BoxFuture;
use p2p_core::{Connection, PeerAddr, PeerId, Result};

use super::config::SwarmConfig;
use super::reputation::Reputation;
use super::throttle::Throttle;
use crate::chunks::ChunkStore;

/// What the swarm needs from the node it runs on.
pub(crate) trait Host: Clone + Send + Sync + 'static {
    fn chunks(&self) -> &ChunkStore;
    fn reputation(&self) -> &Reputation;
    /// The node's counters.
    fn metrics(&self) -> &crate::metrics::DeployMetrics;
    fn swarm_config(&self) -> &SwarmConfig;
    /// The node's download cap, if it has one.
    fn download_limit(&self) -> Option<Arc<Throttle>>;
    fn local_id(&self) -> PeerId;
    /// A uniform number in `0..n` from the node's seeded RNG.
    fn random(&self, n: usize) -> usize;
    /// Runs `f` in the background, owned by the node.
    fn spawn(&self, f: BoxFuture<'static, ()>);
    /// A connection to `addr` whose inbound streams the node serves.
    fn dial(&self, addr: PeerAddr) -> BoxFuture<'static, Result<Arc<dyn Connection>>>;
    /// The node's site, if it knows it.
    fn site(&self) -> Option<String>;
    /// `peer`'s site, if the node knows it.
    fn site_of(&self, peer: &PeerId) -> Option<String>;
}
