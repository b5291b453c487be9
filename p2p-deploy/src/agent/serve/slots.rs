//! Upload slots: how many chunk requests a node serves at once, in all
//! ([`SwarmConfig::upload_slots`](crate::SwarmConfig::upload_slots)) and
//! per peer ([`SLOTS_PER_PEER`]), so that one peer cannot take them all.
//! Past either, a request is answered "busy" at once and the asker goes
//! to another holder.

use std::collections::BTreeMap;
use std::sync::Mutex;

use p2p_core::PeerId;
use p2p_core::sync::lock;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Upload slots one peer may hold at once, so that one peer cannot take
/// them all (agents ask a neighbour for [`SwarmConfig::per_peer`]
/// chunks at a time, 2 by default, and twice that while they catch up
/// with their neighbours).
///
/// [`SwarmConfig::per_peer`]: crate::SwarmConfig::per_peer
pub const SLOTS_PER_PEER: usize = 4;

/// A node's upload slots.
pub(crate) struct UploadSlots {
    all: Semaphore,
    total: usize,
    held: Mutex<BTreeMap<PeerId, usize>>,
}

/// One upload slot, held by a peer until dropped.
pub(crate) struct UploadSlot<'a> {
    // Dropped in this order: the peer's slot, then the node's.
    _mine: PeerSlot<'a>,
    _all: SemaphorePermit<'a>,
}

impl UploadSlots {
    /// `total` slots (at least one).
    pub(crate) fn new(total: usize) -> Self {
        let total = total.max(1);
        UploadSlots {
            all: Semaphore::new(total),
            total,
            held: Mutex::default(),
        }
    }

    /// A slot for a chunk request from `peer`: one of its
    /// [`SLOTS_PER_PEER`] and one of the node's; else why not.
    pub(crate) fn take(&self, peer: PeerId) -> Result<UploadSlot<'_>, String> {
        let mine = PeerSlot::take(&self.held, peer).ok_or_else(|| {
            format!("this node is serving {SLOTS_PER_PEER} chunk requests of yours already")
        })?;
        let all = self
            .all
            .try_acquire()
            .map_err(|_| format!("this node is serving {} chunk requests already", self.total))?;
        Ok(UploadSlot {
            _mine: mine,
            _all: all,
        })
    }
}

/// One upload slot held by a peer; given back when dropped.
struct PeerSlot<'a> {
    held: &'a Mutex<BTreeMap<PeerId, usize>>,
    peer: PeerId,
}

impl<'a> PeerSlot<'a> {
    /// A slot for `peer`, unless it holds [`SLOTS_PER_PEER`] already.
    fn take(held: &'a Mutex<BTreeMap<PeerId, usize>>, peer: PeerId) -> Option<Self> {
        let mut map = lock(held);
        let n = map.entry(peer).or_default();
        if *n >= SLOTS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot { held, peer })
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.held);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_take_every_slot_and_slots_come_back_when_dropped() {
        let slots = UploadSlots::new(6);
        let a = p2p_core::NodeKey::from_seed([1; 32]).peer_id();
        let b = p2p_core::NodeKey::from_seed([2; 32]).peer_id();
        let held: Vec<_> = (0..SLOTS_PER_PEER)
            .map(|_| slots.take(a).ok().unwrap())
            .collect();
        assert!(slots.take(a).err().unwrap().contains("of yours"));
        let other = slots.take(b).ok().unwrap();
        let _more = slots.take(b).ok().unwrap();
        assert!(
            slots
                .take(b)
                .err()
                .unwrap()
                .contains("serving 6 chunk requests")
        );
        drop(held);
        drop(other);
        assert!(slots.take(a).is_ok());
    }
}
