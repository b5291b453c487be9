//! Opening a stream to a peer: through the peer's gate (one stream at a
//! time until the peer answers [`RECEIVED`]), within its budget of open
//! streams, and again with [`backoff`] when the peer dropped it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::sync::lock;
use p2p_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::wire::{HEADER_LEN, Io, PROTOCOL, RECEIVED};

/// How often `open_bi` and `connect` open a stream again when the peer
/// dropped it before answering.
pub(crate) const OPEN_ATTEMPTS: u32 = 10;

/// Per peer: a gate, so that at most one stream to the peer is between
/// "opened" and [`RECEIVED`] at a time, and a budget of open streams.
///
/// `libp2p-stream` hands inbound streams over through a channel with room
/// for one and drops any stream that arrives while it is full, so a burst
/// of opens towards one peer would lose all but the first. Waiting for
/// each stream's [`RECEIVED`] before opening the next keeps the channel
/// free. Streams from several peers can still collide at a receiver; those
/// are opened again (see [`OPEN_ATTEMPTS`]).
///
/// yamux counts the streams of both directions against one limit and
/// closes the whole connection when a peer opens one past it; the budget
/// keeps this node's streams to a peer (control streams included) within
/// its share of that limit, and `open_bi` waits for room instead.
pub(crate) struct Gates {
    peers: Mutex<BTreeMap<libp2p::PeerId, PeerGate>>,
    budget: usize,
}

struct PeerGate {
    gate: Arc<tokio::sync::Mutex<()>>,
    budget: Arc<tokio::sync::Semaphore>,
}

/// A stream's share of a peer's budget, returned when the stream goes.
pub(crate) type Slot = tokio::sync::OwnedSemaphorePermit;

impl Gates {
    /// Gates allowing `budget` open streams per peer.
    pub(crate) fn new(budget: usize) -> Self {
        Gates {
            peers: Mutex::new(BTreeMap::new()),
            budget,
        }
    }

    fn peer(
        &self,
        peer: libp2p::PeerId,
    ) -> (Arc<tokio::sync::Mutex<()>>, Arc<tokio::sync::Semaphore>) {
        let mut peers = lock(&self.peers);
        // Forget peers with no stream open and nobody waiting.
        peers.retain(|p, g| {
            *p == peer || Arc::strong_count(&g.gate) > 1 || Arc::strong_count(&g.budget) > 1
        });
        let g = peers.entry(peer).or_insert_with(|| PeerGate {
            gate: Arc::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(self.budget)),
        });
        (g.gate.clone(), g.budget.clone())
    }

    /// Waits for room for one more stream to `peer`.
    pub(crate) async fn slot(&self, peer: libp2p::PeerId) -> Slot {
        let (_, budget) = self.peer(peer);
        budget
            .acquire_owned()
            .await
            .expect("the budget semaphore is never closed")
    }

    /// Waits for the gate of `peer`.
    pub(crate) async fn pass(&self, peer: libp2p::PeerId) -> tokio::sync::OwnedMutexGuard<()> {
        let (gate, _) = self.peer(peer);
        gate.lock_owned().await
    }
}

/// Opens a stream to `peer` and sends `header`, holding the peer's gate
/// until the peer answers [`RECEIVED`] (bounded by `limit`).
pub(crate) async fn open_raw(
    control: &crate::streams::Control,
    gates: &Gates,
    peer: libp2p::PeerId,
    header: &[u8; HEADER_LEN],
    limit: Duration,
    who: &str,
) -> Result<Io> {
    let _gate = gates.pass(peer).await;
    let mut control = control.clone();
    let exchange = async {
        let stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| Error::unreachable(format!("opening a stream to {who}: {e}")))?;
        let mut io = stream.compat();
        let io_err = |e| Error::from_stream_io(&format!("opening a stream to {who}"), e);
        io.write_all(header).await.map_err(io_err)?;
        io.flush().await.map_err(io_err)?;
        match io.read_u8().await.map_err(io_err)? {
            RECEIVED => Ok(io),
            other => Err(Error::protocol(format!(
                "{who} answered a new stream with {other}, not the expected {RECEIVED}"
            ))),
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Error::timeout(format!("opening a stream to {who}"), limit))?
}

/// The pause before attempt `attempt + 1`: doubling from 2 ms, capped at
/// 200 ms, with jitter so that colliding openers spread out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = (2u64 << attempt.min(7)).min(200);
    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt) % (base + 1);
    Duration::from_millis(base / 2 + jitter / 2)
}
