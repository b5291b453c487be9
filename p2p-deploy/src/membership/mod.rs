//! Membership: every node knows the whole fleet from one bootstrap
//! address.
//!
//! Each node publishes a [`NodeRecord`] (id, addresses, name, labels,
//! site, the releases it holds, a sequence number) signed with its node
//! key. Records spread by gossip over the SDK's own [`Provider`], so every
//! backend has membership: every round (1 s while the table is changing,
//! 3 s once it is not) a node picks a random member and the two compare
//! their tables by a root hash, then by 64 bucket hashes, then by digests,
//! and swap only the entries that differ (see [`gossip`](self) for the
//! exchange). In the steady state a round is two messages of a few dozen
//! bytes.
//!
//! A peer cannot forge another node's record (the signature is over its
//! bytes, by the node's key) or roll it back (a lower sequence number never
//! replaces a higher one). A record with a bad signature, a lower sequence
//! number or an address the [`AddressPolicy`] refuses is dropped and its
//! sender loses reputation; past the threshold it is banned for a while.
//! Gossip sessions are rate-limited per peer, each message carries a
//! bounded number of entries, and the table holds at most
//! [`MembershipConfig::max_members`] nodes.
//!
//! # Leaving
//!
//! A node that cannot be reached in two rounds in a row is *claimed*
//! unreachable: a claim signed by the node that found out, naming the
//! record it was about and the time. The claim spreads like a record and
//! shows the node as unreachable since then. A node that hears a claim
//! about itself (it was only cut off) publishes a newer record, which
//! clears it everywhere. After [`MembershipConfig::forget_after`] an
//! unreachable node is dropped, and kept out until it publishes a newer
//! record.
//!
//! ```no_run
//! use std::sync::Arc;
//! use p2p_core::{NodeKey, PeerAddr, Provider, Storage, SystemClock};
//! use p2p_deploy::Agent;
//! use p2p_deploy::membership::{Membership, MembershipConfig, Profile};
//!
//! # async fn demo(agent: Agent, key: NodeKey, provider: Arc<dyn Provider>,
//! #     storage: Arc<dyn Storage>, first: PeerAddr) -> p2p_core::Result<()> {
//! let cfg = MembershipConfig { bootstrap: vec![first], ..MembershipConfig::default() };
//! let m = Membership::new(cfg, key, provider, storage, Arc::new(SystemClock),
//!     Profile::default(), rand::random()).await?;
//! agent.set_membership(m)?; // the agent publishes its profile and runs the rounds
//! tokio::spawn(async move { agent.run().await });
//! # Ok(()) }
//! ```
//!
//! # Joining
//!
//! A node starts with one or more bootstrap addresses and gossips with
//! them until one answers; a bootstrap that does not answer is logged and
//! the next is tried. A node restarting with a new address publishes a
//! record with a higher sequence number (each run starts above the last
//! stored one and above the wall clock), which replaces the old one.

pub mod gossip;
mod record;
mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::framing::Framed;
use p2p_core::sync::lock;
use p2p_core::{Clock, Connection, Error, NodeKey, PeerAddr, PeerId, Provider, Result, Storage};
use rand::{RngExt, SeedableRng};
use tokio::sync::Notify;

use crate::proto::{Call, Request};
use crate::swarm::Reputation;
use gossip::{GossipMsg, MAX_ENTRIES_PER_MESSAGE};
pub use record::{
    AddressPolicy, Claim, HeldRelease, IpNet, MAX_ADDRS, MAX_HELD, MAX_LABELS, MAX_RECORD_BYTES,
    NodeRecord, RecordError, SignedRecord,
};
pub use table::MemberEntry;
use table::{ClaimMerge, Merge, Table};

/// Where a node's last sequence number is kept.
const SEQ_KEY: &str = "membership/seq";
/// Rounds of fast gossip after the table changed.
const ACTIVE_ROUNDS: u32 = 5;
/// Gossip connections kept open.
const KEPT_CONNECTIONS: usize = 8;
/// Failed rounds in a row before a node is claimed unreachable.
const FAILURES_BEFORE_CLAIM: u32 = 2;

