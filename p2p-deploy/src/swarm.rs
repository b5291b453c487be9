//! Swarm transfer: the targets of a deploy fetch a release's chunks from
//! the controller and from each other.
//!
//! # How a release spreads
//!
//! - The deploy request carries the release's descriptor (a hash per
//!   chunk: 13 KB for 100 MB in 256 KiB chunks). Only the first
//!   [`ControllerConfig::descriptor_copies`](crate::ControllerConfig::descriptor_copies)
//!   targets get it whole; the others get [`Request::DeployRef`], take
//!   the descriptor from two of those with [`Request::Release`], and ask
//!   the controller only if neither has it after a few tries. Any copy is
//!   checked against the release id, its hash. At 500 targets this keeps
//!   6.5 MB of descriptors off the controller's uplink at the start.
//! - The controller is the *seed*. A target asks it for "any chunk"
//!   ([`Request::FetchAny`]) and the seed chooses one the target lacks
//!   and the fleet holds fewest copies of, serving a few at a time (two at
//!   first, so that the first chunks arrive soon, then up to twelve). So
//!   the seed's uplink, the scarcest resource at the start, sends every
//!   chunk once before it sends any twice.
//! - Each target opens *swarm sessions* ([`Request::Swarm`]) to peers
//!   from the deploy's peer list until it has [`SwarmConfig::dial`]
//!   neighbours, counting the sessions others opened to it: both sides
//!   send their have-map ([`Bitfield`]) and then announce each chunk as it
//!   arrives. The seed keeps a session with every target, so its choices
//!   follow the fleet.
//! - A target fetches from its neighbours with [`Request::FetchChunks`],
//!   a few requests in flight per neighbour, the rarest chunk among its
//!   neighbours first with random tie-breaks (the agent's seeded RNG);
//!   neighbours that failed it or sent bad chunks are asked last. A
//!   target that fell behind its neighbours asks each for twice as many
//!   at once, and so catches up instead of finishing last.
//! - A node serves [`SwarmConfig::upload_slots`] chunk requests at once
//!   and answers "busy" to more, so the copies of a chunk new to the fleet
//!   leave its first holders at a good share of their uplink, and the
//!   askers it turned away go to other holders.
//! - Every chunk is checked against the descriptor before it is stored or
//!   served; a peer that sends a bad one, or fails requests repeatedly,
//!   loses [`Reputation`] and is banned for a while past a threshold.
//! - Chunks are kept in the [`ChunkStore`] as
//!   they arrive, so a transfer that is interrupted resumes where it was.
//!   Once every chunk exists somewhere in the fleet, the seed may go away.
//!
//! # Finding and fetching releases
//!
//! Every agent answers [`Request::Catalog`] with the releases it holds
//! (name, version, id, chunks held, installed, active), and
//! [`Request::Release`] with a held release's descriptor and the
//! signatures it arrived with. [`Controller::search`](crate::Controller::search)
//! asks the whole fleet, by name (`web`) or prefix (`web*`) and a semver
//! requirement; [`Request::Fetch`] (or
//! [`Controller::prefetch`](crate::Controller::prefetch)) has an agent
//! take a release from the peers that hold it: the descriptor and
//! signatures are checked against the agent's own trust store before a
//! single chunk is fetched, the chunks come through the same swarm, and
//! the release is kept without being installed, so that a later deploy
//! of it starts with every chunk present. It is dropped once the node
//! installs a version of the app as high or higher, since a deploy never
//! goes below an installed version.
//!
//! # Bandwidth
//!
//! [`SwarmConfig::upload_limit`] and [`SwarmConfig::download_limit`] cap
//! the chunk bytes an agent serves and fetches per second (a [`Throttle`]
//! on tokio time, so simulated runs stay deterministic). Session
//! announcements and other requests are small and not counted.
//!
//! # Measured
//!
//! `bench-report swarm` (the simulator, 100 MB, every node at 100 Mbit/s,
//! 20 ms latency, 256 KiB chunks) and `bench-report swarm-netns` (real
//! iroh connections between network namespaces shaped with `tbf`); the
//! figures and the commands are in the repository's README.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use p2p_core::framing::{Framed, read_frame_bytes, write_frame};
use p2p_core::{Connection, Error, PathKind, PeerAddr, PeerId, RecvStream, Result, SendStream};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::chunks::{ChunkStore, chunk_len};
use crate::package::{Descriptor, PackageId};
use crate::proto::{
    Call, ErrorKind, Frame, MAX_FRAME, Reply, Request, RpcError, end_with, unexpected,
};

/// Which chunks of a release a peer holds, one bit per chunk.
///
/// One decoded from the network is well formed (one byte per 8 chunks,
/// no bit set past the last chunk) or not decoded at all; whether it fits
/// a release is [`check`](Bitfield::check)ed where it is used.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBitfield")]
pub struct Bitfield {
    len: u32,
    bits: Vec<u8>,
}

/// A bitfield as it arrives, before its shape is checked.
#[derive(Deserialize)]
struct RawBitfield {
    len: u32,
    bits: Vec<u8>,
}

impl TryFrom<RawBitfield> for Bitfield {
    type Error = String;

    fn try_from(raw: RawBitfield) -> std::result::Result<Self, String> {
        let len = raw.len as usize;
        if raw.bits.len() != len.div_ceil(8) {
            return Err(format!(
                "a bitfield of {len} chunks in {} bytes",
                raw.bits.len()
            ));
        }
        let tail_clean =
            len.is_multiple_of(8) || raw.bits.last().is_none_or(|&b| b >> (len % 8) == 0);
        if !tail_clean {
            return Err(format!(
                "a bitfield of {len} chunks with bits past the last"
            ));
        }
        Ok(Bitfield {
            len: raw.len,
            bits: raw.bits,
        })
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count(), self.len)
    }
}

impl Bitfield {
    /// `len` chunks, none held.
    pub fn new(len: usize) -> Self {
        Bitfield {
            len: len as u32,
            bits: vec![0; len.div_ceil(8)],
        }
    }

    /// `len` chunks, all held.
    pub fn full(len: usize) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// The number of chunks it covers.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it covers no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `i` is held.
    pub fn get(&self, i: usize) -> bool {
        i < self.len() && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// Marks chunk `i` held; true if it was not. Out of range: no change.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len() || self.get(i) {
            return false;
        }
        self.bits[i / 8] |= 1 << (i % 8);
        true
    }

    /// Marks chunk `i` not held.
    pub fn clear(&mut self, i: usize) {
        if i < self.len() {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }

    /// How many chunks are held.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether every chunk is held.
    pub fn is_full(&self) -> bool {
        self.count() == self.len()
    }

    /// The held chunks, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.get(i))
    }

    /// Both sets together.
    pub fn union(&self, other: &Bitfield) -> Bitfield {
        let mut out = self.clone();
        for i in other.ones() {
            out.set(i);
        }
        out
    }

    /// Checks one that came from a peer against a release of `len`
    /// chunks (its shape was checked when it was decoded).
    pub fn check(&self, len: usize) -> Result<()> {
        if self.len() != len {
            return Err(Error::protocol(format!(
                "a have-map for {} chunks where the release has {len}",
                self.len
            )));
        }
        Ok(())
    }
}

