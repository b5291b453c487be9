//! Reservations on the configured relays: dialed when due, asked for a
//! reservation once identify told this node its observed address, and
//! retried every `relay_retry` after a failure, which is logged when it
//! changes and reported through [`RelayReport`]s.

use libp2p::multiaddr::Protocol;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use p2p_core::sync::lock;

use super::{Driver, RelayReport, RelayState, short};
use crate::addr;

impl Driver {
    /// Dials the relays that are due.
    pub(super) fn dial_relays(&mut self) {
        let now = tokio::time::Instant::now();
        for i in 0..self.relays.len() {
            let slot = &self.relays[i];
            if slot.state != RelayState::Idle || slot.retry_at > now {
                continue;
            }
            if self.swarm.is_connected(&slot.peer) {
                self.relays[i].state = RelayState::Identifying;
                // Its identify came long ago: reserve now.
                let peer = self.relays[i].peer;
                self.identified(peer);
                continue;
            }
            let opts = DialOpts::peer_id(slot.peer)
                .addresses(slot.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let peer = slot.peer;
            match self.swarm.dial(opts) {
                Ok(()) => self.relays[i].state = RelayState::Dialing,
                Err(DialError::DialPeerConditionFalse(_)) => {
                    self.relays[i].state = RelayState::Dialing;
                }
                Err(e) => self.relay_failed(&peer, format!("cannot dial it: {e}")),
            }
        }
    }

    /// A peer's identify arrived; a relay waiting for it is asked for a
    /// reservation.
    pub(super) fn identified(&mut self, peer: libp2p::PeerId) {
        let Some(i) = self.relays.iter().position(|r| r.peer == peer) else {
            return;
        };
        if self.relays[i].state != RelayState::Identifying {
            return;
        }
        let circuit = self.relays[i].addr.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit) {
            Ok(l) => self.relays[i].state = RelayState::Listening(l),
            Err(e) => self.relay_failed(&peer, format!("cannot listen through it: {e}")),
        }
    }

    pub(super) fn reserved(&mut self, relay: libp2p::PeerId, renewal: bool) {
        let Some(slot) = self.relays.iter_mut().find(|r| r.peer == relay) else {
            return;
        };
        if let RelayState::Listening(l) = slot.state {
            slot.state = RelayState::Reserved(l);
        }
        if !renewal || slot.problem.is_some() {
            tracing::info!(relay = %short(&relay), addr = %slot.addr, "relay reservation accepted: peers can reach this node through it");
        }
        slot.problem = None;
        self.report_relays();
    }

    /// A relay's connection went: reserve again once it is back.
    pub(super) fn relay_lost(&mut self, peer: &libp2p::PeerId, why: &str) {
        if let Some(slot) = self.relays.iter().find(|r| r.peer == *peer)
            && matches!(slot.state, RelayState::Identifying)
        {
            let why = why.to_string();
            self.relay_failed(peer, why);
        }
    }

    /// Records a relay's problem (logged when it changes) and schedules the
    /// next attempt.
    pub(super) fn relay_failed(&mut self, peer: &libp2p::PeerId, why: String) {
        let retry = self.relay_retry;
        let Some(slot) = self.relays.iter_mut().find(|r| r.peer == *peer) else {
            return;
        };
        if let RelayState::Listening(l) | RelayState::Reserved(l) = slot.state {
            self.swarm.remove_listener(l);
        }
        slot.state = RelayState::Idle;
        slot.retry_at = tokio::time::Instant::now() + retry;
        if slot.problem.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                relay = %short(peer),
                addr = %slot.addr,
                "relay {}: {why}; the node keeps working on direct paths and tries again every {retry:?}",
                short(peer)
            );
            slot.problem = Some(why);
        }
        self.report_relays();
    }

    pub(super) fn report_relays(&self) {
        let reports = self
            .relays
            .iter()
            .filter_map(|r| {
                Some(RelayReport {
                    relay: addr::from_libp2p(&r.peer).ok()?,
                    reserved: matches!(r.state, RelayState::Reserved(_)),
                    problem: r.problem.clone(),
                })
            })
            .collect();
        *lock(&self.relay_reports) = reports;
    }
}
