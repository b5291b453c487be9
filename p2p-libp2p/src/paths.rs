//! Which libp2p connections a node has to each peer, direct or relayed,
//! with their round-trip times: what [`Connection::path`] reports.
//!
//! [`Connection::path`]: p2p_core::Connection::path

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::swarm::ConnectionId;
use p2p_core::{PathInfo, PathKind};

/// `addr` without a trailing `/p2p/<peer>`: the SDK writes addresses
/// without it.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// One libp2p connection's path.
#[derive(Debug, Clone)]
struct ConnPath {
    remote: Multiaddr,
    relayed: bool,
    rtt: Option<Duration>,
}

/// The connections of every peer; shared by the swarm task (which keeps
/// it current) and the SDK connections (which read it).
#[derive(Debug, Default, Clone)]
pub(crate) struct PathBook {
    inner: Arc<Mutex<BTreeMap<libp2p::PeerId, BTreeMap<ConnectionId, ConnPath>>>>,
    /// DCUtR attempts and successes, for [`p2p_core::Provider::stats`].
    punches: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl PathBook {
    /// Counts a hole punch (DCUtR) that ended, succeeded or not.
    pub(crate) fn punched(&self, succeeded: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.punches[0].fetch_add(1, Relaxed);
        if succeeded {
            self.punches[1].fetch_add(1, Relaxed);
        }
    }

    /// Hole punches tried and succeeded.
    pub(crate) fn stats(&self) -> p2p_core::TransportStats {
        use std::sync::atomic::Ordering::Relaxed;
        p2p_core::TransportStats {
            hole_punches_tried: self.punches[0].load(Relaxed),
            hole_punches_succeeded: self.punches[1].load(Relaxed),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<libp2p::PeerId, BTreeMap<ConnectionId, ConnPath>>> {
        p2p_core::sync::lock(&self.inner)
    }

    pub(crate) fn established(
        &self,
        peer: libp2p::PeerId,
        conn: ConnectionId,
        remote: Multiaddr,
        relayed: bool,
    ) {
        self.lock().entry(peer).or_default().insert(
            conn,
            ConnPath {
                remote,
                relayed,
                rtt: None,
            },
        );
    }

    pub(crate) fn closed(&self, peer: &libp2p::PeerId, conn: ConnectionId) {
        let mut all = self.lock();
        if let Some(conns) = all.get_mut(peer) {
            conns.remove(&conn);
            if conns.is_empty() {
                all.remove(peer);
            }
        }
    }

    pub(crate) fn rtt(&self, peer: &libp2p::PeerId, conn: ConnectionId, rtt: Duration) {
        if let Some(c) = self.lock().get_mut(peer).and_then(|c| c.get_mut(&conn)) {
            c.rtt = Some(rtt);
        }
    }

    /// The remote address of a connection, if it is open.
    pub(crate) fn remote_of(&self, peer: &libp2p::PeerId, conn: ConnectionId) -> Option<Multiaddr> {
        self.lock()
            .get(peer)
            .and_then(|c| c.get(&conn))
            .map(|c| c.remote.clone())
    }

    /// The connection new streams to `peer` take: a direct one before a
    /// relayed one, the newest first (the order the stream layer opens
    /// streams in).
    fn best(conns: &BTreeMap<ConnectionId, ConnPath>) -> Option<(&ConnectionId, &ConnPath)> {
        conns.iter().max_by_key(|(id, p)| (!p.relayed, **id))
    }

    /// The id of that connection, if `peer` has any.
    pub(crate) fn best_connection(&self, peer: &libp2p::PeerId) -> Option<ConnectionId> {
        self.lock()
            .get(peer)
            .and_then(|c| Self::best(c))
            .map(|(id, _)| *id)
    }

    /// The path new streams to `peer` take (see [`PathBook::best_connection`]).
    pub(crate) fn path_to(&self, peer: &libp2p::PeerId) -> PathInfo {
        let all = self.lock();
        let Some((_, best)) = all.get(peer).and_then(|c| Self::best(c)) else {
            return PathInfo::unknown();
        };
        PathInfo {
            kind: if best.relayed {
                PathKind::Relayed
            } else {
                PathKind::Direct
            },
            remote: Some(without_peer(&best.remote).to_string()),
            rtt: best.rtt,
        }
    }
}