/// How an agent takes part in swarms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Neighbours a target wants: it opens sessions to peers from the
    /// deploy's list, a few at a time, until it has this many, counting
    /// the sessions others opened to it. So every target ends up with
    /// about as many, and none is left with a few slow sources.
    pub dial: usize,
    /// Most neighbours per transfer, sessions opened by others included.
    pub max_neighbors: usize,
    /// Chunk requests in flight to one neighbour (one, after it failed or
    /// said it was busy, until it serves a chunk faster than usual; twice
    /// as many while the node is behind its neighbours, to catch up).
    pub per_peer: usize,
    /// Chunk requests this node serves at once (at least 1); one more is
    /// refused as busy at once, and its client asks another holder. A
    /// node that holds a chunk new to the fleet is asked for it by all its
    /// neighbours: without a limit each copy crawls through a shared
    /// uplink while other holders wait idle.
    pub upload_slots: usize,
    /// "Any chunk" requests in flight to the seed.
    pub seed_inflight: usize,
    /// How long one chunk request may take before it counts as failed.
    pub chunk_timeout: Duration,
    /// How scores move and when a peer is banned.
    pub reputation: ReputationPolicy,
    /// Most bytes per second of chunks this node serves to peers (swarm
    /// and chunk requests); `None`: no cap.
    pub upload_limit: Option<u64>,
    /// Most bytes per second of chunks this node fetches; `None`: no cap.
    pub download_limit: Option<u64>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            dial: 10,
            max_neighbors: 24,
            per_peer: 2,
            upload_slots: 16,
            seed_inflight: 2,
            chunk_timeout: Duration::from_secs(60),
            reputation: ReputationPolicy::default(),
            upload_limit: None,
            download_limit: None,
        }
    }
}

/// How reputation scores move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReputationPolicy {
    /// Added for each good chunk (up to `max`).
    pub good: i32,
    /// Added for a request that failed or timed out.
    pub failed: i32,
    /// Added for a chunk that failed verification.
    pub corrupt: i32,
    /// The highest score.
    pub max: i32,
    /// At or below this a peer is banned.
    pub ban_at: i32,
    /// For how long.
    pub ban_for: Duration,
}

impl Default for ReputationPolicy {
    fn default() -> Self {
        ReputationPolicy {
            good: 1,
            failed: -10,
            corrupt: -50,
            max: 100,
            ban_at: -100,
            ban_for: Duration::from_secs(600),
        }
    }
}

/// One peer's standing, as node info shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerScore {
    /// The peer.
    pub peer: PeerId,
    /// Its score: good chunks raise it, failures and bad chunks lower it.
    pub score: i32,
    /// Good chunks it served.
    pub good: u64,
    /// Requests to it that failed or timed out.
    pub failed: u64,
    /// Chunks from it that failed verification.
    pub corrupt: u64,
    /// Milliseconds left of its ban, if it is banned.
    pub banned_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Standing {
    score: i32,
    good: u64,
    failed: u64,
    corrupt: u64,
    banned_until: Option<Instant>,
}

/// Peer scores and bans of one node.
#[derive(Debug, Default)]
pub struct Reputation {
    policy: ReputationPolicy,
    peers: Mutex<BTreeMap<PeerId, Standing>>,
}

impl Reputation {
    /// Scores under `policy`.
    pub fn new(policy: ReputationPolicy) -> Self {
        Reputation {
            policy,
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<PeerId, Standing>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn change(&self, peer: PeerId, delta: i32, count: impl FnOnce(&mut Standing)) {
        let mut peers = self.peers();
        let s = peers.entry(peer).or_default();
        count(s);
        s.score = s.score.saturating_add(delta).min(self.policy.max);
        if s.score <= self.policy.ban_at && s.banned_until.is_none() {
            tracing::warn!(peer = %peer.short(), score = s.score, "banning a peer");
            s.banned_until = Some(Instant::now() + self.policy.ban_for);
        }
    }

    /// A good chunk from `peer`.
    pub fn good(&self, peer: PeerId) {
        self.change(peer, self.policy.good, |s| s.good += 1);
    }

    /// A request to `peer` failed or timed out.
    pub fn failed(&self, peer: PeerId) {
        self.change(peer, self.policy.failed, |s| s.failed += 1);
    }

    /// `peer` sent a chunk that failed verification.
    pub fn corrupt(&self, peer: PeerId) {
        self.change(peer, self.policy.corrupt, |s| s.corrupt += 1);
    }

    /// Whether `peer` is banned now. A ban that ran out is lifted, with
    /// the score set just above the threshold: one more offence bans again.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let mut peers = self.peers();
        let Some(s) = peers.get_mut(peer) else {
            return false;
        };
        match s.banned_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                s.banned_until = None;
                s.score = self.policy.ban_at + 1;
                false
            }
            None => false,
        }
    }

    /// `peer`'s score (0 for a peer never seen).
    pub fn score(&self, peer: &PeerId) -> i32 {
        self.peers().get(peer).map_or(0, |s| s.score)
    }

    /// Every peer's standing.
    pub fn snapshot(&self) -> Vec<PeerScore> {
        let now = Instant::now();
        self.peers()
            .iter()
            .map(|(peer, s)| PeerScore {
                peer: *peer,
                score: s.score,
                good: s.good,
                failed: s.failed,
                corrupt: s.corrupt,
                banned_ms: s
                    .banned_until
                    .filter(|t| *t > now)
                    .map(|t| (t - now).as_millis() as u64),
            })
            .collect()
    }
}

/// A byte-rate cap: each [`take`](Self::take) reserves the time its bytes
/// take at the rate, after the reservations before it, and waits until its
/// turn. The first caller goes at once; over time no more than the rate
/// goes through. On tokio time, so runs in the simulator are the same for
/// the same seed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use p2p_deploy::swarm::Throttle;
/// let t = Throttle::new(1000); // bytes per second
/// let begun = tokio::time::Instant::now();
/// for _ in 0..3 {
///     t.take(500).await; // at 0 s, 0.5 s and 1 s
/// }
/// assert_eq!(begun.elapsed(), std::time::Duration::from_secs(1));
/// # }
/// ```
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(None),
        }
    }

    /// The cap, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` may go, and books them.
    pub async fn take(&self, bytes: u64) {
        let start = self.book(bytes, None).unwrap_or_else(Instant::now);
        tokio::time::sleep_until(start).await;
    }

    /// Books `bytes` and returns when they may go, unless that would be
    /// after `latest`: then nothing is booked and the answer is `None`.
    pub fn book(&self, bytes: u64, latest: impl Into<Option<Instant>>) -> Option<Instant> {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let start = next.map_or(now, |n| n.max(now));
        if latest.into().is_some_and(|l| start > l) {
            return None;
        }
        *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64));
        Some(start)
    }
}

