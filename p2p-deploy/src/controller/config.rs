//! How a controller behaves.

use std::time::Duration;

use p2p_core::PeerAddr;

/// How the controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Nodes to reach besides those discovered.
    pub bootstrap: Vec<PeerAddr>,
    /// Deadline of quick requests (info, status, start, stop, ...).
    pub request_timeout: Duration,
    /// Deadline of verification and transfer in a deploy.
    pub deploy_timeout: Duration,
    /// The bound on connecting to a node.
    pub connect_timeout: Duration,
    /// A node that sends nothing for this long while it works on a
    /// request (a deploy's transfer, install or health gate, a switch, a
    /// status) is reported as having stopped answering, and the request
    /// fails: a node killed or cut off mid-rollout counts as failed within
    /// seconds instead of at the transport's idle timeout. Nodes send a
    /// heartbeat every [`proto::HEARTBEAT`](crate::proto::HEARTBEAT), so
    /// keep this to a few of them; `None`: no such check.
    pub node_silence: Option<Duration>,
    /// Whether targets fetch from each other (the swarm) as well as from
    /// the controller. Off, every byte comes from the controller.
    pub swarm: bool,
    /// Swarm peers given to each target (a random subset of the others).
    pub swarm_peers: usize,
    /// Site awareness, for targets with a `site` label: each target is
    /// given every other target at its site (up to
    /// [`SITE_PEERS`](crate::controller::SITE_PEERS)) and
    /// [`remote_peers`](Self::remote_peers) at other sites as swarm peers,
    /// and the seed sends each chunk to every site once before any site
    /// twice.
    pub sites: bool,
    /// With [`sites`](Self::sites): swarm peers at other sites given to
    /// each target.
    pub remote_peers: usize,
    /// With the swarm on: how many nodes are sent the release's
    /// descriptor itself ([`Request::Deploy`](crate::proto::Request::Deploy)), counting those that took
    /// it in earlier batches. The others get [`Request::DeployRef`](crate::proto::Request::DeployRef) and
    /// take the descriptor from two of those, so that the controller's
    /// uplink does not carry a copy per target (13 KB per 100 MB of
    /// package) before the first chunk moves. `usize::MAX`: every
    /// target gets the descriptor (agents older than `DeployRef` need
    /// that).
    pub descriptor_copies: usize,
    /// Seed of the controller's own randomness (which peers each target
    /// is given, the seed's tie-breaks).
    pub seed: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            bootstrap: Vec::new(),
            request_timeout: Duration::from_secs(30),
            deploy_timeout: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(10),
            node_silence: Some(Duration::from_secs(5)),
            swarm: true,
            swarm_peers: 12,
            sites: true,
            remote_peers: 4,
            descriptor_copies: 16,
            seed: 0,
        }
    }
}
