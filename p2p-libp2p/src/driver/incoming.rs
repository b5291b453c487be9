//! The limit on inbound peers: `max_incoming_connections` counts peers
//! with an inbound connection, not libp2p connections.
//!
//! A dialer tries a peer's TCP and QUIC addresses at once and keeps
//! whichever connection it set up first. Counted per connection (as
//! `libp2p-connection-limits` does), the last free place could go to one
//! of those two connections at the listener and the limit refuse the
//! other, and when the dialer kept the refused one, a peer the limit had
//! room for was turned away. Counted per peer, a peer already in is never
//! refused by this limit (`max_connections_per_peer` still bounds its
//! connections).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// Refuses an inbound connection from a new peer while `max` peers have
/// inbound connections.
pub(crate) struct IncomingPeers {
    max: usize,
    inbound: BTreeMap<libp2p::PeerId, BTreeSet<ConnectionId>>,
}

impl IncomingPeers {
    pub(crate) fn new(max: u32) -> Self {
        IncomingPeers {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            inbound: BTreeMap::new(),
        }
    }
}

/// Why an inbound connection was refused.
#[derive(Debug)]
pub(crate) struct TooManyPeers {
    max: usize,
}

impl std::fmt::Display for TooManyPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection limit: {} peers already have inbound connections (max_incoming_connections)",
            self.max
        )
    }
}

impl std::error::Error for TooManyPeers {}

impl NetworkBehaviour for IncomingPeers {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: libp2p::PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.inbound.contains_key(&peer) && self.inbound.len() >= self.max {
            return Err(ConnectionDenied::new(TooManyPeers { max: self.max }));
        }
        self.inbound.entry(peer).or_default().insert(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: libp2p::PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            ..
        }) = event
            && let Some(ids) = self.inbound.get_mut(&peer_id)
        {
            ids.remove(&connection_id);
            if ids.is_empty() {
                self.inbound.remove(&peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: libp2p::PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Multiaddr {
        "/ip4/127.0.0.1/tcp/1".parse().unwrap()
    }

    fn inbound(b: &mut IncomingPeers, c: usize, p: libp2p::PeerId) -> bool {
        b.handle_established_inbound_connection(ConnectionId::new_unchecked(c), p, &addr(), &addr())
            .is_ok()
    }

    #[test]
    fn a_peer_in_is_never_refused_and_a_new_one_waits_for_a_place() {
        let mut b = IncomingPeers::new(1);
        let (p, q) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        assert!(inbound(&mut b, 1, p));
        // The same peer's second connection (its dial over the other
        // transport) is let in; another peer is not.
        assert!(inbound(&mut b, 2, p));
        assert!(!inbound(&mut b, 3, q));
        for c in [1, 2] {
            b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: p,
                connection_id: ConnectionId::new_unchecked(c),
                endpoint: &libp2p::core::ConnectedPoint::Listener {
                    local_addr: addr(),
                    send_back_addr: addr(),
                },
                cause: None,
                remaining_established: 0,
            }));
        }
        assert!(inbound(&mut b, 4, q), "a place freed when p left");
    }
}
