//! What the swarm task does for each swarm event: connections set up and
//! closed, dials failed, listen addresses, pings, identify, relay
//! reservations, hole punching, mDNS.

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{dcutr, identify, mdns, ping, relay};
use p2p_core::sync::lock;

use super::behaviour::BehaviourEvent;
use super::errors::{dial_error, error_chain, same_error};
use super::{ConnState, Driver, REMEMBER_CLOSED, RelayState, short};
use crate::addr;
use crate::transport::is_relayed;

impl Driver {
    pub(super) fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let remote = match &endpoint {
                    libp2p::core::ConnectedPoint::Dialer { address, .. } => address.clone(),
                    libp2p::core::ConnectedPoint::Listener {
                        local_addr,
                        send_back_addr,
                    } => {
                        if relayed {
                            local_addr.clone()
                        } else {
                            send_back_addr.clone()
                        }
                    }
                };
                tracing::debug!(
                    peer = %short(&peer_id),
                    path = if relayed { "relayed" } else { "direct" },
                    %remote,
                    "libp2p connection established"
                );
                self.paths
                    .established(peer_id, connection_id, remote, relayed);
                self.connections
                    .insert(connection_id, (peer_id, tokio::time::Instant::now()));
                if let Some(slot) = self.relays.iter_mut().find(|r| r.peer == peer_id)
                    && slot.state == RelayState::Dialing
                {
                    slot.state = RelayState::Identifying;
                    if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint
                        && !relayed
                    {
                        // Reserve at the address that answered.
                        let mut a = address.clone();
                        if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                            a.push(Protocol::P2p(peer_id));
                        }
                        slot.addr = a;
                    }
                }
                if let Some((_, waiters)) = self.pending.remove(&peer_id) {
                    if relayed && !self.hole_punch_wait.is_zero() {
                        let until = tokio::time::Instant::now() + self.hole_punch_wait;
                        self.holding.insert(peer_id, (until, waiters));
                    } else {
                        for (_, w) in waiters {
                            let _ = w.send(Ok(connection_id));
                        }
                    }
                }
                if !relayed && self.holding.contains_key(&peer_id) {
                    self.release_held(Some(peer_id));
                }
                self.relay_settled(&peer_id, None);
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(?connection_id, ?cause, "libp2p connection closed");
                if let Some((peer, since)) = self.connections.remove(&connection_id) {
                    self.paths.closed(&peer, connection_id);
                    let still = self.connections.values().any(|(p, _)| *p == peer);
                    if !still {
                        self.relay_lost(&peer, "the connection to it closed");
                    }
                    // An I/O error is the peer closing or the link failing;
                    // no cause means we closed it, a keep-alive timeout that
                    // it was idle.
                    let state = match cause {
                        Some(libp2p::swarm::ConnectionError::IO(_)) => ConnState::ClosedByPeer {
                            after: since.elapsed(),
                        },
                        _ => ConnState::Closed,
                    };
                    self.ended.insert(connection_id, state);
                    while self.ended.len() > REMEMBER_CLOSED {
                        self.ended.pop_first();
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error,
            } => {
                // A dial a caller waits for, a relay this node reserves
                // on, or both; the dials parked for that relay go on.
                let waiters = match self.pending.get(&peer) {
                    Some((c, _)) if *c == connection_id => self.pending.remove(&peer),
                    _ => None,
                };
                let relay = self
                    .relays
                    .iter()
                    .any(|r| r.peer == peer && r.state == RelayState::Dialing);
                let parked = self.parked.values().any(|p| p.relays.contains(&peer));
                if waiters.is_some() || relay || parked {
                    let who = waiters
                        .as_ref()
                        .and_then(|(_, w)| w.first())
                        .map_or_else(|| "the relay".to_string(), |(w, _)| w.clone());
                    let e = dial_error(&who, error, self.setup, self.tcp_wait);
                    if relay {
                        self.relay_failed(&peer, format!("unreachable: {e}"));
                    }
                    for (_, w) in waiters.map(|(_, w)| w).unwrap_or_default() {
                        let _ = w.send(Err(same_error(&e)));
                    }
                    self.relay_settled(&peer, Some(&e));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let announce = self.relay_server
                    && !is_relayed(&address)
                    && (self.loopback_only || !addr::is_loopback(&address));
                {
                    let mut addrs = lock(&self.listen_addrs);
                    if !addrs.contains(&address) {
                        addrs.push(address.clone());
                    }
                }
                if announce {
                    // A relay hands these to the nodes that reserve on it.
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(i) = self.relays.iter().position(|r| {
                    matches!(r.state, RelayState::Listening(l) | RelayState::Reserved(l) if l == listener_id)
                }) {
                    let why = match reason {
                        Ok(()) => "its reservation ended".to_string(),
                        Err(e) => format!("reservation refused or lost: {}", error_chain(&e)),
                    };
                    let peer = self.relays[i].peer;
                    self.relay_failed(&peer, why);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            })) => self.paths.rtt(&peer, connection, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) => self.identified(peer_id),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => self.reserved(relay_peer_id, renewal),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(conn) => {
                    self.paths.punched(true);
                    let remote = self
                        .paths
                        .remote_of(&remote_peer_id, conn)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    tracing::info!(
                        peer = %short(&remote_peer_id),
                        path = "direct",
                        was = "relayed",
                        %remote,
                        "path changed: hole punched"
                    );
                }
                Err(e) => {
                    self.paths.punched(false);
                    tracing::info!(
                        peer = %short(&remote_peer_id),
                        error = %error_chain(&e),
                        "hole punching failed; traffic stays on the relay"
                    );
                    self.release_held(Some(remote_peer_id));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => {
                tracing::debug!(event = ?ev, "serving as a relay");
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.listen_addrs).retain(|a| *a != address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                tracing::debug!(%peer, %failure, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(ev)) => self.on_mdns(ev),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // The host, not the port: a peer retrying comes from new
                // ports.
                let host = send_back_addr
                    .iter()
                    .next()
                    .map_or_else(|| send_back_addr.to_string(), |p| p.to_string());
                if let Some(held) = self.refusals.allow(&host) {
                    tracing::warn!(
                        address = %send_back_addr,
                        "refused an inbound connection: {}{}",
                        error_chain(&error),
                        p2p_core::ratelog::held_back(held)
                    );
                }
            }
            _ => {}
        }
    }

    fn on_mdns(&mut self, ev: mdns::Event) {
        match ev {
            mdns::Event::Discovered(list) => {
                let mut changed = Vec::new();
                for (peer, ma) in list {
                    // Peers with other key types cannot be p2p-deploy nodes.
                    let Ok(id) = addr::from_libp2p(&peer) else {
                        continue;
                    };
                    let known = self.found.entry(id).or_default();
                    if !known.contains(&ma) {
                        known.push(ma);
                        changed.push(id);
                    }
                }
                changed.dedup();
                for id in changed {
                    if let Ok(pa) = addr::to_peer_addr(&id, self.found[&id].clone()) {
                        tracing::debug!(peer = %pa, "mDNS discovered a peer");
                        self.book.seen(pa);
                    }
                }
            }
            mdns::Event::Expired(list) => {
                for (peer, ma) in list {
                    let Ok(id) = addr::from_libp2p(&peer) else {
                        continue;
                    };
                    if let Some(known) = self.found.get_mut(&id) {
                        known.retain(|a| *a != ma);
                        if known.is_empty() {
                            self.found.remove(&id);
                            self.book.expired(&id);
                        }
                    }
                }
            }
        }
    }
}
