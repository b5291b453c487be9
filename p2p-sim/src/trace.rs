//! The trace: every delivery and drop the simulated network makes, folded
//! into a running SHA-256 so that two runs can be compared by one hash.

use std::collections::VecDeque;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How many recent events [`crate::SimNet::trace_tail`] can return.
const TAIL: usize = 4096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A segment reached the receiving node.
    Deliver,
    /// A segment was lost on the link and will be retransmitted.
    Loss,
    /// A segment was held back by a partition.
    Partitioned,
    /// A connection attempt reached the listener.
    Connect,
    /// A connection attempt was refused or never answered.
    ConnectFailed,
    /// A connection ended (closed, reset or timed out).
    Close,
    /// A node crashed.
    Crash,
    /// A node came up (added or restarted).
    Up,
    /// A discovery announcement reached a node.
    Discover,
}

/// One trace record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Virtual time since the network started.
    pub at: Duration,
    /// What happened.
    pub kind: TraceKind,
    /// Sending node (index in creation order).
    pub from: u32,
    /// Receiving node.
    pub to: u32,
    /// Connection id, or 0.
    pub conn: u64,
    /// Sequence number within the stream direction, or 0.
    pub seq: u64,
    /// Payload bytes.
    pub bytes: u64,
}

pub(crate) struct Trace {
    hasher: Sha256,
    count: u64,
    tail: VecDeque<TraceEvent>,
}

impl Trace {
    pub(crate) fn new(seed: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"p2p-sim trace v1");
        hasher.update(seed.to_le_bytes());
        Trace {
            hasher,
            count: 0,
            tail: VecDeque::with_capacity(TAIL),
        }
    }

    pub(crate) fn record(&mut self, e: TraceEvent) {
        let mut rec = [0u8; 41];
        rec[..8].copy_from_slice(&(e.at.as_nanos() as u64).to_le_bytes());
        rec[8] = e.kind as u8;
        rec[9..13].copy_from_slice(&e.from.to_le_bytes());
        rec[13..17].copy_from_slice(&e.to.to_le_bytes());
        rec[17..25].copy_from_slice(&e.conn.to_le_bytes());
        rec[25..33].copy_from_slice(&e.seq.to_le_bytes());
        rec[33..41].copy_from_slice(&e.bytes.to_le_bytes());
        self.hasher.update(rec);
        self.count += 1;
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(e);
    }

    pub(crate) fn hash(&self) -> String {
        let mut h = self.hasher.clone();
        h.update(self.count.to_le_bytes());
        hex::encode(h.finalize())
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn tail(&self, n: usize) -> Vec<TraceEvent> {
        let skip = self.tail.len().saturating_sub(n);
        self.tail.iter().skip(skip).cloned().collect()
    }
}