/// What the swarm needs from the node it runs on.
pub(crate) trait Host: Clone + Send + Sync + 'static {
    fn chunks(&self) -> &ChunkStore;
    fn reputation(&self) -> &Reputation;
    fn swarm_config(&self) -> &SwarmConfig;
    /// The node's download cap, if it has one.
    fn download_limit(&self) -> Option<Arc<Throttle>>;
    fn local_id(&self) -> PeerId;
    /// A uniform number in `0..n` from the node's seeded RNG.
    fn random(&self, n: usize) -> usize;
    /// Runs `f` in the background, owned by the node.
    fn spawn(&self, f: BoxFuture<'static, ()>);
    /// A connection to `addr` whose inbound streams the node serves.
    fn dial(&self, addr: PeerAddr) -> BoxFuture<'static, Result<Arc<dyn Connection>>>;
}

/// One release being received (or held) by a node, shared by the fetch
/// driver and every session about it.
pub(crate) struct Transfer {
    pub(crate) d: Descriptor,
    pub(crate) id: PackageId,
    st: Mutex<TState>,
    wake: Notify,
}

struct TState {
    have: Bitfield,
    requested: Bitfield,
    /// Neighbours holding each chunk.
    counts: Vec<u32>,
    /// How long a chunk request to a neighbour typically takes, seconds
    /// (a moving average).
    typical: Option<f64>,
    neighbors: BTreeMap<PeerId, Neighbor>,
    subs: Vec<mpsc::UnboundedSender<u32>>,
    closed: bool,
}

struct Neighbor {
    conn: Arc<dyn Connection>,
    have: Bitfield,
    inflight: usize,
    sessions: usize,
    seed: bool,
    /// Not asked before then (it said it was busy).
    rest_until: Option<Instant>,
    /// Requests it may have in flight (the whole part counts): between
    /// 1 and [`SwarmConfig::per_peer`] with how fast it serves; `None`
    /// until the first one ends (then the most).
    window: Option<f64>,
    /// Its connection goes through a relay (as of `path_checked`).
    relayed: bool,
    path_checked: Instant,
}

impl Neighbor {
    fn window(&self, cfg: &SwarmConfig) -> usize {
        self.window.map_or(cfg.per_peer.max(1), |w| w as usize)
    }
}

/// Sessions a target opens at once while it has fewer neighbours than
/// [`SwarmConfig::dial`].
const DIALS_AT_ONCE: usize = 4;

/// How long a neighbour that answered "busy" is left alone.
const BUSY_REST: Duration = Duration::from_millis(50);

/// How long an "any chunk" request may wait in the seed's queue.
const SEED_WAIT: Duration = Duration::from_secs(600);

/// How long a transfer waits with no source at all before it fails.
const NO_SOURCE_GRACE: Duration = Duration::from_secs(30);

/// How long a transfer whose seed went away waits, with no neighbour and
/// nothing in flight, before it fails: the seed's going is already known,
/// so only dials still in progress get this long.
const SEED_GONE_GRACE: Duration = Duration::from_secs(5);

/// How long a session may last.
const SESSION_MAX: Duration = Duration::from_secs(30 * 60);

/// How often a neighbour's path (direct or relayed) is looked at again:
/// hole punching can turn a relayed connection direct after a while.
const PATH_RECHECK: Duration = Duration::from_secs(1);

