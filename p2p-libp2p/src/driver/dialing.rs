//! Dialing a peer for a provider handle: one dial per peer however many
//! wait for it, relays reached before circuits through them are dialed,
//! and a dial that ended on a relayed connection held up to
//! `hole_punch_wait` for hole punching to give a direct one.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use p2p_core::{Error, Result};
use tokio::sync::oneshot;

use super::errors::{dial_error, same_error, through_failed_relays};
use super::{DialWaiters, Driver, Parked};

impl Driver {
    pub(super) fn dial(
        &mut self,
        peer: libp2p::PeerId,
        addrs: Vec<Multiaddr>,
        who: String,
        reply: oneshot::Sender<Result<ConnectionId>>,
    ) {
        if let Some(conn) = self.paths.best_connection(&peer) {
            let _ = reply.send(Ok(conn));
            return;
        }
        if let Some((_, waiters)) = self.pending.get_mut(&peer) {
            waiters.push((who, reply));
            return;
        }
        if let Some(p) = self.parked.get_mut(&peer) {
            p.waiters.push((who, reply));
            return;
        }
        let addrs = if addrs.is_empty() {
            // Known by id alone: try it through every relay, besides what
            // mDNS may know.
            self.relays
                .iter()
                .map(|r| r.addr.clone().with(Protocol::P2pCircuit))
                .collect()
        } else {
            addrs
        };
        // The relay client fails concurrent circuits through a relay it is
        // still dialing ("oneshot canceled"): reach the relays first.
        let mut relays = BTreeSet::new();
        for (relay, relay_addr) in circuit_relays(&addrs) {
            if self.swarm.is_connected(&relay) {
                continue;
            }
            let opts = DialOpts::peer_id(relay)
                .addresses(vec![relay_addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                    relays.insert(relay);
                }
                // Not reachable: the circuit dial below reports it.
                Err(_) => {}
            }
        }
        if !relays.is_empty() {
            self.parked.insert(
                peer,
                Parked {
                    relays,
                    addrs,
                    waiters: vec![(who, reply)],
                    relay_error: None,
                },
            );
            return;
        }
        self.dial_now(peer, addrs, vec![(who, reply)]);
    }

    fn dial_now(&mut self, peer: libp2p::PeerId, addrs: Vec<Multiaddr>, waiters: DialWaiters) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::Always)
            .build();
        let conn = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending.insert(peer, (conn, waiters));
            }
            Err(e) => {
                let who = waiters.first().map(|(w, _)| w.clone()).unwrap_or_default();
                let e = dial_error(&who, e, self.setup, self.tcp_wait);
                for (_, w) in waiters {
                    let _ = w.send(Err(same_error(&e)));
                }
            }
        }
    }

    /// `relay` is connected, or could not be (`failed` says why): the dials
    /// that waited for it (and for no other relay) go ahead. Circuits
    /// through a relay that failed are not tried again (it would cost
    /// another set-up timeout); a dial left with no address fails with the
    /// relay's error.
    pub(super) fn relay_settled(&mut self, relay: &libp2p::PeerId, failed: Option<&Error>) {
        let ready: Vec<libp2p::PeerId> = self
            .parked
            .iter_mut()
            .filter_map(|(peer, p)| {
                if !p.relays.remove(relay) {
                    return None;
                }
                if let Some(e) = failed {
                    p.addrs
                        .retain(|a| relay_of(a).is_none_or(|(r, _)| r != *relay));
                    p.relay_error.get_or_insert_with(|| same_error(e));
                }
                p.relays.is_empty().then_some(*peer)
            })
            .collect();
        for peer in ready {
            let Some(p) = self.parked.remove(&peer) else {
                continue;
            };
            match p.relay_error {
                Some(e) if p.addrs.is_empty() => {
                    for (who, w) in p.waiters {
                        let _ = w.send(Err(through_failed_relays(&who, &e)));
                    }
                }
                _ => self.dial_now(peer, p.addrs, p.waiters),
            }
        }
    }

    /// Answers held dials: those of `peer` (it has a direct connection now,
    /// or hole punching failed), or with `None` those whose wait is over;
    /// each gets the best connection there is (direct first).
    pub(super) fn release_held(&mut self, peer: Option<libp2p::PeerId>) {
        let now = tokio::time::Instant::now();
        let due: Vec<libp2p::PeerId> = self
            .holding
            .iter()
            .filter(|(p, (until, _))| Some(**p) == peer || *until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let Some((_, waiters)) = self.holding.remove(&p) else {
                continue;
            };
            let best = self.paths.best_connection(&p);
            for (who, w) in waiters {
                let _ = w.send(best.ok_or_else(|| {
                    Error::unreachable(format!(
                        "the relayed connection to {who} was lost before it could be used"
                    ))
                }));
            }
        }
    }
}

/// The relay a circuit address goes through: its id and address.
fn relay_of(a: &Multiaddr) -> Option<(libp2p::PeerId, Multiaddr)> {
    let mut prefix = Multiaddr::empty();
    let mut last_peer = None;
    for p in a.iter() {
        if p == Protocol::P2pCircuit {
            return last_peer.map(|relay| (relay, prefix));
        }
        if let Protocol::P2p(id) = p {
            last_peer = Some(id);
        }
        prefix.push(p);
    }
    None
}

/// The relays that `addrs` go through: each relay's id and address.
fn circuit_relays(addrs: &[Multiaddr]) -> BTreeMap<libp2p::PeerId, Multiaddr> {
    let mut out = BTreeMap::new();
    for (relay, addr) in addrs.iter().filter_map(relay_of) {
        out.entry(relay).or_insert(addr);
    }
    out
}
