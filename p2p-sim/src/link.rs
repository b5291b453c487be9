//! Link and node parameters of the simulated network.

use std::time::Duration;

use p2p_core::NodeKey;

/// Properties of the path from one node to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for each segment.
    pub jitter: Duration,
    /// Probability in `[0, 1)` that a segment is lost. Streams are
    /// reliable: a lost segment is retransmitted after a timeout, so loss
    /// shows up as delay and lower throughput, never as missing data.
    pub loss: f64,
}

impl Default for LinkSpec {
    /// 5 ms latency, 1 ms jitter, no loss.
    fn default() -> Self {
        LinkSpec {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(1),
            loss: 0.0,
        }
    }
}

impl LinkSpec {
    /// A link with the given latency, no jitter, no loss.
    pub fn latency(latency: Duration) -> Self {
        LinkSpec {
            latency,
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }

    /// This link with `jitter`.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// This link with loss probability `loss` (clamped to `[0, 0.9]`).
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss.clamp(0.0, 0.9);
        self
    }
}

/// Per-node settings.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The node's key; derived from the network seed and the node name
    /// when `None`.
    pub key: Option<NodeKey>,
    /// Upload capacity in bytes per second, shared fairly between all the
    /// node's outgoing flows. `None` is unlimited.
    pub upload: Option<u64>,
    /// Download capacity in bytes per second, shared fairly between all
    /// incoming flows. `None` is unlimited.
    pub download: Option<u64>,
    /// Discovery segment: nodes discover each other only within one LAN.
    pub lan: u32,
    /// How other nodes reach it: directly, or behind NAT.
    pub reach: Reach,
    /// The site it is at: traffic with nodes elsewhere crosses the site's
    /// WAN link ([`SimNet::set_site_link`](crate::SimNet::set_site_link)).
    /// `None`: at no site (its traffic crosses only the other side's).
    pub site: Option<String>,
}

/// A site's link to the rest of the network: every byte between a node
/// of the site and a node elsewhere crosses it, on top of the nodes' own
/// upload and download. Each direction serves the streams waiting on it
/// round robin, one segment at a time (as a router with fair queueing
/// does), so a busy link delays a small message by one turn of the
/// streams crossing it, not by everything queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SiteLink {
    /// Bytes per second out of the site; `None` is unlimited.
    pub upload: Option<u64>,
    /// Bytes per second into the site; `None` is unlimited.
    pub download: Option<u64>,
    /// One-way delay added to every path in or out of the site.
    pub latency: Duration,
}

impl SiteLink {
    /// `mbit_per_s` megabits per second each way, `latency` one way.
    pub fn mbit(mbit_per_s: u64, latency: Duration) -> Self {
        let bytes = mbit_per_s * 1_000_000 / 8;
        SiteLink {
            upload: Some(bytes),
            download: Some(bytes),
            latency,
        }
    }
}

/// How a simulated node is reached through NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reach {
    /// A public address: connections go straight to it. The default.
    #[default]
    Public,
    /// Behind a NAT that hole punching gets through: its connections are
    /// direct; one dialed to it waits for a round of signalling through
    /// `relay` (a node name) first.
    Punchable {
        /// The relay node that carries the signalling.
        relay: String,
    },
    /// Behind a NAT that hole punching does not get through (symmetric,
    /// or a strict firewall): its connections with public nodes are
    /// direct (it connects out; one dialed to it waits for a round of
    /// signalling through `relay` first), those with other nodes behind
    /// NAT go through `relay`, whose upload and download carry every byte
    /// both ways. Such a connection fails while the relay is down, and
    /// ends when it goes down.
    RelayOnly {
        /// The relay node.
        relay: String,
    },
}

impl NodeConfig {
    /// Symmetric bandwidth in megabits per second.
    pub fn mbit(mut self, mbit_per_s: u64) -> Self {
        let bytes = mbit_per_s * 1_000_000 / 8;
        self.upload = Some(bytes);
        self.download = Some(bytes);
        self
    }

    /// This config with a fixed key.
    pub fn with_key(mut self, key: NodeKey) -> Self {
        self.key = Some(key);
        self
    }

    /// This config behind NAT, reached as `reach` says.
    pub fn reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    /// This config at site `site`.
    pub fn at_site(mut self, site: impl Into<String>) -> Self {
        self.site = Some(site.into());
        self
    }

    /// This config in discovery segment `lan`.
    pub fn in_lan(mut self, lan: u32) -> Self {
        self.lan = lan;
        self
    }
}
