//! The network behaviours composed into a provider's swarm.

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{allow_block_list, connection_limits, dcutr, identify, mdns, ping, relay};

/// The behaviours of a provider's swarm. The allow-list and the
/// connection limits come first, so they refuse a connection before any
/// other behaviour sets up a handler for it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub(crate) limits: connection_limits::Behaviour,
    /// `max_incoming_connections`, counted per peer.
    pub(crate) incoming: super::incoming::IncomingPeers,
    pub(crate) stream: crate::streams::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Tells peers the address it sees them at (their NAT's), which hole
    /// punching needs, and learns its own the same way.
    pub(crate) identify: identify::Behaviour,
    /// Circuits through relays: reservations on them, dials through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Direct connection upgrade through relay: hole punching.
    pub(crate) dcutr: dcutr::Behaviour,
    /// Serving as a relay for others, when configured.
    pub(crate) relay: Toggle<relay::Behaviour>,
}
