//! Which missing chunks can still be had, and from whom: chunks that came
//! bad (and who sent them), and chunks no usable neighbour holds.

use std::collections::{BTreeMap, BTreeSet};

use p2p_core::PeerId;

use super::reputation::Reputation;
use super::transfer::{Neighbor, Transfer};

/// The chunks of one transfer that came bad, and from which peers.
///
/// Honest nodes verify every chunk before they store or serve it, and the
/// transport authenticates who sent what, so a peer that sent chunk `i`
/// bad would send it bad again: it is not asked for that chunk twice.
#[derive(Default)]
pub(super) struct BadChunks {
    /// Per chunk: who sent it bad, the last one first in the pair.
    chunks: BTreeMap<usize, (PeerId, BTreeSet<PeerId>)>,
    /// Peers that have sent at least one bad chunk (for logging once).
    peers: BTreeSet<PeerId>,
}

impl BadChunks {
    /// Whether `from` has not sent a bad chunk before.
    pub(super) fn first_from(&self, from: PeerId) -> bool {
        !self.peers.contains(&from)
    }

    pub(super) fn record(&mut self, i: usize, from: PeerId) {
        self.peers.insert(from);
        let e = self.chunks.entry(i).or_insert((from, BTreeSet::new()));
        e.0 = from;
        e.1.insert(from);
    }

    /// The chunks `peer` sent bad.
    pub(super) fn sent_bad_by(&self, peer: Option<PeerId>) -> impl Iterator<Item = usize> + '_ {
        self.chunks
            .iter()
            .filter(move |(_, (_, from))| peer.is_some_and(|p| from.contains(&p)))
            .map(|(i, _)| *i)
    }

    /// A missing chunk that came bad and that no source can still give:
    /// not `seed` (the usable seed, if any) and no unbanned neighbour
    /// holding it, unless it sent that chunk bad already. Returns the
    /// chunk and the last peer that sent it bad.
    pub(super) fn unobtainable(
        &self,
        t: &Transfer,
        rep: &Reputation,
        seed: Option<PeerId>,
    ) -> Option<(usize, PeerId)> {
        let st = t.st();
        self.chunks
            .iter()
            .filter(|(i, _)| !st.have.get(**i) && !st.requested.get(**i))
            .find_map(|(&i, (last, from))| {
                let seed_can = seed.is_some_and(|s| !from.contains(&s));
                let peer_can = st.neighbors.iter().any(|(id, n)| {
                    !n.seed && n.have.get(i) && !from.contains(id) && !rep.is_banned(id)
                });
                (!seed_can && !peer_can).then_some((i, *last))
            })
    }
}

/// A chunk this node lacks that no neighbour (not the seed, not banned)
/// holds or is sending.
pub(super) fn orphan_chunk(t: &Transfer, rep: &Reputation) -> Option<usize> {
    let st = t.st();
    let holders: Vec<&Neighbor> = st
        .neighbors
        .iter()
        .filter(|(id, n)| !n.seed && !rep.is_banned(id))
        .map(|(_, n)| n)
        .collect();
    (0..t.d.chunks.len()).find(|&i| {
        !st.have.get(i) && !st.requested.get(i) && !holders.iter().any(|n| n.have.get(i))
    })
}

/// Neighbours (not the seed) that are not banned.
pub(super) fn usable_neighbors(t: &Transfer, rep: &Reputation) -> usize {
    t.st()
        .neighbors
        .iter()
        .filter(|(id, n)| !n.seed && !rep.is_banned(id))
        .count()
}