/// How membership behaves.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Nodes to join through; tried in order until one answers.
    pub bootstrap: Vec<PeerAddr>,
    /// Time between rounds while the table is changing.
    pub gossip_every: Duration,
    /// Time between rounds once it is not.
    pub idle_every: Duration,
    /// How long a node shown unreachable is kept before it is dropped.
    pub forget_after: Duration,
    /// Which addresses records may claim.
    pub addresses: AddressPolicy,
    /// Whose records are taken: on a private network, the transport's
    /// allow-list, so that a peer cannot fill tables with records of
    /// nodes that may not even connect. `None`: anyone's (bounded by
    /// [`max_members`](Self::max_members)).
    pub allowed_ids: Option<std::collections::BTreeSet<PeerId>>,
    /// How long a dial to a gossip partner may take.
    pub connect_timeout: Duration,
    /// How long one exchange may take.
    pub round_timeout: Duration,
    /// The most nodes the table holds (memory bound).
    pub max_members: usize,
    /// Gossip sessions a peer may open a second (burst: four times that).
    pub sessions_per_second: u32,
}

impl Default for MembershipConfig {
    /// Rounds every 1 s while changing and 3 s when not, unreachable nodes
    /// kept an hour, any address, 3 s to dial, 10 s a round, up to 20,000
    /// nodes, 5 sessions a second per peer.
    fn default() -> Self {
        MembershipConfig {
            bootstrap: Vec::new(),
            gossip_every: Duration::from_secs(1),
            idle_every: Duration::from_secs(3),
            forget_after: Duration::from_secs(3600),
            addresses: AddressPolicy::default(),
            allowed_ids: None,
            connect_timeout: Duration::from_secs(3),
            round_timeout: Duration::from_secs(10),
            max_members: 20_000,
            sessions_per_second: 5,
        }
    }
}

/// What a node publishes about itself, besides its id and sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Its name for people.
    pub name: String,
    /// Its labels (`site` among them, if set).
    pub labels: BTreeMap<String, String>,
    /// Where it can be reached.
    pub addrs: Vec<String>,
    /// The releases it holds.
    pub held: Vec<HeldRelease>,
}

/// One node as a table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its newest record.
    pub record: NodeRecord,
    /// The claim that it is unreachable, if any.
    pub down: Option<Claim>,
}

impl Member {
    /// Where to reach it.
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr {
            id: self.record.id,
            addrs: self.record.addrs.clone(),
        }
    }

    /// Whether it is taken to be up.
    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }
}

/// Opens and checks the entries of a members list (as
/// [`Request::Members`] answers it): entries whose record or claim does
/// not verify are returned apart, with why.
pub fn open_entries(
    entries: Vec<MemberEntry>,
    policy: &AddressPolicy,
) -> (Vec<Member>, Vec<RecordError>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for e in entries {
        match e.record.open(policy) {
            Ok(record) => {
                let down = match e.down {
                    Some(c) if c.about == record.id && c.seq == record.seq => match c.verify() {
                        Ok(()) => Some(c),
                        Err(err) => {
                            bad.push(err);
                            None
                        }
                    },
                    _ => None,
                };
                ok.push(Member { record, down });
            }
            Err(err) => bad.push(err),
        }
    }
    (ok, bad)
}

/// Per-peer session budget.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

struct State {
    table: Table,
    me: NodeRecord,
    conns: Vec<(PeerId, Arc<dyn Connection>)>,
    failures: BTreeMap<PeerId, u32>,
    retry: Option<PeerId>,
    rates: BTreeMap<PeerId, Bucket>,
    rng: rand_chacha::ChaCha8Rng,
}

struct Inner {
    cfg: MembershipConfig,
    key: NodeKey,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    reputation: Reputation,
    changed: Notify,
    refused: p2p_core::ratelog::LogLimiter,
    bootstrap_log: p2p_core::ratelog::LogLimiter,
}

/// A node's membership: its table, its own record, the gossip rounds.
/// Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({})", self.inner.key.peer_id().short())
    }
}