impl Transfer {
    pub(crate) fn new(d: Descriptor, have: Bitfield) -> Arc<Self> {
        let n = d.chunks.len();
        Arc::new(Transfer {
            id: d.id(),
            d,
            st: Mutex::new(TState {
                have,
                requested: Bitfield::new(n),
                counts: vec![0; n],
                typical: None,
                neighbors: BTreeMap::new(),
                subs: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
        })
    }

    /// A transfer over what `chunks` holds of `d`.
    pub(crate) async fn from_store(d: Descriptor, chunks: &ChunkStore) -> Result<Arc<Self>> {
        let mut have = Bitfield::full(d.chunks.len());
        for i in chunks.missing(&d).await? {
            have.clear(i);
        }
        Ok(Transfer::new(d, have))
    }

    fn st(&self) -> std::sync::MutexGuard<'_, TState> {
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn have(&self) -> Bitfield {
        self.st().have.clone()
    }

    pub(crate) fn neighbors(&self) -> usize {
        self.st().neighbors.len()
    }

    /// Neighbours other than the seed.
    fn peers(&self) -> usize {
        self.st().neighbors.values().filter(|n| !n.seed).count()
    }

    /// Neighbours other than the seed reached directly, not through a
    /// relay.
    fn direct_peers(&self) -> usize {
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

    /// Bytes held: every chunk is full size but the last.
    fn have_bytes(&self) -> u64 {
        let st = self.st();
        let n = st.have.len();
        let full = u64::from(self.d.chunk_size);
        let short = full - chunk_len(&self.d, n - 1);
        st.have.count() as u64 * full - if st.have.get(n - 1) { short } else { 0 }
    }

    /// We now hold chunk `i`: tell every session.
    fn got(&self, i: usize) -> bool {
        let mut st = self.st();
        if !st.have.set(i) {
            return false;
        }
        st.requested.clear(i);
        st.subs.retain(|tx| tx.send(i as u32).is_ok());
        true
    }
}

/// Opens a swarm session to `conn` for `t`: sends our have-map, reads
/// theirs, and runs the session in the background.
pub(crate) async fn open_session<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    conn: Arc<dyn Connection>,
    seed: bool,
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let mut call = Call::open(
        &*conn,
        Request::Swarm {
            package: t.id,
            have: t.have(),
        },
        timeout,
    )
    .await?;
    let theirs = match call.next().await? {
        Frame::Have(b) => b,
        other => return Err(unexpected(&conn.remote_id(), "a have-map", &other)),
    };
    theirs.check(t.d.chunks.len())?;
    let (send, recv) = call.into_framed().into_parts();
    host.spawn(Box::pin(session(t.clone(), conn, send, recv, theirs, seed)));
    Ok(())
}

/// Answers a [`Request::Swarm`] on a node: our have-map, then the session.
pub(crate) async fn serve_session(
    t: Arc<Transfer>,
    conn: Arc<dyn Connection>,
    mut framed: Framed,
    theirs: Bitfield,
    max_neighbors: usize,
) {
    let refused = match theirs.check(t.d.chunks.len()) {
        Err(e) => Some(RpcError::from_error(&e)),
        Ok(()) if t.neighbors() >= max_neighbors => Some(RpcError::new(
            ErrorKind::Busy,
            format!("this node has {max_neighbors} neighbours for that release already"),
        )),
        Ok(()) => None,
    };
    if let Some(e) = refused {
        end_with(&mut framed, Frame::Error(e)).await;
        return;
    }
    if framed.send(&Frame::Have(t.have())).await.is_err() {
        return;
    }
    let (send, recv) = framed.into_parts();
    session(t, conn, send, recv, theirs, false).await;
}

/// One session, either side: our announcements out, theirs in, until both
/// sides hold everything, either side closes, or the transfer is closed.
async fn session(
    t: Arc<Transfer>,
    conn: Arc<dyn Connection>,
    mut send: SendStream,
    mut recv: RecvStream,
    theirs: Bitfield,
    seed: bool,
) {
    let peer = conn.remote_id();
    let len = t.d.chunks.len();
    let relayed = conn.path().kind == PathKind::Relayed;
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut st = t.st();
        if st.closed {
            return;
        }
        st.subs.push(tx);
        let st = &mut *st;
        let n = st.neighbors.entry(peer).or_insert_with(|| Neighbor {
            conn: conn.clone(),
            have: Bitfield::new(len),
            inflight: 0,
            sessions: 0,
            seed,
            rest_until: None,
            window: None,
            relayed,
            path_checked: Instant::now(),
        });
        n.sessions += 1;
        n.seed |= seed;
        for i in theirs.ones() {
            if n.have.set(i) {
                st.counts[i] += 1;
            }
        }
    }
    t.wake.notify_one();
    let both_full = |t: &Transfer| {
        let st = t.st();
        st.have.is_full() && st.neighbors.get(&peer).is_some_and(|n| n.have.is_full())
    };
    let reader = async {
        let mut buf = Vec::new();
        loop {
            if both_full(&t) {
                return;
            }
            match read_frame_bytes(&mut recv, &mut buf, MAX_FRAME).await {
                Ok(true) => {}
                _ => return,
            }
            let Ok(Frame::Got(i)) = p2p_core::framing::decode::<Frame>(&buf) else {
                tracing::debug!(peer = %peer.short(), "unexpected frame in a swarm session");
                return;
            };
            let i = i as usize;
            if i >= len {
                return;
            }
            {
                let mut st = t.st();
                let st = &mut *st;
                if let Some(n) = st.neighbors.get_mut(&peer)
                    && n.have.set(i)
                {
                    st.counts[i] += 1;
                }
            }
            t.wake.notify_one();
        }
    };
    let writer = async {
        loop {
            if both_full(&t) {
                let _ = send.shutdown().await;
                // Let the peer read to the end before we go.
                std::future::pending::<()>().await;
            }
            let Some(i) = rx.recv().await else {
                let _ = send.shutdown().await;
                return;
            };
            if write_frame(&mut send, &Frame::Got(i), MAX_FRAME)
                .await
                .is_err()
                || send.flush().await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
        () = tokio::time::sleep(SESSION_MAX) => {}
    }
    {
        let mut st = t.st();
        let st = &mut *st;
        if let Some(n) = st.neighbors.get_mut(&peer) {
            n.sessions -= 1;
            if n.sessions == 0
                && let Some(n) = st.neighbors.remove(&peer)
            {
                for i in n.have.ones() {
                    st.counts[i] -= 1;
                }
            }
        }
    }
    t.wake.notify_one();
}

enum Fetched {
    Chunk {
        from: PeerId,
        index: u32,
        bytes: Vec<u8>,
        asked: Option<u32>,
        took: Duration,
    },
    Failed {
        from: PeerId,
        asked: Option<u32>,
        error: Error,
    },
}

/// Fetches one chunk: the one a [`Request::FetchChunks`] names, or the
/// one the seed chooses for a [`Request::FetchAny`].
/// Under a download cap, waits for `len` bytes' turn first (the chunk's
/// timeout starts after that).
async fn fetch_one(
    conn: Arc<dyn Connection>,
    request: Request,
    timeout: Duration,
    cap: Option<(Arc<Throttle>, u64)>,
) -> Fetched {
    let from = conn.remote_id();
    let index = match &request {
        Request::FetchChunks { indexes, .. } => indexes.first().copied(),
        _ => None,
    };
    if let Some((throttle, len)) = cap {
        throttle.take(len).await;
    }
    let begun = Instant::now();
    let run = async {
        let mut call = Call::open(&*conn, request, timeout).await?;
        let (got, bytes) = match call.next().await? {
            Frame::Chunk { index, bytes } => (index, bytes),
            other => return Err(unexpected(&from, "a chunk", &other)),
        };
        if index.is_some_and(|i| i != got) {
            return Err(Error::protocol(format!(
                "peer {} sent chunk {got} for chunk {}",
                from.short(),
                index.unwrap_or_default()
            )));
        }
        match call.next().await? {
            Frame::Done(Reply::Ok) => Ok((got, bytes)),
            other => Err(unexpected(&from, "the end of the chunks", &other)),
        }
    };
    match run.await {
        Ok((i, bytes)) => Fetched::Chunk {
            from,
            index: i,
            bytes,
            asked: index,
            took: begun.elapsed(),
        },
        Err(error) => Fetched::Failed {
            from,
            asked: index,
            error,
        },
    }
}

/// Fetches every chunk of `t` that the node lacks, from `seed` (which
/// answers [`Request::FetchAny`]) and from sessions with `peers` (and any
/// peer that opens one to us), until the deadline. `progress` hears the
/// bytes held as they grow.
pub(crate) async fn fetch<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    seed: Option<Arc<dyn Connection>>,
    peers: Vec<PeerAddr>,
    deadline: Instant,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    let cfg = host.swarm_config().clone();
    let rep = host.reputation();
    let package = t.id;
    let total = t.d.archive_size;
    if t.have().is_full() {
        progress(total);
        return Ok(());
    }
    if seed.is_none() && peers.is_empty() && t.neighbors() == 0 {
        return Err(Error::invalid(
            "transfer",
            "chunks are missing and there is no peer to fetch them from",
        ));
    }
    progress(t.have_bytes());
    if let Some(conn) = &seed
        && let Err(e) = open_session(host, t, conn.clone(), true).await
    {
        tracing::debug!(peer = %conn.remote_id().short(), error = %e, "no session with the seed");
    }
    dial_peers(host, t, peers, cfg.dial, deadline);

    let mut inflight: JoinSet<Fetched> = JoinSet::new();
    let mut seed_inflight = 0usize;
    let mut seed_rest_until: Option<Instant> = None;
    let mut seed_alive = seed.is_some();
    let mut last_shown = 0u64;
    let begun = Instant::now();
    let mut alone_since: Option<Instant> = None;
    // The last chunk stored: a transfer that moves is not given up on.
    let mut last_progress = Instant::now();
    // Chunks received from each source, for the log line at the end.
    let mut sources: BTreeMap<PeerId, u32> = BTreeMap::new();
    // Chunks that came bad, and from whom.
    let mut bad = BadChunks::default();
    let seed_id = seed.as_ref().map(|c| c.remote_id());
    loop {
        if t.have().is_full() {
            if last_shown != total {
                progress(total);
            }
            let from_seed = seed_id.and_then(|s| sources.get(&s)).copied().unwrap_or(0);
            let peers: Vec<String> = sources
                .iter()
                .filter(|(p, _)| Some(**p) != seed_id)
                .map(|(p, n)| format!("{}={n}", p.short()))
                .collect();
            tracing::info!(
                app = %t.d.manifest.name,
                version = %t.d.manifest.version,
                from_seed,
                from_peers = %peers.join(","),
                "release fetched"
            );
            return Ok(());
        }
        let now = Instant::now();
        let seed_usable = seed_alive && seed_id.is_some_and(|s| !rep.is_banned(&s));
        // A chunk that came bad and that no usable source can still give:
        // the release cannot be completed, so say which chunk and who.
        // Without a seed (a fetch from peers), holders still being dialed
        // get the no-source grace first.
        let settled = seed.is_some() || (inflight.is_empty() && now - begun >= NO_SOURCE_GRACE);
        if settled
            && let Some((i, from)) = bad.unobtainable(t, rep, seed_id.filter(|_| seed_usable))
        {
            t.close();
            let who = if Some(from) == seed_id {
                " (the sender of the release)"
            } else {
                ""
            };
            return Err(Error::protocol(format!(
                "chunk {i} of {} {} does not match its hash as sent by peer {}{who}, and no \
                 other source holds it ({} of {} chunks held)",
                t.d.manifest.name,
                t.d.manifest.version,
                from.short(),
                t.have().count(),
                t.d.chunks.len()
            )));
        }
        // No usable seed, and a missing chunk that no neighbour holds
        // (with no neighbour at all, every one): give up after a while
        // without progress.
        // Dials in progress get that long to bring a holder; less once
        // the seed is known to be gone, as then the chunk may be nowhere.
        let orphan = if seed_usable {
            None
        } else {
            orphan_chunk(t, rep)
        };
        // The wait starts over whenever a chunk arrives, and only runs
        // while nothing is on its way: neighbours that are still fetching
        // announce what they get.
        if let Some(i) = orphan.filter(|_| inflight.is_empty()) {
            let since = (*alone_since.get_or_insert(now)).max(last_progress);
            let grace = if seed.is_some() {
                SEED_GONE_GRACE
            } else {
                NO_SOURCE_GRACE
            };
            if now - since >= grace {
                t.close();
                let seed = match seed_id {
                    Some(s) => format!(
                        "the sender of the release (peer {}) is gone and ",
                        s.short()
                    ),
                    None => String::new(),
                };
                return Err(Error::unreachable(format!(
                    "no peer holding chunk {i} of {} {} can be reached: {seed}none of the {} \
                     peer(s) connected holds it ({} of {} chunks held)",
                    t.d.manifest.name,
                    t.d.manifest.version,
                    usable_neighbors(t, rep),
                    t.have().count(),
                    t.d.chunks.len()
                )));
            }
        } else {
            alone_since = None;
        }
        if now >= deadline {
            t.close();
            return Err(Error::timeout(
                format!(
                    "fetching the chunks of {} {}",
                    t.d.manifest.name, t.d.manifest.version
                ),
                now - begun,
            ));
        }
        // Seed: "any chunk" requests, a few at a time.
        if let Some(conn) = &seed
            && seed_usable
            && seed_rest_until.is_none_or(|u| now >= u)
        {
            while seed_inflight < cfg.seed_inflight {
                // Chunks the seed sent bad count as held: it would only
                // send them bad again.
                let have = {
                    let st = t.st();
                    let mut have = st.have.union(&st.requested);
                    for i in bad.sent_bad_by(seed_id) {
                        have.set(i);
                    }
                    have
                };
                seed_inflight += 1;
                let request = Request::FetchAny { package, have };
                let timeout = (deadline - now).min(cfg.chunk_timeout.max(SEED_WAIT));
                let cap = host
                    .download_limit()
                    .map(|limit| (limit, u64::from(t.d.chunk_size)));
                inflight.spawn(fetch_one(conn.clone(), request, timeout, cap));
            }
        }
        schedule(host, t, &cfg, &mut inflight, deadline);
        tokio::select! {
            biased;
            Some(done) = inflight.join_next() => {
                let Ok(done) = done else { continue };
                match done {
                    Fetched::Chunk { from, index, bytes, asked, took } => {
                        let is_seed = asked.is_none();
                        finish_request(t, from, asked, &mut seed_inflight);
                        if !is_seed {
                            adapt(t, &cfg, from, Some(took));
                        }
                        let i = index as usize;
                        if t.st().have.get(i) {
                            continue; // a duplicate
                        }
                        match host.chunks().put(&t.d, i, &bytes).await {
                            Ok(()) => {
                                if !is_seed {
                                    rep.good(from);
                                }
                                t.got(i);
                                last_progress = Instant::now();
                                *sources.entry(from).or_default() += 1;
                                let have = t.have_bytes();
                                // Progress at most every 1% of the size.
                                if have - last_shown >= total / 100 || have == total {
                                    last_shown = have;
                                    progress(have);
                                }
                            }
                            Err(Error::Invalid { .. }) => {
                                tracing::debug!(peer = %from.short(), index, "a chunk out of range");
                                rep.corrupt(from);
                            }
                            Err(e @ Error::BadSignature { .. }) | Err(e @ Error::Protocol { .. }) => {
                                if bad.first_from(from) {
                                    tracing::warn!(peer = %from.short(), index, error = %e, "a bad chunk");
                                } else {
                                    tracing::debug!(peer = %from.short(), index, error = %e, "a bad chunk");
                                }
                                bad.record(i, from);
                                // The seed is not asked again for it
                                // (`bad`); its standing is left alone, so
                                // that one bad package does not ban a
                                // controller from later, good deploys.
                                if !is_seed {
                                    rep.corrupt(from);
                                }
                            }
                            Err(e) => {
                                t.close();
                                return Err(e);
                            }
                        }
                    }
                    Fetched::Failed { from, asked, error } => {
                        finish_request(t, from, asked, &mut seed_inflight);
                        if asked.is_none() {
                            match &error {
                                Error::NotFound { .. } | Error::Busy { .. } => {
                                    seed_rest_until = Some(Instant::now() + SEED_REST);
                                }
                                e => {
                                    tracing::info!(error = %e, "the seed is gone; going on with peers");
                                    seed_alive = false;
                                }
                            }
                        } else {
                            adapt(t, &cfg, from, None);
                            tracing::debug!(peer = %from.short(), error = %error, "a chunk request failed");
                            match error {
                                Error::Protocol { .. } => rep.corrupt(from),
                                // At its upload cap: no fault, ask it later.
                                Error::Busy { .. } => {
                                    if let Some(n) = t.st().neighbors.get_mut(&from) {
                                        n.rest_until = Some(Instant::now() + BUSY_REST);
                                    }
                                }
                                _ => rep.failed(from),
                            }
                        }
                    }
                }
            }
            () = t.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How long the seed is left alone after it had nothing to send or was
/// busy.
const SEED_REST: Duration = Duration::from_millis(200);

/// The chunks of one transfer that came bad, and from which peers.
///
/// Honest nodes verify every chunk before they store or serve it, and the
/// transport authenticates who sent what, so a peer that sent chunk `i`
/// bad would send it bad again: it is not asked for that chunk twice.
#[derive(Default)]
struct BadChunks {
    /// Per chunk: who sent it bad, the last one first in the pair.
    chunks: BTreeMap<usize, (PeerId, BTreeSet<PeerId>)>,
    /// Peers that have sent at least one bad chunk (for logging once).
    peers: BTreeSet<PeerId>,
}

impl BadChunks {
    /// Whether `from` has not sent a bad chunk before.
    fn first_from(&self, from: PeerId) -> bool {
        !self.peers.contains(&from)
    }

    fn record(&mut self, i: usize, from: PeerId) {
        self.peers.insert(from);
        let e = self.chunks.entry(i).or_insert((from, BTreeSet::new()));
        e.0 = from;
        e.1.insert(from);
    }

    /// The chunks `peer` sent bad.
    fn sent_bad_by(&self, peer: Option<PeerId>) -> impl Iterator<Item = usize> + '_ {
        self.chunks
            .iter()
            .filter(move |(_, (_, from))| peer.is_some_and(|p| from.contains(&p)))
            .map(|(i, _)| *i)
    }

    /// A missing chunk that came bad and that no source can still give:
    /// not `seed` (the usable seed, if any) and no unbanned neighbour
    /// holding it, unless it sent that chunk bad already. Returns the
    /// chunk and the last peer that sent it bad.
    fn unobtainable(
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
fn orphan_chunk(t: &Transfer, rep: &Reputation) -> Option<usize> {
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
fn usable_neighbors(t: &Transfer, rep: &Reputation) -> usize {
    t.st()
        .neighbors
        .iter()
        .filter(|(id, n)| !n.seed && !rep.is_banned(id))
        .count()
}

/// Books a finished request: a chunk asked of a neighbour (`asked`), or
/// an "any chunk" request to the seed (`None`).
fn finish_request(t: &Transfer, from: PeerId, asked: Option<u32>, seed_inflight: &mut usize) {
    let Some(i) = asked else {
        *seed_inflight = seed_inflight.saturating_sub(1);
        return;
    };
    let mut st = t.st();
    st.requested.clear(i as usize);
    if let Some(n) = st.neighbors.get_mut(&from) {
        n.inflight = n.inflight.saturating_sub(1);
    }
}

/// Moves `from`'s request window after a chunk request to it ended: a
/// failure (or a busy answer) closes it to one; a chunk that came faster
/// than this node's typical fetch widens it again, up to
/// [`SwarmConfig::per_peer`], and one that took more than twice as long
/// narrows it. Requests go where they are served soonest.
fn adapt(t: &Transfer, cfg: &SwarmConfig, from: PeerId, took: Option<Duration>) {
    let mut st = t.st();
    let st = &mut *st;
    let max = cfg.per_peer.max(1) as f64;
    let Some(n) = st.neighbors.get_mut(&from) else {
        return;
    };
    let window = n.window.get_or_insert(max);
    let Some(took) = took.map(|d| d.as_secs_f64()) else {
        *window = 1.0;
        return;
    };
    let typical = *st.typical.get_or_insert(took);
    if took < typical {
        *window = (*window + 0.5).min(max);
    } else if took > 2.0 * typical {
        *window = (*window - 1.0).max(1.0);
    }
    st.typical = Some(typical * 0.9 + took * 0.1);
}

/// Shuffles `v` (Fisher-Yates; `random(k)` is uniform in `0..k`).
fn shuffle<T>(v: &mut [T], mut random: impl FnMut(usize) -> usize) {
    for i in (1..v.len()).rev() {
        v.swap(i, random(i + 1));
    }
}

/// The index with the lowest count among `(count, index)` pairs, ties
/// broken at random (`random(k)` is uniform in `0..k`), in one pass.
fn fewest(
    candidates: impl Iterator<Item = (u32, usize)>,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    let mut ties = 0;
    for (count, i) in candidates {
        match best {
            Some((b, _)) if count > b => {}
            Some((b, _)) if count == b => {
                ties += 1;
                if random(ties) == 0 {
                    best = Some((count, i));
                }
            }
            _ => {
                best = Some((count, i));
                ties = 1;
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Gives every neighbour with room its rarest missing chunks to send.
/// Neighbours with a clean record go first, in random order (ordered by
/// score, the ones that served most were always asked first and became
/// the fleet's hot spots), then those that failed or sent bad chunks.
///
/// A neighbour reached through a relay is asked only for chunks that no
/// directly reached neighbour holds, one at a time: every byte it sends
/// crosses the relay's links, which every node behind NAT shares, so the
/// swarm routes around the relay where a direct path can serve. In the
/// simulator (200 targets, 30% relay-only, 30% punchable; the
/// `swarm_nat` test) the relay carried 0.09 of a release per relay-only
/// target without this rule (its slow, shared links already shrink the
/// windows of relayed neighbours), 0.05 with it.
fn schedule<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    cfg: &SwarmConfig,
    inflight: &mut JoinSet<Fetched>,
    deadline: Instant,
) {
    let rep = host.reputation();
    let mut st = t.st();
    let st = &mut *st;
    let now = Instant::now();
    for n in st.neighbors.values_mut() {
        if now >= n.path_checked + PATH_RECHECK {
            n.relayed = n.conn.path().kind == PathKind::Relayed;
            n.path_checked = now;
        }
    }
    // What the directly reached neighbours (not the seed) hold; only
    // needed when some neighbour is relayed.
    let direct_has = st.neighbors.values().any(|n| n.relayed).then(|| {
        st.neighbors
            .values()
            .filter(|n| !n.seed && !n.relayed)
            .fold(Bitfield::new(st.have.len()), |acc, n| acc.union(&n.have))
    });
    let theirs = st
        .neighbors
        .values()
        .filter(|n| !n.seed)
        .map(|n| n.have.count());
    let boost = catch_up(st.have.count(), theirs, st.have.len());
    let mut order: Vec<(bool, PeerId)> = st
        .neighbors
        .iter()
        .filter(|(id, n)| {
            !n.seed
                && n.inflight < n.window(cfg) * boost
                && n.rest_until.is_none_or(|t| now >= t)
                && !rep.is_banned(id)
        })
        .map(|(id, _)| (rep.score(id) < 0, *id))
        .collect();
    shuffle(&mut order, |k| host.random(k));
    order.sort_by_key(|(bad, _)| *bad);
    for (_, id) in order {
        let Some(n) = st.neighbors.get_mut(&id) else {
            continue;
        };
        let relayed = n.relayed;
        let room = if relayed { 1 } else { n.window(cfg) * boost };
        while n.inflight < room {
            // Rarest first among what this neighbour has and we lack
            // (through a relay: only what no direct neighbour has).
            let wanted = n
                .have
                .ones()
                .filter(|&i| !st.have.get(i) && !st.requested.get(i))
                .filter(|&i| !relayed || direct_has.as_ref().is_none_or(|d| !d.get(i)))
                .map(|i| (st.counts[i], i));
            let Some(i) = fewest(wanted, |ties| host.random(ties)) else {
                break;
            };
            st.requested.set(i);
            n.inflight += 1;
            let request = Request::FetchChunks {
                package: t.id,
                indexes: vec![i as u32],
            };
            let timeout = cfg
                .chunk_timeout
                .min(deadline.saturating_duration_since(now));
            let cap = host
                .download_limit()
                .map(|limit| (limit, chunk_len(&t.d, i)));
            inflight.spawn(fetch_one(n.conn.clone(), request, timeout, cap));
        }
    }
}

/// How many times its usual window a node asks each neighbour for: twice
/// when it holds `mine` chunks of `n` and its neighbours (`theirs`) hold
/// more by over 2% of the release on average (4 chunks at least), else
/// once. A node that fell behind takes a larger share of its neighbours'
/// uplinks (they all hold chunks it lacks) and catches up; in the
/// simulator with 100 targets this took the last target from 0.5 s
/// behind the median to 0.1 s.
fn catch_up(mine: usize, theirs: impl Iterator<Item = usize>, n: usize) -> usize {
    let (sum, k) = theirs.fold((0, 0), |(sum, k), c| (sum + c, k + 1));
    let margin = (n / 50).max(4);
    if k > 0 && (mine + margin) * k < sum {
        2
    } else {
        1
    }
}

/// Opens sessions to `peers` (in random order, [`DIALS_AT_ONCE`] at a
/// time, in the background) until the transfer has `want` neighbours
/// besides the seed; a peer that does not know the release yet (its
/// deploy is still on the way) is asked again a few times.
fn dial_peers<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    mut peers: Vec<PeerAddr>,
    want: usize,
    deadline: Instant,
) {
    let me = host.local_id();
    peers.retain(|p| p.id != me);
    let mut seen = BTreeSet::new();
    peers.retain(|p| seen.insert(p.id));
    shuffle(&mut peers, |k| host.random(k));
    let queue = Arc::new(Mutex::new(VecDeque::from(peers)));
    for _ in 0..DIALS_AT_ONCE.min(want) {
        let (host2, t, queue) = (host.clone(), t.clone(), queue.clone());
        host.spawn(Box::pin(async move {
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_front();
                let Some(addr) = next else { return };
                // Neighbours through a relay count for little: keep
                // dialing until enough are direct (or twice as many in
                // all).
                let enough = t.direct_peers() >= want || t.peers() >= 2 * want;
                if t.st().closed || Instant::now() >= deadline || enough {
                    return;
                }
                join_peer(&host2, &t, addr, deadline).await;
            }
        }));
    }
}

/// Dials one peer and opens a session with it, unless it is banned or a
/// neighbour already.
async fn join_peer<H: Host>(host: &H, t: &Arc<Transfer>, addr: PeerAddr, deadline: Instant) {
    let id = addr.id;
    if host.reputation().is_banned(&id) {
        return;
    }
    if t.st().neighbors.contains_key(&id) {
        return; // it opened one to us
    }
    let conn = match host.dial(addr).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(peer = %id.short(), error = %e, "cannot reach a swarm peer");
            return;
        }
    };
    for _ in 0..50 {
        match open_session(host, t, conn.clone(), false).await {
            Ok(()) => return,
            Err(Error::NotFound { .. }) if Instant::now() < deadline => {
                // Its deploy has not reached it yet.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::debug!(peer = %id.short(), error = %e, "no swarm session");
                return;
            }
        }
    }
}

/// What a seed (the controller) knows of one release's spread.
pub(crate) struct SeedState {
    haves: BTreeMap<PeerId, Bitfield>,
    /// Copies of each chunk in the fleet, as the sessions report.
    held: Vec<u32>,
    /// Copies the seed sent.
    sent: Vec<u32>,
    sending: BTreeMap<PeerId, BTreeSet<u32>>,
}

/// A release a seed serves: the bytes, the fleet's have-maps, and the
/// upload slots that "any chunk" requests queue for.
pub(crate) struct Seed {
    pub(crate) d: Descriptor,
    st: Mutex<SeedState>,
    slots: tokio::sync::Semaphore,
    /// Slots opened so far: a few at first, so that the first chunks
    /// arrive (and are passed on) soon, one more per chunk sent.
    opened: std::sync::atomic::AtomicUsize,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
}

/// "Any chunk" requests a seed serves at once. A slot is held until the
/// chunk has arrived, and a target's downlink is shared with its peers'
/// uploads, so a few slots leave the seed's uplink idle while their
/// chunks crawl through busy downlinks. In the simulator with 100
/// targets, before the first slots were few and before upload slots, 8
/// slots sent one copy of every chunk at 84% of the seed's rate, 12 at
/// 93% and 16 at 99%, but with 16 each first copy took so long to arrive
/// that the spread lagged more: 12 finished first (1.36x the bound
/// against 1.39x with 8 and 1.38x with 16).
pub(crate) const SEED_SLOTS: usize = 12;

/// Slots a seed opens at first; one more opens for each chunk sent, up
/// to [`SEED_SLOTS`]. The first chunks go out at a large share of the
/// uplink, so they arrive, and are passed on, sooner: with 12 slots from
/// the start, the first chunks took 250 ms to arrive in the simulator
/// with 100 targets, and nothing moved between targets for half a
/// second.
const SEED_FIRST_SLOTS: usize = 2;

impl Seed {
    pub(crate) fn new(d: Descriptor, seed: u64) -> Self {
        use rand::SeedableRng;
        let n = d.chunks.len();
        Seed {
            d,
            st: Mutex::new(SeedState {
                haves: BTreeMap::new(),
                held: vec![0; n],
                sent: vec![0; n],
                sending: BTreeMap::new(),
            }),
            slots: tokio::sync::Semaphore::new(SEED_FIRST_SLOTS),
            opened: std::sync::atomic::AtomicUsize::new(SEED_FIRST_SLOTS),
            rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SeedState> {
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers a session: our (full) have-map, then their announcements
    /// until they hold everything or go.
    pub(crate) async fn session(&self, peer: PeerId, mut framed: Framed, theirs: Bitfield) {
        let n = self.d.chunks.len();
        if let Err(e) = theirs.check(n) {
            end_with(&mut framed, Frame::Error(RpcError::from_error(&e))).await;
            return;
        }
        {
            let mut st = self.st();
            let st = &mut *st;
            let have = st.haves.entry(peer).or_insert_with(|| Bitfield::new(n));
            for i in theirs.ones() {
                if have.set(i) {
                    st.held[i] += 1;
                }
            }
        }
        if framed.send(&Frame::Have(Bitfield::full(n))).await.is_err() {
            return;
        }
        loop {
            if self.st().haves.get(&peer).is_some_and(Bitfield::is_full) {
                let _ = framed.finish().await;
                return;
            }
            match framed.recv_opt::<Frame>().await {
                Ok(Some(Frame::Got(i))) if (i as usize) < n => {
                    let mut st = self.st();
                    let st = &mut *st;
                    if let Some(have) = st.haves.get_mut(&peer)
                        && have.set(i as usize)
                    {
                        st.held[i as usize] += 1;
                    }
                }
                _ => return,
            }
        }
    }

    /// Answers [`Request::FetchAny`]: waits for an upload slot, then sends
    /// the chunk `peer` lacks that the fleet holds fewest copies of.
    pub(crate) async fn fetch_any(
        &self,
        peer: PeerId,
        framed: &mut Framed,
        have: Bitfield,
        read: impl FnOnce(usize) -> BoxFuture<'static, Result<Option<Vec<u8>>>>,
    ) -> Option<Frame> {
        let n = self.d.chunks.len();
        if let Err(e) = have.check(n) {
            return Some(Frame::Error(RpcError::from_error(&e)));
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return Some(Frame::Error(RpcError::new(
                ErrorKind::Busy,
                "the seed is closing",
            )));
        };
        let pick = {
            let mut st = self.st();
            let st = &mut *st;
            let known = st.haves.get(&peer);
            let sending = st.sending.entry(peer).or_default();
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let lacking = (0..n)
                .filter(|&i| {
                    !have.get(i)
                        && !known.is_some_and(|k| k.get(i))
                        && !sending.contains(&(i as u32))
                })
                .map(|i| (st.held[i] + st.sent[i], i));
            let best = fewest(lacking, |ties| {
                rand::RngExt::random_range(&mut *rng, 0..ties)
            });
            if let Some(i) = best {
                st.sent[i] += 1;
                sending.insert(i as u32);
            }
            best
        };
        let Some(i) = pick else {
            return Some(Frame::Error(RpcError::new(
                ErrorKind::NotFound,
                "nothing left that this node lacks",
            )));
        };
        let end = match read(i).await {
            Ok(None) => Some(Frame::Error(RpcError::new(
                ErrorKind::NotFound,
                format!("chunk {i} is not held here"),
            ))),
            Ok(Some(bytes)) => {
                let sent = framed
                    .send(&Frame::Chunk {
                        index: i as u32,
                        bytes,
                    })
                    .await
                    .is_ok()
                    && framed.send(&Frame::Done(Reply::Ok)).await.is_ok();
                if sent {
                    // The slot is free once the chunk has arrived: the
                    // client closes its side after reading it.
                    let _ = framed.finish().await;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), framed.recv_opt::<Frame>())
                            .await;
                }
                None
            }
            Err(e) => Some(Frame::Error(RpcError::from_error(&e))),
        };
        if let Some(s) = self.st().sending.get_mut(&peer) {
            s.remove(&(i as u32));
        }
        let more = |o: usize| (o < SEED_SLOTS).then_some(o + 1);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if self.opened.fetch_update(relaxed, relaxed, more).is_ok() {
            self.slots.add_permits(1);
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_behind_its_neighbours_asks_for_more_at_once() {
        // 400 chunks: behind by more than 8 on average.
        assert_eq!(catch_up(100, [110, 109].into_iter(), 400), 2);
        assert_eq!(catch_up(100, [108, 108].into_iter(), 400), 1);
        assert_eq!(catch_up(100, [100, 140, 90].into_iter(), 400), 2);
        assert_eq!(catch_up(100, [95, 105].into_iter(), 400), 1);
        // Small releases: 4 chunks at least.
        assert_eq!(catch_up(2, [6].into_iter(), 20), 1);
        assert_eq!(catch_up(2, [7].into_iter(), 20), 2);
        // No neighbour, nobody to compare with.
        assert_eq!(catch_up(0, std::iter::empty(), 400), 1);
    }

    /// Found by the `rpc` fuzz target: a have-map claiming 85 chunks in 3
    /// bytes decoded, and `get` on it panicked. A decoded bitfield is now
    /// well formed or an error.
    #[test]
    fn malformed_bitfields_do_not_decode() {
        let crash = [0x55, 0x03, 0x55, 0x11, 0x01];
        assert!(postcard::from_bytes::<Bitfield>(&crash).is_err());
        let raw = RawBitfield {
            len: 85,
            bits: vec![0x55, 0x11, 0x01],
        };
        let e = Bitfield::try_from(raw).unwrap_err();
        assert!(e.contains("85 chunks in 3 bytes"), "{e}");
        // A bit past the last chunk.
        let stray = postcard::to_allocvec(&(3u32, vec![0b1000u8])).unwrap();
        assert!(postcard::from_bytes::<Bitfield>(&stray).is_err());
        let raw = RawBitfield {
            len: 3,
            bits: vec![0b1000],
        };
        let e = Bitfield::try_from(raw).unwrap_err();
        assert!(e.contains("bits past the last"), "{e}");
        // Well formed ones round-trip.
        let mut b = Bitfield::new(11);
        b.set(0);
        b.set(10);
        let back: Bitfield = postcard::from_bytes(&postcard::to_allocvec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.ones().collect::<Vec<_>>(), vec![0, 10]);
        assert!(back.check(11).is_ok());
        assert!(back.check(12).is_err());
    }
}
