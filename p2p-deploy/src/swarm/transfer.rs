//! One release being received (or held) by a node: what it holds, what it
//! asked for, and its neighbours with their have-maps, shared by the fetch
//! driver and every session about the release.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::{Connection, PeerId, Result};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::config::SwarmConfig;
use crate::chunks::{ChunkStore, chunk_len};
use crate::package::{Descriptor, PackageId};
use crate::proto::Bitfield;

/// One release being received (or held) by a node, shared by the fetch
/// driver and every session about it.
pub(crate) struct Transfer {
    pub(crate) d: Descriptor,
    pub(crate) id: PackageId,
    pub(super) st: Mutex<TState>,
    pub(super) wake: Notify,
}

pub(super) struct TState {
    pub(super) have: Bitfield,
    /// Bytes of the chunks in `have` (chunks differ in size), kept as
    /// they arrive: it is read after every chunk.
    have_bytes: u64,
    pub(super) requested: Bitfield,
    /// Neighbours holding each chunk.
    pub(super) counts: Vec<u32>,
    /// How long a chunk request to a neighbour typically takes, seconds
    /// (a moving average).
    pub(super) typical: Option<f64>,
    pub(super) neighbors: BTreeMap<PeerId, Neighbor>,
    pub(super) subs: Vec<mpsc::UnboundedSender<u32>>,
    pub(super) closed: bool,
    /// Site awareness, when the node knows its site: the chunks it is
    /// designated to bring into its site from neighbours elsewhere.
    pub(super) site: Option<SiteRole>,
}

/// A node's part in bringing a release into its site.
pub(super) struct SiteRole {
    /// The node's site.
    pub(super) site: String,
    /// Chunks this node fetches from other sites (the rest it waits for
    /// from its own site's nodes).
    pub(super) designated: Bitfield,
    /// Chunks held by the node and its neighbours at its site, as last
    /// counted, and when that count last grew: when it has not for
    /// [`SITE_STALL`] while the node lacks chunks, the node fetches any
    /// chunk from other sites (a designated node may be down).
    pub(super) site_held: usize,
    pub(super) last_news: Option<Instant>,
}

/// How long a node waits for its site to hold chunks it lacks before it
/// fetches them from other sites itself.
pub(super) const SITE_STALL: Duration = Duration::from_secs(2);

pub(super) struct Neighbor {
    pub(super) conn: Arc<dyn Connection>,
    pub(super) have: Bitfield,
    pub(super) inflight: usize,
    pub(super) sessions: usize,
    pub(super) seed: bool,
    /// Not asked before then (it said it was busy).
    pub(super) rest_until: Option<Instant>,
    /// Requests it may have in flight (the whole part counts): between
    /// 1 and [`SwarmConfig::per_peer`] with how fast it serves; `None`
    /// until the first one ends (then the most).
    pub(super) window: Option<f64>,
    /// Its connection goes through a relay (as of `path_checked`).
    pub(super) relayed: bool,
    pub(super) path_checked: Instant,
    /// At another site than this node (`None`: not looked up yet).
    pub(super) remote: Option<bool>,
}

impl Neighbor {
    pub(super) fn window(&self, cfg: &SwarmConfig) -> usize {
        self.window.map_or(cfg.per_peer.max(1), |w| w as usize)
    }
}

/// Sessions a target opens at once while it has fewer neighbours than
/// [`SwarmConfig::dial`].
pub(super) const DIALS_AT_ONCE: usize = 4;

/// How long a neighbour that answered "busy" is left alone.
pub(super) const BUSY_REST: Duration = Duration::from_millis(50);

/// How long an "any chunk" request may wait in the seed's queue.
pub(super) const SEED_WAIT: Duration = Duration::from_secs(600);

/// How long a transfer waits with no source at all before it fails.
pub(super) const NO_SOURCE_GRACE: Duration = Duration::from_secs(30);

/// How long a transfer whose seed went away waits, with no neighbour and
/// nothing in flight, before it fails: the seed's going is already known,
/// so only dials still in progress get this long.
pub(super) const SEED_GONE_GRACE: Duration = Duration::from_secs(5);

impl Transfer {
    pub(crate) fn new(d: Descriptor, have: Bitfield) -> Arc<Self> {
        let n = d.chunks.len();
        let have_bytes = have.ones().map(|i| chunk_len(&d, i)).sum();
        Arc::new(Transfer {
            id: d.id(),
            d,
            st: Mutex::new(TState {
                have,
                have_bytes,
                requested: Bitfield::new(n),
                counts: vec![0; n],
                typical: None,
                neighbors: BTreeMap::new(),
                subs: Vec::new(),
                closed: false,
                site: None,
            }),
            wake: Notify::new(),
        })
    }

    /// A transfer over what `chunks` holds of `d` (chunks stored before a
    /// restart checked first: [`ChunkStore::to_fetch`]).
    pub(crate) async fn from_store(d: Descriptor, chunks: &ChunkStore) -> Result<Arc<Self>> {
        let mut have = Bitfield::full(d.chunks.len());
        for i in chunks.to_fetch(&d).await? {
            have.clear(i);
        }
        Ok(Transfer::new(d, have))
    }

    pub(super) fn st(&self) -> std::sync::MutexGuard<'_, TState> {
        p2p_core::sync::lock(&self.st)
    }

    pub(crate) fn have(&self) -> Bitfield {
        self.st().have.clone()
    }

    pub(crate) fn neighbors(&self) -> usize {
        self.st().neighbors.len()
    }

    /// Neighbours other than the seed.
    pub(super) fn peers(&self) -> usize {
        self.st().neighbors.values().filter(|n| !n.seed).count()
    }

    /// Neighbours other than the seed reached directly, not through a
    /// relay.
    pub(super) fn direct_peers(&self) -> usize {
        self.st()
            .neighbors
            .values()
            .filter(|n| !n.seed && !n.relayed)
            .count()
    }

    /// Ends every session that is still receiving (on failure).
    pub(crate) fn close(&self) {
        let mut st = self.st();
        st.closed = true;
        st.subs.clear();
        drop(st);
        self.wake.notify_one();
    }

    /// Bytes held.
    pub(super) fn have_bytes(&self) -> u64 {
        self.st().have_bytes
    }

    /// We now hold chunk `i`: tell every session.
    pub(super) fn got(&self, i: usize) -> bool {
        let mut st = self.st();
        if !st.have.set(i) {
            return false;
        }
        st.have_bytes += chunk_len(&self.d, i);
        st.requested.clear(i);
        st.subs.retain(|tx| tx.send(i as u32).is_ok());
        true
    }
}