/// What one exchange did.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    in_sync: bool,
    changed: bool,
}

impl Membership {
    /// Membership for the node of `key` on `provider`, publishing
    /// `profile`. Its first sequence number is above the one kept in
    /// `storage` from the last run and above the wall clock's milliseconds.
    pub async fn new(
        cfg: MembershipConfig,
        key: NodeKey,
        provider: Arc<dyn Provider>,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        profile: Profile,
        seed: u64,
    ) -> Result<Self> {
        if key.peer_id() != provider.local_id() {
            return Err(Error::invalid(
                "membership",
                "the node key is not the provider's identity",
            ));
        }
        let stored = match storage.get(SEQ_KEY).await? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                Error::invalid(
                    "stored sequence number",
                    format!("{SEQ_KEY} holds {} bytes, not 8", b.len()),
                )
            })?),
            None => 0,
        };
        let seq = stored.saturating_add(1).max(clock.now().as_millis());
        storage.put(SEQ_KEY, &seq.to_be_bytes()).await?;
        let me = NodeRecord {
            id: key.peer_id(),
            seq,
            addrs: profile.addrs,
            site: profile.labels.get("site").cloned(),
            name: profile.name,
            labels: profile.labels,
            held: truncate_held(profile.held),
        };
        let mut table = Table::new(key.peer_id(), cfg.max_members);
        table.offer(me.sign(&key), me.clone(), clock.now().as_millis());
        Ok(Membership {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    table,
                    me,
                    conns: Vec::new(),
                    failures: BTreeMap::new(),
                    retry: None,
                    rates: BTreeMap::new(),
                    rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
                }),
                cfg,
                key,
                provider,
                clock,
                storage,
                reputation: Reputation::default(),
                changed: Notify::new(),
                refused: p2p_core::ratelog::LogLimiter::new(Duration::from_secs(10)),
                bootstrap_log: p2p_core::ratelog::LogLimiter::new(Duration::from_secs(60)),
            }),
        })
    }

    /// This node's own record.
    pub fn me(&self) -> NodeRecord {
        lock(&self.inner.state).me.clone()
    }

    /// Every node known, this one included, by id.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.inner.state)
            .table
            .entries()
            .map(|e| Member {
                record: e.record.clone(),
                down: e.down.clone(),
            })
            .collect()
    }

    /// The site `id`'s record names, if the node is known and has one.
    pub fn site_of(&self, id: &PeerId) -> Option<String> {
        lock(&self.inner.state).table.get(id)?.record.site.clone()
    }

    /// The table as it travels (for [`Request::Members`]).
    pub fn entries(&self) -> Vec<MemberEntry> {
        lock(&self.inner.state)
            .table
            .entries()
            .map(|e| e.to_wire())
            .collect()
    }

    /// Peers' standing: bad records cost reputation, and past the
    /// threshold a peer's gossip is refused for a while.
    pub fn reputation(&self) -> &Reputation {
        &self.inner.reputation
    }

    /// Publishes a changed profile (new addresses, labels, held
    /// releases); nothing happens when it is the same.
    pub async fn publish(&self, profile: Profile) -> Result<()> {
        let held = truncate_held(profile.held);
        {
            let s = lock(&self.inner.state);
            let me = &s.me;
            if me.addrs == profile.addrs
                && me.name == profile.name
                && me.labels == profile.labels
                && me.held == held
            {
                return Ok(());
            }
        }
        self.bump(|me| {
            me.site = profile.labels.get("site").cloned();
            me.addrs = profile.addrs;
            me.name = profile.name;
            me.labels = profile.labels;
            me.held = held;
        })
        .await
    }

    /// A new own record with a higher sequence number (at least `above`
    /// + 1), kept in storage first so that no run reuses it.
    async fn bump_above(&self, above: u64, change: impl FnOnce(&mut NodeRecord)) -> Result<()> {
        let mut next = {
            let s = lock(&self.inner.state);
            s.me.clone()
        };
        change(&mut next);
        next.seq = next.seq.max(above).saturating_add(1);
        self.inner
            .storage
            .put(SEQ_KEY, &next.seq.to_be_bytes())
            .await?;
        let signed = next.sign(&self.inner.key);
        {
            let mut s = lock(&self.inner.state);
            if s.me.seq >= next.seq {
                return Ok(()); // a concurrent bump went further
            }
            s.table
                .offer(signed, next.clone(), self.inner.clock.now().as_millis());
            s.me = next;
        }
        self.inner.changed.notify_one();
        Ok(())
    }

    async fn bump(&self, change: impl FnOnce(&mut NodeRecord)) -> Result<()> {
        self.bump_above(0, change).await
    }

    /// Takes in entries from `from`, scoring it; returns whether the table
    /// changed and whether this node must refute a claim (or an own record
    /// from an older run with a higher number).
    fn absorb(&self, from: PeerId, entries: Vec<MemberEntry>) -> (bool, Option<u64>) {
        let policy = &self.inner.cfg.addresses;
        let now = self.inner.clock.now().as_millis();
        let me = self.inner.key.peer_id();
        let mut changed = false;
        let mut refute = None;
        let mut bad: Option<String> = None;
        let mut s = lock(&self.inner.state);
        for e in entries {
            // An entry already held byte for byte needs no verification.
            let held = peek_id(&e.record)
                .and_then(|id| s.table.get(&id))
                .is_some_and(|h| h.signed == e.record && (e.down.is_none() || h.down.is_some()));
            if held {
                continue;
            }
            let record = match e.record.open(policy) {
                Ok(r) => r,
                Err(err) => {
                    match err {
                        RecordError::BadSignature { .. } => self.inner.reputation.corrupt(from),
                        _ => self.inner.reputation.failed(from),
                    }
                    bad.get_or_insert_with(|| err.to_string());
                    continue;
                }
            };
            if record.id == me {
                if record.seq >= s.me.seq {
                    // Ours, from an earlier run that got further.
                    refute = Some(refute.unwrap_or(0).max(record.seq));
                }
                if let Some(c) = e.down
                    && c.about == me
                    && c.seq == s.me.seq
                    && c.verify().is_ok()
                {
                    refute = Some(refute.unwrap_or(0).max(s.me.seq));
                }
                continue;
            }
            let seq = record.seq;
            let id = record.id;
            if let Some(allowed) = &self.inner.cfg.allowed_ids
                && !allowed.contains(&id)
            {
                self.inner.reputation.failed(from);
                bad.get_or_insert_with(|| {
                    format!("record of {}, which is not on the allow-list", id.short())
                });
                continue;
            }
            match s.table.offer(e.record, record, now) {
                Merge::New | Merge::Updated => changed = true,
                Merge::Stale => {
                    self.inner.reputation.failed(from);
                    bad.get_or_insert_with(|| {
                        format!(
                            "record of {} with sequence number {seq}, older than the one held",
                            id.short()
                        )
                    });
                }
                Merge::Same | Merge::Forgotten | Merge::Full => {}
            }
            if let Some(c) = e.down {
                if c.about != id || c.seq != seq {
                    self.inner.reputation.failed(from);
                    continue;
                }
                if let Err(err) = c.verify() {
                    self.inner.reputation.corrupt(from);
                    bad.get_or_insert_with(|| err.to_string());
                    continue;
                }
                match s.table.offer_claim(c) {
                    ClaimMerge::Applied => changed = true,
                    ClaimMerge::AboutMe => refute = Some(refute.unwrap_or(0).max(seq)),
                    ClaimMerge::Ignored => {}
                }
            }
        }
        drop(s);
        if let Some(why) = bad
            && let Some(held) = self.inner.refused.allow(&from.to_string())
        {
            tracing::warn!(
                peer = %from.short(),
                "dropped gossip from a peer: {why}{}",
                p2p_core::ratelog::held_back(held)
            );
        }
        (changed, refute)
    }

    async fn after_absorb(&self, refute: Option<u64>) {
        if let Some(above) = refute {
            tracing::info!("refuting a claim that this node is unreachable");
            if let Err(e) = self.bump_above(above, |_| {}).await {
                tracing::warn!(error = %e, "could not publish a newer record");
            }
        }
    }

    /// Whether `peer` may open a gossip session now.
    fn admit(&self, peer: PeerId) -> std::result::Result<(), String> {
        if self.inner.reputation.is_banned(&peer) {
            return Err("banned for sending bad records".into());
        }
        let rate = f64::from(self.inner.cfg.sessions_per_second.max(1));
        let burst = rate * 4.0;
        let now = tokio::time::Instant::now();
        let mut s = lock(&self.inner.state);
        if s.rates.len() > 4 * self.inner.cfg.max_members {
            s.rates
                .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(10));
        }
        let b = s.rates.entry(peer).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(format!(
                "more than {} gossip sessions a second",
                self.inner.cfg.sessions_per_second
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Serves a gossip session a peer opened with its table's `root`
    /// (after [`Request::Gossip`]).
    pub(crate) async fn serve(&self, peer: PeerId, framed: &mut Framed, root: u64) {
        if let Err(why) = self.admit(peer) {
            if let Some(held) = self.inner.refused.allow(&peer.to_string()) {
                tracing::warn!(peer = %peer.short(), "gossip refused: {why}{}", p2p_core::ratelog::held_back(held));
            }
            let _ = framed.send(&GossipMsg::Refused(why)).await;
            let _ = framed.finish().await;
            return;
        }
        let r = tokio::time::timeout(
            self.inner.cfg.round_timeout,
            self.serve_inner(peer, framed, root),
        )
        .await;
        match r {
            Ok(Ok(refute)) => self.after_absorb(refute).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.short(), error = %e, "gossip session failed");
                if matches!(e, Error::Protocol { .. } | Error::FrameTooLarge { .. }) {
                    self.inner.reputation.failed(peer);
                }
            }
            Err(_) => tracing::debug!(peer = %peer.short(), "gossip session timed out"),
        }
        let _ = framed.finish().await;
    }

    async fn serve_inner(
        &self,
        peer: PeerId,
        framed: &mut Framed,
        root: u64,
    ) -> Result<Option<u64>> {
        let buckets = {
            let s = lock(&self.inner.state);
            if s.table.root() == root {
                None
            } else {
                Some(s.table.buckets().to_vec())
            }
        };
        let Some(buckets) = buckets else {
            framed.send(&GossipMsg::InSync).await?;
            return Ok(None);
        };
        framed.send(&GossipMsg::Buckets(buckets)).await?;
        let GossipMsg::Digests { buckets, items } = gossip::recv(framed).await? else {
            return Err(Error::protocol("gossip: expected digests"));
        };
        let (send, want) =
            lock(&self.inner.state)
                .table
                .compare(&buckets, &items, MAX_ENTRIES_PER_MESSAGE);
        framed
            .send(&GossipMsg::Entries {
                entries: send,
                want,
            })
            .await?;
        let entries = match gossip::recv(framed).await? {
            GossipMsg::Entries { entries, .. } => entries,
            _ => return Err(Error::protocol("gossip: expected entries")),
        };
        let (changed, refute) = self.absorb(peer, entries);
        if changed {
            self.inner.changed.notify_one();
        }
        Ok(refute)
    }

    /// A live gossip connection to `addr`, dialed within the connect
    /// timeout; the oldest of [`KEPT_CONNECTIONS`] is let go.
    async fn connect(&self, addr: &PeerAddr) -> Result<Arc<dyn Connection>> {
        {
            let mut s = lock(&self.inner.state);
            s.conns.retain(|(_, c)| c.is_connected());
            if let Some(i) = s.conns.iter().position(|(id, _)| *id == addr.id) {
                let kept = s.conns.remove(i);
                let c = kept.1.clone();
                s.conns.push(kept);
                return Ok(c);
            }
        }
        let timeout = self.inner.cfg.connect_timeout;
        let conn = tokio::time::timeout(timeout, self.inner.provider.connect(addr))
            .await
            .map_err(|_| Error::timeout(format!("connecting to {}", addr.id.short()), timeout))??;
        let mut s = lock(&self.inner.state);
        s.conns.push((addr.id, conn.clone()));
        if s.conns.len() > KEPT_CONNECTIONS {
            s.conns.remove(0);
        }
        Ok(conn)
    }

    /// One exchange with `addr`, as the client.
    async fn exchange(&self, addr: &PeerAddr) -> Result<Round> {
        let conn = self.connect(addr).await?;
        let root = lock(&self.inner.state).table.root();
        let timeout = self.inner.cfg.round_timeout;
        let call = Call::open(&*conn, Request::Gossip { root }, timeout).await?;
        let mut framed = call.into_framed();
        let result = tokio::time::timeout(timeout, async {
            let buckets = match gossip::recv(&mut framed).await? {
                GossipMsg::InSync => {
                    return Ok((
                        Round {
                            in_sync: true,
                            changed: false,
                        },
                        None,
                    ));
                }
                GossipMsg::Buckets(b) => b,
                GossipMsg::Refused(why) => {
                    return Err(Error::Busy {
                        what: format!("gossip with {}: {why}", addr.id.short()),
                    });
                }
                _ => return Err(Error::protocol("gossip: expected buckets")),
            };
            let (differing, items) = {
                let s = lock(&self.inner.state);
                let d = s.table.differing(&buckets);
                let items = s.table.digests(&d);
                (d, items)
            };
            framed
                .send(&GossipMsg::Digests {
                    buckets: differing,
                    items,
                })
                .await?;
            let (entries, want) = match gossip::recv(&mut framed).await? {
                GossipMsg::Entries { entries, want } => (entries, want),
                _ => return Err(Error::protocol("gossip: expected entries")),
            };
            let (changed, refute) = self.absorb(addr.id, entries);
            let reply = lock(&self.inner.state)
                .table
                .wanted(&want, MAX_ENTRIES_PER_MESSAGE);
            let taught = !reply.is_empty();
            framed
                .send(&GossipMsg::Entries {
                    entries: reply,
                    want: Vec::new(),
                })
                .await?;
            let _ = framed.finish().await;
            Ok((
                Round {
                    in_sync: false,
                    changed: changed || taught,
                },
                refute,
            ))
        })
        .await
        .map_err(|_| Error::timeout(format!("gossip with {}", addr.id.short()), timeout))??;
        let (round, refute) = result;
        self.after_absorb(refute).await;
        Ok(round)
    }

    /// The partner of the next round: a node that just failed once (to
    /// confirm), else now and then a node shown unreachable (to find one
    /// that is back, or a healed partition), else a random live member.
    fn pick(&self) -> Option<PeerAddr> {
        let me = self.inner.key.peer_id();
        let mut s = lock(&self.inner.state);
        if let Some(id) = s.retry.take()
            && let Some(e) = s.table.get(&id)
        {
            return Some(PeerAddr {
                id,
                addrs: e.record.addrs.clone(),
            });
        }
        let try_down = s.rng.random_ratio(1, 10);
        let eligible = |e: &&table::Entry| {
            e.record.id != me
                && e.down.is_some() == try_down
                && !self.inner.reputation.is_banned(&e.record.id)
        };
        let count = s.table.entries().filter(eligible).count();
        if count == 0 {
            return None;
        }
        let i = s.rng.random_range(0..count);
        s.table.entries().filter(eligible).nth(i).map(|e| PeerAddr {
            id: e.record.id,
            addrs: e.record.addrs.clone(),
        })
    }

    /// Gossips with the bootstrap peers in turn until one answers; each
    /// that does not is logged. Returns whether one answered.
    async fn join(&self) -> bool {
        for b in &self.inner.cfg.bootstrap {
            if b.id == self.inner.key.peer_id() {
                continue;
            }
            match self.exchange(b).await {
                Ok(_) => {
                    tracing::info!(peer = %b.id.short(), "joined the fleet through a bootstrap peer");
                    return true;
                }
                Err(e) => {
                    if let Some(held) = self.inner.bootstrap_log.allow(&b.to_string()) {
                        tracing::warn!(peer = %b, error = %e, "bootstrap peer did not answer; trying the others{}", p2p_core::ratelog::held_back(held));
                    }
                }
            }
        }
        false
    }

    /// A failed round with `addr`: the first is retried at once, the
    /// second in a row makes a claim.
    fn failed(&self, addr: &PeerAddr, e: &Error) {
        let now = self.inner.clock.now().as_millis();
        let mut s = lock(&self.inner.state);
        let n = s.failures.entry(addr.id).or_insert(0);
        *n += 1;
        if *n < FAILURES_BEFORE_CLAIM {
            s.retry = Some(addr.id);
            return;
        }
        s.failures.remove(&addr.id);
        let Some(e_held) = s.table.get(&addr.id) else {
            return;
        };
        if e_held.down.is_some() {
            return;
        }
        let claim = Claim::new(&self.inner.key, addr.id, e_held.record.seq, now);
        if s.table.offer_claim(claim) == ClaimMerge::Applied {
            tracing::info!(peer = %addr.id.short(), error = %e, "a member is unreachable");
            drop(s);
            self.inner.changed.notify_one();
        }
    }

    /// Runs the gossip rounds until dropped.
    pub async fn run(&self) {
        let cfg = &self.inner.cfg;
        let mut joined = self.join().await;
        let mut active = ACTIVE_ROUNDS;
        let mut rounds: u64 = 0;
        loop {
            let every = if active > 0 {
                cfg.gossip_every
            } else {
                cfg.idle_every
            };
            let jitter = {
                let mut s = lock(&self.inner.state);
                every.mul_f64(s.rng.random_range(0.0..0.25))
            };
            let retrying = lock(&self.inner.state).retry.is_some();
            let wait = if retrying {
                cfg.gossip_every / 2
            } else {
                every + jitter
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.changed.notified() => active = ACTIVE_ROUNDS,
            }
            rounds += 1;
            let now = self.inner.clock.now().as_millis();
            let forget = u64::try_from(cfg.forget_after.as_millis()).unwrap_or(u64::MAX);
            let gone = lock(&self.inner.state).table.forget(now, forget);
            for id in gone {
                tracing::info!(peer = %id.short(), "forgot a member unreachable for {:?}", cfg.forget_after);
            }
            let alone = lock(&self.inner.state).table.len() <= 1;
            // Alone, or now and then (a partition may have left only
            // nodes that forgot each other): the bootstrap peers.
            if alone || !joined || rounds.is_multiple_of(50) {
                if self.join().await {
                    joined = true;
                    active = ACTIVE_ROUNDS;
                    continue;
                }
                if alone {
                    continue;
                }
            }
            let Some(addr) = self.pick() else { continue };
            match self.exchange(&addr).await {
                Ok(r) => {
                    lock(&self.inner.state).failures.remove(&addr.id);
                    if r.in_sync && !r.changed {
                        active = active.saturating_sub(1);
                    } else {
                        active = ACTIVE_ROUNDS;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %addr.id.short(), error = %e, "gossip round failed");
                    self.failed(&addr, &e);
                }
            }
        }
    }
}

/// The record's id without verifying it (to find a held copy).
fn peek_id(r: &SignedRecord) -> Option<PeerId> {
    postcard::from_bytes::<NodeRecord>(&r.bytes)
        .ok()
        .map(|r| r.id)
}

/// The addresses worth putting in a record: loopback ones are left out
/// when there are others (a peer dialing 127.0.0.1 reaches itself), and
/// at most [`MAX_ADDRS`] are kept.
pub fn worth_publishing(addrs: Vec<String>) -> Vec<String> {
    let loopback = |a: &String| record::ip_of(a).is_some_and(|ip| ip.is_loopback());
    let mut out: Vec<String> = if addrs.iter().all(loopback) {
        addrs
    } else {
        addrs.into_iter().filter(|a| !loopback(a)).collect()
    };
    out.truncate(MAX_ADDRS);
    out
}

fn truncate_held(mut held: Vec<HeldRelease>) -> Vec<HeldRelease> {
    held.truncate(MAX_HELD);
    held
}
