//! The node agent: answers the deploy protocol, keeps per-app state on a
//! [`Storage`], and drives a [`Runtime`] from desired to actual state.
//!
//! # State
//!
//! One record per app under `agent/apps/<name>` (postcard): the active
//! version and whether it should run, the previous version, installed
//! versions with their package ids, a pending activation, and the last
//! [`HISTORY_KEPT`] deployment records. Release descriptors and chunks live
//! in the [`ChunkStore`] on the same storage; unpacked versions with the
//! [`Installer`].
//!
//! # Activation, and why a crash never leaves a half-installed version
//!
//! A deploy verifies the release (signatures against the trust store, the
//! anti-downgrade rule), fetches the chunks it lacks from the sender,
//! installs the version (all or nothing) and records it. Activation then
//! writes a *pending* marker, stops the old version, starts the new one and
//! waits for the health gate: `gate` consecutive passing probes from the
//! manifest's health check, or for an app without one, `settle` time up
//! without a restart. Only then does one storage write make the new version
//! active. Any failure stops the new version, starts the old one again and
//! records why. An agent that restarts with a pending marker went down
//! during activation: the old version is still the active one in its
//! record, so it records the interruption and restores the old version.
//! After a restart a node is therefore on the old version or, if the commit
//! was written, on the new one, and its history says which.
//!
//! Activation runs to the end once it has begun, even if the caller goes
//! away or its deadline passes: the deadline bounds verification and
//! transfer; the health gate has its own timeout.
//!
//! # Authorization
//!
//! With an operator list configured, mutating requests (deploy, start,
//! stop, restart, switch, rollback, remove, fetch) from any other peer are
//! refused with [`ErrorKind::Denied`] and logged. Node info, status, logs,
//! the catalog, release descriptors, chunk fetches and swarm sessions are
//! answered for every peer that got through admission.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use p2p_core::framing::Framed;
use p2p_core::{
    AppState, AppStatus, Clock, Connection, Error, NodeKey, PeerAddr, PeerId, Provider, RecvStream,
    Result, Runtime, SendStream, Storage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunks::ChunkStore;
use crate::install::Installer;
use crate::manifest::Manifest;
use crate::package::{Descriptor, PackageId};
use crate::pool::Pool;
use crate::proto::{
    ALIVE_VERSION, ActivateOptions, Activation, AppInfo, CatalogEntry, DeployEvent, ErrorKind,
    Frame, HEARTBEAT, HistoryEntry, MAX_FRAME, NodeInfo, Outcome, Reply, Request, RpcError,
    SDK_VERSION, accept_request, end_with, send_chunks,
};
use crate::swarm::{self, Reputation, SwarmConfig, Throttle, Transfer};
use crate::trust::{TrustStore, check_not_downgrade};
use futures::future::BoxFuture;

/// Deployment records kept per app.
pub const HISTORY_KEPT: usize = 50;

/// How long a request waits for another operation on the same app.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// How long an upload slot waits, after the chunks were written, for the
/// client to say it read them.
const SLOT_HOLD: Duration = Duration::from_secs(10);

/// How long a node waits for one peer's answer to [`Request::Release`]:
/// when fetching a release, and when looking for a [`Request::DeployRef`]'s
/// descriptor (where the sender is asked if the peers named are slow).
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(30);
const DESCRIPTOR_REF_WAIT: Duration = Duration::from_secs(5);

/// For a [`Request::DeployRef`]: how many times the holders named are
/// asked for the descriptor before the sender is, and the rest between.
const DESCRIPTOR_ROUNDS: usize = 4;
const DESCRIPTOR_REST: Duration = Duration::from_millis(100);

/// Upload slots one peer may hold at once, so that one peer cannot take
/// them all (agents ask a neighbour for [`SwarmConfig::per_peer`]
/// chunks at a time, 2 by default, and twice that while they catch up
/// with their neighbours).
///
/// [`SwarmConfig::per_peer`]: crate::SwarmConfig::per_peer
pub const SLOTS_PER_PEER: usize = 4;

/// One upload slot held by a peer; given back when dropped.
struct PeerSlot<'a> {
    held: &'a Mutex<BTreeMap<PeerId, usize>>,
    peer: PeerId,
}

impl<'a> PeerSlot<'a> {
    /// A slot for `peer`, unless it holds [`SLOTS_PER_PEER`] already.
    fn take(held: &'a Mutex<BTreeMap<PeerId, usize>>, peer: PeerId) -> Option<Self> {
        let mut map = locked(held);
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
        let mut map = locked(self.held);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// How an agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// A name for people (shown by `nodes`); may be empty.
    pub name: String,
    /// Labels that controllers select on.
    pub labels: BTreeMap<String, String>,
    /// Peers allowed to send mutating requests; `None`: every admitted
    /// peer may. The node's own id always may: [`Agent::handle`] called
    /// in-process with it (a remote peer cannot claim another's id: the
    /// transports authenticate every connection).
    pub operators: Option<BTreeSet<PeerId>>,
    /// Which publishers' releases are accepted.
    pub trust: TrustStore,
    /// How often actual state is compared with desired state.
    pub reconcile_every: Duration,
    /// The longest deadline a client may ask for.
    pub max_request_timeout: Duration,
    /// How the agent takes part in swarm transfers.
    pub swarm: SwarmConfig,
    /// Most installed versions kept per app on this node: the smaller of
    /// this and the app's own `keep_versions`. `None`: the app's.
    pub keep_versions: Option<u32>,
    /// How many read-only requests (info, status, list, logs, catalog)
    /// each peer may send; past it, a request is answered "busy" at once.
    /// One peer polling in a tight loop then cannot starve a deploy or
    /// the other peers. Changes (deploy, switch, stop...) and chunk
    /// transfers are not counted (the transfers have upload slots).
    pub request_rate: RequestRate,
}

/// A per-peer token bucket: `per_second` requests on average, up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests at once, after a quiet spell.
    pub burst: f64,
}

impl Default for RequestRate {
    /// 50 a second, 100 at once: far above what `p2pctl` or a dashboard
    /// polling every 50 ms asks.
    fn default() -> Self {
        RequestRate {
            per_second: 50.0,
            burst: 100.0,
        }
    }
}

/// The request buckets of the peers that asked lately.
#[derive(Default)]
struct RateBook {
    buckets: BTreeMap<PeerId, (f64, tokio::time::Instant)>,
}

/// How long a request over its peer's rate waits for its "busy".
const OVER_RATE_DELAY: Duration = Duration::from_secs(1);

/// Peers remembered at most; past it, those whose bucket is full again
/// are forgotten.
const MAX_RATED_PEERS: usize = 4096;

impl RateBook {
    /// Takes a token from `peer`'s bucket; false when it is empty.
    fn take(&mut self, peer: PeerId, rate: RequestRate) -> bool {
        let now = tokio::time::Instant::now();
        let refill = |(tokens, at): (f64, tokio::time::Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * rate.per_second).min(rate.burst)
        };
        if self.buckets.len() >= MAX_RATED_PEERS && !self.buckets.contains_key(&peer) {
            self.buckets.retain(|_, b| refill(*b) < rate.burst);
        }
        let b = self.buckets.entry(peer).or_insert((rate.burst, now));
        let tokens = refill(*b);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            true
        } else {
            *b = (tokens, now);
            false
        }
    }
}

impl AgentConfig {
    /// Defaults: no name or labels, no operator list, reconcile every 10 s,
    /// deadlines up to 30 minutes.
    pub fn new(trust: TrustStore) -> Self {
        AgentConfig {
            name: String::new(),
            labels: BTreeMap::new(),
            operators: None,
            trust,
            reconcile_every: Duration::from_secs(10),
            max_request_timeout: Duration::from_secs(30 * 60),
            swarm: SwarmConfig::default(),
            keep_versions: None,
            request_rate: RequestRate::default(),
        }
    }
}

/// What an agent runs on: the p2p-core implementations it is given.
#[derive(Clone)]
pub struct AgentParts {
    /// The network.
    pub provider: Arc<dyn Provider>,
    /// Where apps run.
    pub runtime: Arc<dyn Runtime>,
    /// Persistent state.
    pub storage: Arc<dyn Storage>,
    /// Where versions are unpacked.
    pub installer: Arc<dyn Installer>,
    /// Wall clock for history records.
    pub clock: Arc<dyn Clock>,
    /// Seed of the agent's own randomness (the swarm's choices); from the
    /// OS on a real node, from the simulator in a test.
    pub seed: u64,
}

impl std::fmt::Debug for AgentParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentParts({})", self.provider.local_id().short())
    }
}

/// The node key kept at `agent/node-key`, generated on first use: a node
/// keeps its identity across restarts.
pub async fn node_key<R: rand::CryptoRng + ?Sized>(
    storage: &dyn Storage,
    rng: &mut R,
) -> Result<NodeKey> {
    if let Some(bytes) = storage.get("agent/node-key").await? {
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::invalid(
                "stored node key",
                format!("agent/node-key holds {} bytes, not 32", bytes.len()),
            )
        })?;
        return Ok(NodeKey::from_seed(seed));
    }
    let key = NodeKey::generate(rng);
    storage.put("agent/node-key", &key.seed()).await?;
    Ok(key)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppRecord {
    name: String,
    active: Option<semver::Version>,
    running: bool,
    previous: Option<semver::Version>,
    installed: BTreeMap<semver::Version, PackageId>,
    pending: Option<Pending>,
    history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    action: String,
    to: semver::Version,
}

fn record_key(app: &str) -> String {
    format!("agent/apps/{app}")
}

type Res<T> = std::result::Result<T, RpcError>;

fn rpc(e: Error) -> RpcError {
    RpcError::from_error(&e)
}

fn not_found(what: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::NotFound, what)
}

/// A node agent. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.inner.parts.provider.local_id().short())
    }
}

struct Inner {
    cfg: AgentConfig,
    parts: AgentParts,
    chunks: ChunkStore,
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Releases being received, for the sessions about them.
    transfers: Mutex<BTreeMap<PackageId, Arc<Transfer>>>,
    reputation: Reputation,
    /// Caps on chunk bytes served and fetched.
    upload: Option<Arc<Throttle>>,
    /// Chunk requests being served; past the limit, more are refused.
    upload_slots: tokio::sync::Semaphore,
    /// Upload slots each peer holds (at most [`SLOTS_PER_PEER`]).
    slots_held: Mutex<BTreeMap<PeerId, usize>>,
    /// Read-only requests per peer ([`AgentConfig::request_rate`]).
    rates: Mutex<RateBook>,
    /// Peers over their request rate, logged once per period.
    over_rate: p2p_core::ratelog::LogLimiter,
    /// Changes refused as not an operator's, logged once per peer per
    /// period (any admitted peer can send them).
    denied: p2p_core::ratelog::LogLimiter,
    download: Option<Arc<Throttle>>,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
    /// Work for [`Agent::run`] to own: sessions, connections we dialed.
    background: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
    background_rx: Mutex<Option<mpsc::UnboundedReceiver<BoxFuture<'static, ()>>>>,
    /// Connections this agent dialed to swarm peers.
    dialed: Pool,
}

/// Whether `e` is a write that failed for want of disk space.
fn no_space(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            source.kind() == std::io::ErrorKind::StorageFull
                || source.kind() == std::io::ErrorKind::QuotaExceeded
                || source.raw_os_error() == Some(28)
        }
        _ => false,
    }
}

/// Whether `r` counts against a peer's [`RequestRate`]: the read-only
/// requests. Changes come from operators, and chunk transfers have
/// upload slots.
fn counts_against_rate(r: &Request) -> bool {
    !r.is_mutating()
        && !matches!(
            r,
            Request::FetchChunks { .. } | Request::Swarm { .. } | Request::FetchAny { .. }
        )
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a deploy's chunks come from.
struct Sources {
    /// The sender, a seed answering fetch-any (the controller).
    seed: Option<Arc<dyn Connection>>,
    /// Other nodes of the swarm.
    peers: Vec<PeerAddr>,
}

impl swarm::Host for Agent {
    fn chunks(&self) -> &ChunkStore {
        &self.inner.chunks
    }

    fn reputation(&self) -> &Reputation {
        &self.inner.reputation
    }

    fn swarm_config(&self) -> &SwarmConfig {
        &self.inner.cfg.swarm
    }

    fn download_limit(&self) -> Option<Arc<Throttle>> {
        self.inner.download.clone()
    }

    fn local_id(&self) -> PeerId {
        self.inner.parts.provider.local_id()
    }

    fn random(&self, n: usize) -> usize {
        rand::RngExt::random_range(&mut *locked(&self.inner.rng), 0..n.max(1))
    }

    fn spawn(&self, f: BoxFuture<'static, ()>) {
        let _ = self.inner.background.send(f);
    }

    fn dial(&self, addr: PeerAddr) -> BoxFuture<'static, Result<Arc<dyn Connection>>> {
        let me = self.clone();
        Box::pin(async move { me.dial_peer(addr).await })
    }
}

/// Where deploy progress goes (the request stream, if the caller is still
/// there).
type Events = mpsc::UnboundedSender<Frame>;

fn emit(events: Option<&Events>, e: DeployEvent) {
    if let Some(tx) = events {
        let _ = tx.send(Frame::Event(e));
    }
}

impl Agent {
    /// An agent over `parts`; [`run`](Self::run) starts it.
    pub fn new(cfg: AgentConfig, parts: AgentParts) -> Self {
        use rand::SeedableRng;
        let chunks = ChunkStore::new(parts.storage.clone());
        let (background, background_rx) = mpsc::unbounded_channel();
        Agent {
            inner: Arc::new(Inner {
                reputation: Reputation::new(cfg.swarm.reputation.clone()),
                upload: cfg.swarm.upload_limit.map(|r| Arc::new(Throttle::new(r))),
                upload_slots: tokio::sync::Semaphore::new(cfg.swarm.upload_slots.max(1)),
                download: cfg.swarm.download_limit.map(|r| Arc::new(Throttle::new(r))),
                rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(parts.seed)),
                cfg,
                parts,
                chunks,
                locks: Mutex::new(BTreeMap::new()),
                transfers: Mutex::new(BTreeMap::new()),
                background,
                background_rx: Mutex::new(Some(background_rx)),
                dialed: Pool::default(),
                slots_held: Mutex::default(),
                rates: Mutex::default(),
                over_rate: p2p_core::ratelog::LogLimiter::new(Duration::from_secs(10)),
                denied: p2p_core::ratelog::LogLimiter::new(Duration::from_secs(10)),
            }),
        }
    }

    /// The chunk store.
    pub fn chunks(&self) -> &ChunkStore {
        &self.inner.chunks
    }

    /// Swarm peers' scores and bans.
    pub fn reputation(&self) -> &Reputation {
        &self.inner.reputation
    }

    /// Recovers from a previous run, then serves the protocol and
    /// reconciles until the provider closes. Every task it starts is owned
    /// by this future: dropping it stops them all.
    pub async fn run(&self) -> Result<()> {
        let mut background = locked(&self.inner.background_rx)
            .take()
            .ok_or_else(|| Error::invalid("agent", "run() is already running for this agent"))?;
        let mut listener = self.inner.parts.provider.listen().await?;
        self.recover().await?;
        let (streams_tx, mut streams) =
            mpsc::channel::<(Arc<dyn Connection>, SendStream, RecvStream)>(64);
        let mut conns = JoinSet::new();
        let mut requests = JoinSet::new();
        let mut tick = tokio::time::interval(self.inner.cfg.reconcile_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                accepted = listener.accept() => match accepted {
                    Ok(conn) => {
                        let tx = streams_tx.clone();
                        conns.spawn(async move {
                            while let Ok((send, recv)) = conn.accept_bi().await {
                                if tx.send((conn.clone(), send, recv)).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(Error::Closed { .. }) => return Ok(()),
                    Err(e) => tracing::debug!(error = %e, "accept failed"),
                },
                Some((conn, send, recv)) = streams.recv() => {
                    let me = self.clone();
                    requests.spawn(async move { me.serve_stream(conn, send, recv).await });
                }
                _ = tick.tick() => {
                    let me = self.clone();
                    requests.spawn(async move {
                        if let Err(e) = me.reconcile().await {
                            tracing::warn!(error = %e, "reconcile failed");
                        }
                    });
                }
                Some(work) = background.recv() => {
                    requests.spawn(work);
                }
                Some(_) = conns.join_next() => {}
                Some(_) = requests.join_next() => {}
            }
        }
    }

    /// After a restart: records activations that were interrupted (the
    /// node stays on the version that was active), drops releases no app
    /// refers to, and brings the runtime to the desired state.
    pub async fn recover(&self) -> Result<()> {
        let clock = self.inner.parts.clock.now().as_millis();
        let mut referenced = BTreeSet::new();
        let mut installed = BTreeMap::new();
        for name in self.app_names().await? {
            let Some(mut rec) = self.load_readable(&name).await else {
                continue;
            };
            installed.insert(name.clone(), rec.installed.keys().cloned().collect());
            if let Some(p) = rec.pending.take() {
                tracing::warn!(
                    app = %name,
                    version = %p.to,
                    active = ?rec.active.as_ref().map(|v| v.to_string()),
                    "the agent stopped during an activation; staying on the active version"
                );
                let to = rec.active.clone();
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: clock,
                        action: p.action,
                        version: p.to,
                        outcome: Outcome::Interrupted { to },
                    },
                );
                self.save(&rec).await?;
            }
            referenced.extend(rec.installed.values().copied());
        }
        match self.inner.chunks.releases().await {
            Ok(releases) => {
                // A release no record refers to was being received: kept
                // (its transfer resumes) if it is newer than every version
                // installed of its app, dropped otherwise.
                for d in releases {
                    let m = &d.manifest;
                    let newer =
                        installed
                            .get(&m.name)
                            .is_none_or(|vs: &BTreeSet<semver::Version>| {
                                vs.iter().all(|v| *v < m.version)
                            });
                    if !referenced.contains(&d.id()) && !newer {
                        self.inner.chunks.remove_release(&d.id()).await?;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the kept releases; not collecting"),
        }
        self.collect_chunks().await;
        match self.inner.parts.installer.clean(&installed).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "cleaned up after interrupted installs"),
            Err(e) => tracing::warn!(error = %e, "could not clean up after interrupted installs"),
        }
        self.reconcile().await
    }

    /// Brings every app that is not busy to its desired state: started if
    /// it should run and the runtime does not have it (or has another
    /// version), stopped if it should not run.
    pub async fn reconcile(&self) -> Result<()> {
        for name in self.app_names().await? {
            let Ok(_guard) = self.lock(&name).try_lock_owned() else {
                continue; // an operation on it is in progress
            };
            let Some(rec) = self.load_readable(&name).await else {
                continue;
            };
            let status = self.status(&name).await;
            match (&rec.active, rec.running) {
                (Some(v), true) => {
                    let wrong = match &status {
                        None => true,
                        Some(s) => s.version != v.to_string(),
                    };
                    if wrong {
                        tracing::info!(app = %name, version = %v, "starting the desired version");
                        if let Err(e) = self.start_version(&rec, v).await {
                            tracing::warn!(app = %name, error = %e, "could not start");
                        }
                    }
                }
                _ => {
                    if status.is_some_and(|s| s.state.is_live()) {
                        tracing::info!(app = %name, "stopping an app that should not run");
                        let _ = self.inner.parts.runtime.stop(&name).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// What the node says about itself.
    pub async fn info(&self) -> Result<NodeInfo> {
        let p = &self.inner.parts.provider;
        Ok(NodeInfo {
            id: p.local_id(),
            name: self.inner.cfg.name.clone(),
            labels: self.inner.cfg.labels.clone(),
            addr: p.local_addr(),
            sdk_version: SDK_VERSION.to_string(),
            apps: self.apps().await?,
            peers: self.inner.reputation.snapshot(),
        })
    }

    /// The releases this node holds (kept in its chunk store), complete
    /// or still arriving, by name and version.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        let mut recs = BTreeMap::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load_readable(&name).await {
                recs.insert(name, rec);
            }
        }
        let mut out = Vec::new();
        let releases = self.inner.chunks.releases().await?;
        let held = self.inner.chunks.held_counts(&releases).await?;
        for (d, held) in releases.into_iter().zip(held) {
            let id = d.id();
            let m = &d.manifest;
            let rec = recs.get(&m.name);
            let installed = rec.is_some_and(|r| r.installed.get(&m.version) == Some(&id));
            let active = installed && rec.is_some_and(|r| r.active.as_ref() == Some(&m.version));
            out.push(CatalogEntry {
                name: m.name.clone(),
                version: m.version.clone(),
                id,
                size: d.archive_size,
                chunks: d.chunks.len() as u32,
                held: held as u32,
                installed,
                active,
            });
        }
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    /// Every app's info.
    pub async fn apps(&self) -> Result<Vec<AppInfo>> {
        let mut out = Vec::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load_readable(&name).await {
                out.push(self.app_info(&rec).await);
            }
        }
        Ok(out)
    }

    /// Answers one request as if it came from `from` (the protocol
    /// handler, usable in-process). `conn` is the connection it came on,
    /// used to fetch a deploy's chunks from the sender; `events` gets the
    /// progress frames.
    pub async fn handle(
        &self,
        from: PeerId,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<mpsc::UnboundedSender<Frame>>,
    ) -> std::result::Result<Reply, RpcError> {
        let timeout = self.inner.cfg.max_request_timeout;
        self.handle_within(from, request, conn, events, timeout)
            .await
    }

    /// Handles one request and logs a refused or failed change (a
    /// deploy, switch, stop...) with the peer, its address and why: one
    /// line per request, at warn, so that an operator reading a node's log
    /// sees every change it did not make. Read-only requests that fail
    /// are logged at debug.
    async fn handle_within(
        &self,
        from: PeerId,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<mpsc::UnboundedSender<Frame>>,
        timeout: Duration,
    ) -> std::result::Result<Reply, RpcError> {
        let kind = request.kind();
        let mutating = request.is_mutating();
        let address = conn.as_ref().and_then(|c| c.path().remote);
        let result = self.dispatch(from, request, conn, events, timeout).await;
        if let Err(e) = &result {
            let address = address.as_deref().unwrap_or("unknown");
            if !mutating {
                tracing::debug!(peer = %from.short(), %address, request = kind, error = %e, "request failed");
            } else if let Some(held) = if e.kind == ErrorKind::Denied {
                // A peer that is no operator can send refusals at will:
                // those are logged once per peer per period.
                self.inner.denied.allow(&from.to_string())
            } else {
                Some(0)
            } {
                tracing::warn!(
                    peer = %from.short(),
                    %address,
                    request = kind,
                    kind = ?e.kind,
                    "{kind} refused or failed: {e}{}",
                    p2p_core::ratelog::held_back(held)
                );
            }
        }
        result
    }

    async fn dispatch(
        &self,
        from: PeerId,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<mpsc::UnboundedSender<Frame>>,
        timeout: Duration,
    ) -> std::result::Result<Reply, RpcError> {
        if request.is_mutating()
            && let Some(ops) = &self.inner.cfg.operators
            && !ops.contains(&from)
            && from != self.inner.parts.provider.local_id()
        {
            return Err(RpcError::new(
                ErrorKind::Denied,
                format!(
                    "{} refused: peer {} is not an operator of this node",
                    request.kind(),
                    from.short()
                ),
            ));
        }
        match request {
            Request::Info => Ok(Reply::Info(Box::new(self.info().await.map_err(rpc)?))),
            Request::List => Ok(Reply::Apps(self.apps().await.map_err(rpc)?)),
            Request::Status { app } => {
                let rec = self.need(&app).await?;
                Ok(Reply::App(Box::new(self.app_info(&rec).await)))
            }
            Request::Start { app } => self.start_app(&app).await,
            Request::Stop { app } => self.stop_app(&app).await,
            Request::Restart { app } => self.restart_app(&app).await,
            Request::Switch {
                app,
                version,
                options,
            } => self.switch(&app, &version, &options, events.as_ref()).await,
            Request::Rollback { app, options } => {
                self.rollback(&app, &options, events.as_ref()).await
            }
            Request::Remove { app, version } => self.remove(&app, version.as_ref()).await,
            request @ (Request::Deploy { .. } | Request::DeployRef { .. }) => {
                self.deploy_request(request, conn, events.as_ref(), timeout)
                    .await
            }
            Request::Catalog => Ok(Reply::Catalog(self.catalog().await.map_err(rpc)?)),
            Request::Release { package } => {
                let d = self
                    .inner
                    .chunks
                    .release(&package)
                    .await
                    .map_err(rpc)?
                    .ok_or_else(|| not_found(format!("release {package} is not held here")))?;
                let signatures = self.inner.chunks.signatures(&package).await.map_err(rpc)?;
                if signatures.is_empty() {
                    return Err(not_found(format!(
                        "release {package} is held here without its signatures \
                         (it arrived before they were kept); fetch it from another peer"
                    )));
                }
                Ok(Reply::Release {
                    descriptor: d.to_bytes(),
                    signatures,
                })
            }
            Request::Fetch { package, from } => {
                self.fetch_release(&package, from, events.as_ref(), timeout)
                    .await
            }
            Request::Logs { .. }
            | Request::FetchChunks { .. }
            | Request::Swarm { .. }
            | Request::FetchAny { .. } => Err(RpcError::new(
                ErrorKind::Invalid,
                "logs, chunk fetches and swarm sessions are streamed; use the protocol",
            )),
        }
    }

    async fn serve_stream(&self, conn: Arc<dyn Connection>, send: SendStream, recv: RecvStream) {
        let peer = conn.remote_id();
        let mut framed = Framed::with_max(send, recv, MAX_FRAME);
        let Some((env, version)) = accept_request(&mut framed, &peer).await else {
            return;
        };
        let timeout = Duration::from_millis(env.timeout_ms).min(self.inner.cfg.max_request_timeout);
        let kind = env.request.kind();
        if counts_against_rate(&env.request)
            && !locked(&self.inner.rates).take(peer, self.inner.cfg.request_rate)
        {
            let rate = self.inner.cfg.request_rate;
            if let Some(held) = self.inner.over_rate.allow(&peer.to_string()) {
                tracing::warn!(
                    peer = %peer.short(),
                    address = conn.path().remote.as_deref().unwrap_or("unknown"),
                    "a peer is over its request rate ({} a second); answering busy{}",
                    rate.per_second,
                    p2p_core::ratelog::held_back(held)
                );
            }
            let e = RpcError::new(
                ErrorKind::Busy,
                format!(
                    "{kind} refused: more than {} requests a second from this peer; slow down",
                    rate.per_second
                ),
            );
            // The answer waits a while: a peer that floods gets as many
            // refusals a second as it has requests open, not thousands.
            tokio::time::sleep(OVER_RATE_DELAY).await;
            end_with(&mut framed, Frame::Error(e)).await;
            return;
        }
        tracing::debug!(peer = %peer.short(), request = kind, "request");
        let end = match env.request {
            Request::Logs { app, selection } => self.serve_logs(&mut framed, &app, selection).await,
            Request::FetchChunks { package, indexes } => {
                let deadline = tokio::time::Instant::now() + timeout;
                // A slot per request, or "busy" at once: the client asks
                // another holder (see `SwarmConfig::upload_slots`).
                let _slots = match self.upload_slot(peer) {
                    Ok(s) => s,
                    Err(why) => {
                        let e = RpcError::new(ErrorKind::Busy, why);
                        end_with(&mut framed, Frame::Error(e)).await;
                        return;
                    }
                };
                let end = self
                    .serve_chunks(&mut framed, &package, &indexes, deadline)
                    .await;
                end_with(&mut framed, end).await;
                // Writing only queues the bytes: the slot is held until
                // the client has read them (it closes its side then), for
                // a bounded time, so that a client that never closes
                // cannot keep it.
                let hold = deadline.min(tokio::time::Instant::now() + SLOT_HOLD);
                let _ = tokio::time::timeout_at(hold, framed.recv_opt::<Frame>()).await;
                return;
            }
            Request::Swarm { package, have } => match self.transfer_for(&package).await {
                Ok(t) => {
                    let max = self.inner.cfg.swarm.max_neighbors;
                    swarm::serve_session(t, conn.clone(), framed, have, max).await;
                    return;
                }
                Err(e) => Frame::Error(e),
            },
            Request::FetchAny { .. } => Frame::Error(RpcError::new(
                ErrorKind::Invalid,
                "fetch-any is served by the controller that seeds a release, not by agents",
            )),
            request => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let mutating = request.is_mutating();
                let work = self.handle_within(peer, request, Some(conn.clone()), Some(tx), timeout);
                // Activations finish even if the deadline passes (the gate
                // has its own); read-only requests are cut at the deadline.
                let work = async {
                    if mutating {
                        work.await
                    } else {
                        tokio::time::timeout(timeout, work)
                            .await
                            .unwrap_or_else(|_| {
                                Err(RpcError::new(
                                    ErrorKind::Timeout,
                                    format!("{kind} did not finish within {timeout:?}"),
                                ))
                            })
                    }
                };
                // Progress as it comes, and a heartbeat every second
                // between (protocol version 2 on), through transfer,
                // install and the whole health gate: the client tells a
                // busy node from a dead one by them.
                let beat = version >= ALIVE_VERSION;
                let forward = async {
                    let mut gone = false;
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + HEARTBEAT,
                        HEARTBEAT,
                    );
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        let f = tokio::select! {
                            f = rx.recv() => match f {
                                Some(f) => f,
                                None => break,
                            },
                            _ = tick.tick(), if beat && !gone => Frame::Alive,
                        };
                        if !gone && framed.send(&f).await.is_err() {
                            gone = true;
                        }
                    }
                };
                let (result, ()) = tokio::join!(work, forward);
                match result {
                    Ok(r) => Frame::Done(r),
                    Err(e) => Frame::Error(e),
                }
            }
        };
        end_with(&mut framed, end).await;
    }

    async fn serve_logs(
        &self,
        framed: &mut Framed,
        app: &str,
        selection: p2p_core::LogSelection,
    ) -> Frame {
        if let Err(e) = self.need(app).await {
            return Frame::Error(e);
        }
        let mut lines = match self.inner.parts.runtime.logs(app, selection).await {
            Ok(l) => l,
            Err(e) => return Frame::Error(rpc(e)),
        };
        while let Some(line) = lines.next().await {
            match line {
                Ok(l) => {
                    if framed.send(&Frame::Log(l)).await.is_err() {
                        return Frame::Done(Reply::Ok); // the follower left
                    }
                }
                Err(e) => return Frame::Error(rpc(e)),
            }
        }
        Frame::Done(Reply::Ok)
    }

    async fn serve_chunks(
        &self,
        framed: &mut Framed,
        package: &PackageId,
        indexes: &[u32],
        deadline: tokio::time::Instant,
    ) -> Frame {
        let d = match self.inner.chunks.release(package).await {
            Ok(Some(d)) => d,
            Ok(None) => return Frame::Error(not_found(format!("release {package}"))),
            Err(e) => return Frame::Error(rpc(e)),
        };
        let chunks = &self.inner.chunks;
        let (d, cap) = (&d, self.inner.upload.as_deref());
        send_chunks(framed, package, indexes, |i| async move {
            // Under an upload cap, a chunk whose turn would come after the
            // request's deadline is refused as busy at once (the client
            // asks elsewhere) rather than booked and sent too late.
            if let Some(cap) = cap {
                let len = crate::chunks::chunk_len(d, i as usize);
                match cap.book(len, deadline) {
                    Some(start) => tokio::time::sleep_until(start).await,
                    None => {
                        return Err(Error::Busy {
                            what: format!(
                                "this node's upload cap ({} bytes/s) is booked past the request's deadline",
                                cap.rate()
                            ),
                        });
                    }
                }
            }
            chunks.get(d, i as usize).await
        })
        .await
    }

    // ----- state -----

    fn lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(app.to_string()).or_default().clone()
    }

    /// The app's lock, waited for up to [`BUSY_WAIT`] (a reconcile pass
    /// holds it briefly); after that the app is busy with an operation.
    async fn busy(&self, app: &str) -> Res<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(BUSY_WAIT, self.lock(app).lock_owned())
            .await
            .map_err(|_| {
                RpcError::new(
                    ErrorKind::Busy,
                    format!("another operation on {app} is in progress; try again when it ends"),
                )
            })
    }

    async fn app_names(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .parts
            .storage
            .list("agent/apps/")
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix("agent/apps/").map(str::to_string))
            .collect())
    }

    async fn load(&self, app: &str) -> Result<Option<AppRecord>> {
        if p2p_core::runtime::check_app_name(app).is_err() {
            return Ok(None);
        }
        match self.inner.parts.storage.get(&record_key(app)).await? {
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                Error::protocol(format!(
                    "the stored state of {app} is corrupt ({e}); remove the app to start over"
                ))
            }),
            None => Ok(None),
        }
    }

    /// The record of `app`; an unreadable one is logged and skipped, so
    /// that one damaged app does not take the others down with it.
    async fn load_readable(&self, app: &str) -> Option<AppRecord> {
        match self.load(app).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(app, error = %e, "skipping an app whose state cannot be read");
                None
            }
        }
    }

    async fn need(&self, app: &str) -> Res<AppRecord> {
        self.load(app)
            .await
            .map_err(rpc)?
            .ok_or_else(|| not_found(format!("no app named {app:?} on this node")))
    }

    async fn save(&self, rec: &AppRecord) -> Result<()> {
        let bytes = postcard::to_allocvec(rec)
            .map_err(|e| Error::protocol(format!("encoding the state of {}: {e}", rec.name)))?;
        self.inner
            .parts
            .storage
            .put(&record_key(&rec.name), &bytes)
            .await
    }

    async fn status(&self, app: &str) -> Option<AppStatus> {
        self.inner.parts.runtime.status(app).await.ok()
    }

    /// Whether the runtime runs `v` of `app`, live.
    async fn runs(&self, app: &str, v: &semver::Version) -> bool {
        self.status(app)
            .await
            .is_some_and(|s| s.state.is_live() && s.version == v.to_string())
    }

    async fn app_info(&self, rec: &AppRecord) -> AppInfo {
        AppInfo {
            name: rec.name.clone(),
            active: rec.active.clone(),
            running: rec.running,
            installed: rec
                .installed
                .iter()
                .map(|(v, id)| (v.clone(), *id))
                .collect(),
            previous: rec.previous.clone(),
            status: self.status(&rec.name).await,
            history: rec.history.clone(),
        }
    }

    async fn manifest_of(&self, rec: &AppRecord, v: &semver::Version) -> Result<Manifest> {
        let id = rec.installed.get(v).ok_or_else(|| Error::NotFound {
            what: format!("version {v} of {} is not installed", rec.name),
        })?;
        let d = self
            .inner
            .chunks
            .release(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("the release of {} {v} ({id})", rec.name),
            })?;
        Ok(d.manifest)
    }

    async fn start_version(&self, rec: &AppRecord, v: &semver::Version) -> Result<AppStatus> {
        let m = self.manifest_of(rec, v).await?;
        let spec = m.app_spec(&self.inner.parts.installer.workdir(&m.name, &m.version));
        let rt = &self.inner.parts.runtime;
        if rt.status(&m.name).await.is_ok() {
            let _ = rt.stop(&m.name).await;
            let _ = rt.remove(&m.name).await;
        }
        rt.start(spec).await
    }

    // ----- simple operations -----

    async fn start_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let v = active_version(&rec)?;
        rec.running = true;
        self.save(&rec).await.map_err(rpc)?;
        if !self.runs(app, &v).await {
            self.start_version(&rec, &v).await.map_err(rpc)?;
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    async fn stop_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        rec.running = false;
        self.save(&rec).await.map_err(rpc)?;
        match self.inner.parts.runtime.stop(app).await {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(rpc(e)),
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    async fn restart_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let v = active_version(&rec)?;
        rec.running = true;
        self.save(&rec).await.map_err(rpc)?;
        match self.inner.parts.runtime.restart(app).await {
            Ok(s) if s.version == v.to_string() => {}
            Ok(_) | Err(Error::NotFound { .. }) => {
                self.start_version(&rec, &v).await.map_err(rpc)?;
            }
            Err(e) => return Err(rpc(e)),
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    async fn remove(&self, app: &str, version: Option<&semver::Version>) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let installer = &self.inner.parts.installer;
        match version {
            Some(v) => {
                if rec.active.as_ref() == Some(v) {
                    return Err(RpcError::new(
                        ErrorKind::Invalid,
                        format!(
                            "{app} {v} is the active version; switch to another or remove the app"
                        ),
                    ));
                }
                let id = rec
                    .installed
                    .remove(v)
                    .ok_or_else(|| not_found(format!("{app} {v} is not installed")))?;
                if rec.previous.as_ref() == Some(v) {
                    rec.previous = None;
                }
                self.save(&rec).await.map_err(rpc)?;
                installer.uninstall(app, v).await.map_err(rpc)?;
                self.drop_releases(&[id]).await.map_err(rpc)?;
                Ok(Reply::App(Box::new(self.app_info(&rec).await)))
            }
            None => {
                // Not running first, so that nothing restarts it if a
                // later step fails.
                rec.running = false;
                self.save(&rec).await.map_err(rpc)?;
                let rt = &self.inner.parts.runtime;
                let _ = rt.stop(app).await;
                match rt.remove(app).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(rpc(e)),
                }
                // Files first, then the record: a failure part way leaves
                // a record that a second remove finishes.
                for v in rec.installed.keys() {
                    installer.uninstall(app, v).await.map_err(rpc)?;
                }
                self.inner
                    .parts
                    .storage
                    .delete(&record_key(app))
                    .await
                    .map_err(rpc)?;
                let ids: Vec<PackageId> = rec.installed.values().copied().collect();
                self.drop_releases(&ids).await.map_err(rpc)?;
                Ok(Reply::Ok)
            }
        }
    }

    /// Stops keeping the releases that no app's record refers to any
    /// more, then collects unreferenced chunks once.
    async fn drop_releases(&self, ids: &[PackageId]) -> Result<()> {
        let mut referenced = BTreeSet::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load(&name).await? {
                referenced.extend(rec.installed.into_values());
            }
        }
        for id in ids.iter().filter(|id| !referenced.contains(*id)) {
            self.inner.chunks.remove_release(id).await?;
        }
        self.collect_chunks().await;
        Ok(())
    }

    /// Deletes unreferenced chunks. Housekeeping: a failure (a damaged
    /// release record, which keeps every chunk) is logged, and fails
    /// neither the request nor the recovery that asked for it.
    async fn collect_chunks(&self) {
        if let Err(e) = self.inner.chunks.collect().await {
            tracing::warn!(error = %e, "unreferenced chunks not collected");
        }
    }

    // ----- deploy and activation -----

    /// Answers [`Request::Deploy`] and [`Request::DeployRef`]: the
    /// descriptor (decoded, or found by reference), then [`deploy`](Self::deploy).
    async fn deploy_request(
        &self,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> Res<Reply> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (d, signatures, options, peers) = match request {
            Request::Deploy {
                descriptor,
                signatures,
                options,
                peers,
            } => {
                let d = Descriptor::from_bytes(&descriptor)
                    .map_err(|e| RpcError::new(ErrorKind::Corrupt, e.to_string()))?;
                (d, signatures, options, peers)
            }
            Request::DeployRef {
                package,
                signatures,
                options,
                from: holders,
                peers,
            } => {
                let find = self.descriptor_for(&package, &holders, conn.as_ref());
                let d = tokio::time::timeout_at(deadline, find)
                    .await
                    .map_err(|_| {
                        RpcError::new(
                            ErrorKind::Timeout,
                            format!(
                                "the descriptor of release {package} did not arrive within {timeout:?}"
                            ),
                        )
                    })??;
                (d, signatures, options, peers)
            }
            other => {
                return Err(RpcError::new(
                    ErrorKind::Invalid,
                    format!("{} is not a deploy", other.kind()),
                ));
            }
        };
        let sources = Sources { seed: conn, peers };
        self.deploy(d, &signatures, &options, sources, events, deadline, timeout)
            .await
    }

    /// Deploys `d` (a decoded [`Request::Deploy`] or
    /// [`Request::DeployRef`]); verification, transfer and install end at
    /// `deadline`, which is `timeout` after the request came.
    #[allow(clippy::too_many_arguments)] // one request's parts, passed through
    async fn deploy(
        &self,
        d: Descriptor,
        signatures: &[p2p_core::Signature],
        options: &ActivateOptions,
        sources: Sources,
        events: Option<&Events>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Res<Reply> {
        let id = d.id();
        let m = d.manifest.clone();
        let _g = self.busy(&m.name).await?;
        // A refusal is logged by `handle_within`, with the peer.
        let counted = self.trusted(&d, signatures).map_err(|e| {
            RpcError::new(
                ErrorKind::BadSignature,
                format!("{} {}: {e}", m.name, m.version),
            )
        })?;
        let mut rec = self.load(&m.name).await.map_err(rpc)?.unwrap_or(AppRecord {
            name: m.name.clone(),
            ..AppRecord::default()
        });
        if let Some(other) = rec.installed.get(&m.version) {
            if *other != id {
                return Err(RpcError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{} {} is installed from another package ({other}); publish a new version instead",
                        m.name, m.version
                    ),
                ));
            }
            if rec.active.as_ref() == Some(&m.version)
                && rec.running
                && self.runs(&m.name, &m.version).await
            {
                return Ok(Reply::Activation(Activation::AlreadyActive {
                    version: m.version.clone(),
                }));
            }
        }
        let installed: Vec<_> = rec.installed.keys().cloned().collect();
        check_not_downgrade(&m.version, &installed, false)
            .map_err(|e| RpcError::new(ErrorKind::Downgrade, format!("{}: {e}", m.name)))?;
        emit(events, DeployEvent::Verified);

        if !rec.installed.contains_key(&m.version) {
            // Verification, transfer and install end at the deadline;
            // activation, once begun, runs to its end.
            let fetch_install = async {
                let t = self.transfer(&d).await?;
                self.inner.chunks.add_release(&d).await.map_err(rpc)?;
                self.inner
                    .chunks
                    .add_signatures(&id, &counted)
                    .await
                    .map_err(rpc)?;
                self.fetch(t, sources, events, deadline).await?;
                match self
                    .inner
                    .parts
                    .installer
                    .install(&d, &self.inner.chunks)
                    .await
                {
                    Ok(dir) => Ok(dir),
                    Err(e) if no_space(&e) => Err(self.out_of_space(&d, &e).await),
                    Err(e) => Err(rpc(e)),
                }
            };
            tokio::time::timeout_at(deadline, fetch_install)
                .await
                .map_err(|_| {
                    RpcError::new(
                        ErrorKind::Timeout,
                        format!(
                            "transfer and install of {} {} did not finish within {timeout:?}",
                            m.name, m.version
                        ),
                    )
                })??;
            rec.installed.insert(m.version.clone(), id);
            self.save(&rec).await.map_err(rpc)?;
        }
        emit(events, DeployEvent::Installed);
        self.activate(rec, &m.version, "deploy", options, events)
            .await
    }

    /// Checks `signatures` over `d` against the trust store and returns
    /// those that counted: what the node keeps and passes on to peers that
    /// fetch the release from it, not whatever else came along.
    fn trusted(
        &self,
        d: &Descriptor,
        signatures: &[p2p_core::Signature],
    ) -> std::result::Result<Vec<p2p_core::Signature>, crate::trust::VerifyError> {
        let counted = self.inner.cfg.trust.check(d, signatures)?;
        Ok(signatures
            .iter()
            .filter(|s| counted.contains(&s.key))
            .cloned()
            .collect())
    }

    /// The transfer of `d`: the one registered (a fetch in progress),
    /// else a new one over the chunks held,
    /// registered so that sessions opened from now on share it. Call it
    /// before storing the release, so that no session finds the release
    /// without finding the transfer.
    async fn transfer(&self, d: &Descriptor) -> Res<Arc<Transfer>> {
        if let Some(t) = locked(&self.inner.transfers).get(&d.id()).cloned() {
            return Ok(t);
        }
        let t = Transfer::from_store(d.clone(), &self.inner.chunks)
            .await
            .map_err(rpc)?;
        Ok(locked(&self.inner.transfers)
            .entry(d.id())
            .or_insert(t)
            .clone())
    }

    /// Fetches what the node lacks of `t`'s release through the swarm.
    /// However it ends (done, failed, or dropped at a caller's deadline)
    /// the transfer is unregistered, and closed unless complete, so the
    /// next attempt starts from the chunks stored with no stale bookings.
    async fn fetch(
        &self,
        t: Arc<Transfer>,
        sources: Sources,
        events: Option<&Events>,
        deadline: tokio::time::Instant,
    ) -> Res<()> {
        struct Unregister<'a>(&'a Agent, Arc<Transfer>);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                let t = &self.1;
                let mut transfers = locked(&self.0.inner.transfers);
                if transfers.get(&t.id).is_some_and(|r| Arc::ptr_eq(r, t)) {
                    transfers.remove(&t.id);
                }
                drop(transfers);
                if !t.have().is_full() {
                    t.close();
                }
            }
        }
        let _unregister = Unregister(self, t.clone());
        let d = &t.d;
        let total = d.archive_size;
        let mut progress = |bytes: u64| emit(events, DeployEvent::Transfer { bytes, total });
        let result = swarm::fetch(
            self,
            &t,
            sources.seed,
            sources.peers,
            deadline,
            &mut progress,
        )
        .await;
        if let Err(e) = &result
            && no_space(e)
        {
            return Err(self.out_of_space(d, e).await);
        }
        result.map_err(|e| {
            let kind = match &e {
                Error::Timeout { .. } => ErrorKind::Timeout,
                Error::Invalid { .. } => ErrorKind::Invalid,
                Error::Unreachable { .. } => ErrorKind::Unreachable,
                // A chunk that came bad from every source that had it; the
                // reason names the release, the chunk and the peer.
                Error::Protocol { reason } => return RpcError::new(ErrorKind::Corrupt, reason),
                _ => ErrorKind::Internal,
            };
            RpcError::new(
                kind,
                format!("{} {}: {e}", d.manifest.name, d.manifest.version),
            )
        })
    }

    /// A release that ran out of disk space on the way in: its chunks
    /// (those no other release holds) are removed, so that the disk is as
    /// it was before the deploy and the apps running keep their room (for
    /// their logs, say); the error names what could not be written.
    async fn out_of_space(&self, d: &Descriptor, e: &Error) -> RpcError {
        let id = d.id();
        let freed = match self.inner.chunks.remove_release(&id).await {
            Ok(_) => self.inner.chunks.collect().await,
            Err(e) => Err(e),
        };
        let cleanup = match freed {
            Ok(n) => format!("its {n} chunk(s) received were removed"),
            Err(c) => format!("removing what was received failed too: {c}"),
        };
        RpcError::new(
            ErrorKind::Internal,
            format!(
                "{} {}: no space left on the node's disk: {e}; {cleanup}, the active version runs on",
                d.manifest.name, d.manifest.version
            ),
        )
    }

    /// Answers [`Request::Fetch`]: the release's descriptor and
    /// signatures from one of `from` (checked against the trust store),
    /// then its chunks from all of them through the swarm. The release is
    /// kept, not installed.
    async fn fetch_release(
        &self,
        package: &PackageId,
        from: Vec<PeerAddr>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> Res<Reply> {
        let deadline = tokio::time::Instant::now() + timeout;
        let me = self.inner.parts.provider.local_id();
        let from: Vec<PeerAddr> = from.into_iter().filter(|a| a.id != me).collect();
        let work = async {
            let t = match self.inner.chunks.release(package).await.map_err(rpc)? {
                Some(d) => self.transfer(&d).await?,
                None => {
                    let (d, signatures) = self.release_from(package, &from).await?;
                    let m = &d.manifest;
                    // Kept only to be installed later: never below a
                    // version already installed.
                    if let Some(rec) = self.load(&m.name).await.map_err(rpc)? {
                        let installed: Vec<_> = rec.installed.keys().cloned().collect();
                        check_not_downgrade(&m.version, &installed, false).map_err(|e| {
                            RpcError::new(ErrorKind::Downgrade, format!("{}: {e}", m.name))
                        })?;
                    }
                    let t = self.transfer(&d).await?;
                    self.inner.chunks.add_release(&d).await.map_err(rpc)?;
                    self.inner
                        .chunks
                        .add_signatures(package, &signatures)
                        .await
                        .map_err(rpc)?;
                    tracing::info!(app = %m.name, version = %m.version, "fetching a release from peers");
                    t
                }
            };
            let sources = Sources {
                seed: None,
                peers: from.clone(),
            };
            self.fetch(t, sources, events, deadline).await
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| {
                RpcError::new(
                    ErrorKind::Timeout,
                    format!("fetching release {package} did not finish within {timeout:?}"),
                )
            })??;
        let entry = self
            .catalog()
            .await
            .map_err(rpc)?
            .into_iter()
            .filter(|e| e.id == *package)
            .collect();
        Ok(Reply::Catalog(entry))
    }

    /// The descriptor and signatures of `package` from the first of
    /// `from` that holds it and whose copy passes the trust store. When
    /// none does, the error names what went wrong with each peer (its
    /// kind: a refused signature if any peer's copy was refused, else the
    /// last peer's).
    async fn release_from(
        &self,
        package: &PackageId,
        from: &[PeerAddr],
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let mut failed: Vec<RpcError> = Vec::new();
        for addr in from {
            match self.release_from_one(package, addr).await {
                Ok(found) => return Ok(found),
                Err(e) => failed.push(e),
            }
        }
        let Some(last) = failed.last() else {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "release {package} is not held here and no peer to fetch it from was given"
                ),
            ));
        };
        let kind = if failed.iter().any(|e| e.kind == ErrorKind::BadSignature) {
            ErrorKind::BadSignature
        } else {
            last.kind
        };
        let all: Vec<&str> = failed.iter().map(|e| e.message.as_str()).collect();
        Err(RpcError::new(kind, all.join("; ")))
    }

    /// [`release_from`](Self::release_from), one peer.
    async fn release_from_one(
        &self,
        package: &PackageId,
        addr: &PeerAddr,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let (d, signatures) = self
            .descriptor_from_peer(package, addr, DESCRIPTOR_WAIT)
            .await?;
        match self.trusted(&d, &signatures) {
            Ok(counted) => Ok((d, counted)),
            Err(e) => {
                let peer = addr.id.short();
                tracing::warn!(app = %d.manifest.name, version = %d.manifest.version, peer = %peer, error = %e, "release refused");
                Err(RpcError::new(
                    ErrorKind::BadSignature,
                    format!(
                        "{} {} from peer {peer}: {e}",
                        d.manifest.name, d.manifest.version
                    ),
                ))
            }
        }
    }

    /// The descriptor of `package` and the signatures that came with it,
    /// from the peer at `addr` (not checked against the trust store).
    async fn descriptor_from_peer(
        &self,
        package: &PackageId,
        addr: &PeerAddr,
        wait: Duration,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        if self.inner.reputation.is_banned(&addr.id) {
            return Err(RpcError::new(
                ErrorKind::Denied,
                format!("peer {} is banned here", addr.id.short()),
            ));
        }
        // Boxed: a request handler that dials (this) is itself served on
        // dialed connections, and an unboxed future would contain itself.
        match swarm::Host::dial(self, addr.clone()).await {
            Ok(conn) => Box::pin(self.descriptor_over(&*conn, package, wait)).await,
            Err(e) => Err(RpcError::new(
                RpcError::from_error(&e).kind,
                format!("release {package} from peer {}: {e}", addr.id.short()),
            )),
        }
    }

    /// The descriptor of `package` and its signatures, asked for with
    /// [`Request::Release`] on `conn`. A copy that does not decode, or
    /// is of another release, counts against the peer's reputation.
    async fn descriptor_over(
        &self,
        conn: &dyn Connection,
        package: &PackageId,
        wait: Duration,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let id = conn.remote_id();
        let peer = id.short();
        let answer = crate::proto::call(conn, Request::Release { package: *package }, wait).await;
        let (bytes, signatures) = match answer {
            Ok(Reply::Release {
                descriptor,
                signatures,
            }) => (descriptor, signatures),
            Ok(other) => {
                return Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!("peer {peer} answered a release request with {other:?}"),
                ));
            }
            Err(e) => {
                return Err(RpcError::new(
                    RpcError::from_error(&e).kind,
                    format!("release {package} from peer {peer}: {e}"),
                ));
            }
        };
        match Descriptor::from_bytes(&bytes) {
            Ok(d) if d.id() == *package => Ok((d, signatures)),
            Ok(d) => {
                self.inner.reputation.corrupt(id);
                Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "peer {peer} sent release {} when asked for {package}",
                        d.id()
                    ),
                ))
            }
            Err(e) => {
                self.inner.reputation.corrupt(id);
                Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!("peer {peer} sent a descriptor that does not decode: {e}"),
                ))
            }
        }
    }

    /// The descriptor of a [`Request::DeployRef`]'s release: from the
    /// store when the release is held; else from `holders`, in order, in
    /// up to [`DESCRIPTOR_ROUNDS`] rounds [`DESCRIPTOR_REST`] apart (a
    /// holder may be receiving the descriptor itself); else from the
    /// sender over `seed`. Every copy is checked against `package` (its
    /// hash), so any peer's will do; the signatures are the sender's.
    async fn descriptor_for(
        &self,
        package: &PackageId,
        holders: &[PeerAddr],
        seed: Option<&Arc<dyn Connection>>,
    ) -> Res<Descriptor> {
        if let Some(d) = self.inner.chunks.release(package).await.map_err(rpc)? {
            return Ok(d);
        }
        let me = self.inner.parts.provider.local_id();
        let mut ask: Vec<&PeerAddr> = Vec::new();
        for a in holders {
            if a.id != me && !ask.iter().any(|b| b.id == a.id) {
                ask.push(a);
            }
        }
        // Errors of peers not asked again, and of the last round.
        let mut failed: Vec<String> = Vec::new();
        let mut last: Vec<String> = Vec::new();
        for round in 0..DESCRIPTOR_ROUNDS {
            if ask.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(DESCRIPTOR_REST).await;
            }
            last.clear();
            let mut again = Vec::new();
            for addr in ask {
                match self
                    .descriptor_from_peer(package, addr, DESCRIPTOR_REF_WAIT)
                    .await
                {
                    Ok((d, _)) => return Ok(d),
                    // Not there yet: ask again.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        again.push(addr);
                        last.push(e.message);
                    }
                    // Unreachable, banned, or sent garbage: not again.
                    Err(e) => failed.push(e.message),
                }
            }
            ask = again;
        }
        failed.append(&mut last);
        let Some(seed) = seed else {
            failed.push("and there is no sender to ask".into());
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no descriptor of release {package}: {}", failed.join("; ")),
            ));
        };
        if !failed.is_empty() {
            tracing::debug!(release = %package, tried = %failed.join("; "), "asking the sender for a descriptor");
        }
        match Box::pin(self.descriptor_over(&**seed, package, DESCRIPTOR_WAIT)).await {
            Ok((d, _)) => Ok(d),
            Err(e) if failed.is_empty() => Err(e),
            Err(e) => {
                failed.push(e.message);
                Err(RpcError::new(
                    e.kind,
                    format!("no descriptor of release {package}: {}", failed.join("; ")),
                ))
            }
        }
    }

    /// The transfer a swarm session is about: the registered one (a
    /// fetch in progress), or one over the chunks held of a kept release.
    async fn transfer_for(&self, package: &PackageId) -> Res<Arc<Transfer>> {
        if let Some(t) = locked(&self.inner.transfers).get(package) {
            return Ok(t.clone());
        }
        let d = self
            .inner
            .chunks
            .release(package)
            .await
            .map_err(rpc)?
            .ok_or_else(|| not_found(format!("release {package} is not held here")))?;
        Transfer::from_store(d, &self.inner.chunks)
            .await
            .map_err(rpc)
    }

    /// An upload slot for a chunk request from `peer`: one of its
    /// [`SLOTS_PER_PEER`] and one of the node's; else why not.
    fn upload_slot(
        &self,
        peer: PeerId,
    ) -> std::result::Result<(PeerSlot<'_>, tokio::sync::SemaphorePermit<'_>), String> {
        let mine = PeerSlot::take(&self.inner.slots_held, peer).ok_or_else(|| {
            format!("this node is serving {SLOTS_PER_PEER} chunk requests of yours already")
        })?;
        let all = self.inner.upload_slots.try_acquire().map_err(|_| {
            format!(
                "this node is serving {} chunk requests already",
                self.inner.cfg.swarm.upload_slots.max(1)
            )
        })?;
        Ok((mine, all))
    }

    /// A connection to a swarm peer, reused; its inbound streams are
    /// served like those of accepted connections.
    async fn dial_peer(&self, addr: PeerAddr) -> Result<Arc<dyn Connection>> {
        let me = self.clone();
        let serve = move |c: Arc<dyn Connection>| {
            let bg = me.inner.background.clone();
            let _ = bg.send(Box::pin(async move {
                while let Ok((send, recv)) = c.accept_bi().await {
                    let (me2, c2) = (me.clone(), c.clone());
                    let _ = me.inner.background.send(Box::pin(async move {
                        me2.serve_stream(c2, send, recv).await;
                    }));
                }
            }));
        };
        let provider = &*self.inner.parts.provider;
        self.inner
            .dialed
            .connect(provider, &addr, Duration::from_secs(10), serve)
            .await
    }

    async fn switch(
        &self,
        app: &str,
        version: &semver::Version,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let rec = self.need(app).await?;
        if !rec.installed.contains_key(version) {
            return Err(not_found(format!(
                "{app} {version} is not installed here (installed: {})",
                list_versions(&rec)
            )));
        }
        if rec.active.as_ref() == Some(version) && rec.running && self.runs(app, version).await {
            return Ok(Reply::Activation(Activation::AlreadyActive {
                version: version.clone(),
            }));
        }
        self.activate(rec, version, "switch", options, events).await
    }

    async fn rollback(
        &self,
        app: &str,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let rec = self.need(app).await?;
        // The previous version; else the newest earlier version that was
        // once active here (one that failed its gate is a poor target),
        // else the newest earlier one.
        let earlier = |once_active: bool| {
            let active = rec.active.as_ref()?;
            rec.installed
                .keys()
                .rev()
                .filter(|v| *v < active)
                .find(|v| {
                    !once_active
                        || rec
                            .history
                            .iter()
                            .any(|h| &h.version == *v && h.outcome == Outcome::Activated)
                })
                .cloned()
        };
        let target = rec
            .previous
            .clone()
            .filter(|p| rec.installed.contains_key(p) && Some(p) != rec.active.as_ref())
            .or_else(|| earlier(true))
            .or_else(|| earlier(false))
            .ok_or_else(|| {
                not_found(format!(
                    "{app} has no earlier version to roll back to (installed: {})",
                    list_versions(&rec)
                ))
            })?;
        self.activate(rec, &target, "rollback", options, events)
            .await
    }

    /// Stops the active version, starts `to`, waits for the gate; commits,
    /// or goes back to the active version.
    async fn activate(
        &self,
        mut rec: AppRecord,
        to: &semver::Version,
        action: &str,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let name = rec.name.clone();
        let manifest = self.manifest_of(&rec, to).await.map_err(rpc)?;
        let from = rec.active.clone();
        let was_running = rec.running;
        rec.pending = Some(Pending {
            action: action.to_string(),
            to: to.clone(),
        });
        self.save(&rec).await.map_err(rpc)?;
        let rt = &self.inner.parts.runtime;
        tracing::info!(app = %name, from = ?from.as_ref().map(|v| v.to_string()), to = %to, action, "activating");

        let started = self.start_version(&rec, to).await;
        let verdict = match started {
            Ok(_) => {
                emit(events, DeployEvent::Started);
                self.gate(&name, to, &manifest, options).await
            }
            Err(e) => Err(format!("could not start: {e}")),
        };
        let now = self.inner.parts.clock.now().as_millis();
        rec.pending = None;
        match verdict {
            Ok(()) => {
                emit(events, DeployEvent::HealthPassed);
                if from.as_ref() != Some(to) {
                    rec.previous = from.clone();
                }
                rec.active = Some(to.clone());
                rec.running = true;
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: now,
                        action: action.to_string(),
                        version: to.clone(),
                        outcome: Outcome::Activated,
                    },
                );
                self.save(&rec).await.map_err(rpc)?;
                tracing::info!(app = %name, version = %to, "activated");
                if let Err(e) = self
                    .collect_versions(
                        &mut rec,
                        self.inner
                            .cfg
                            .keep_versions
                            .map_or(manifest.keep_versions, |k| k.min(manifest.keep_versions)),
                    )
                    .await
                {
                    tracing::warn!(app = %name, error = %e, "could not remove old versions");
                }
                Ok(Reply::Activation(Activation::Activated {
                    version: to.clone(),
                    previous: from,
                }))
            }
            Err(reason) => {
                emit(
                    events,
                    DeployEvent::HealthFailed {
                        reason: reason.clone(),
                    },
                );
                tracing::warn!(app = %name, version = %to, %reason, "activation failed; going back");
                let _ = rt.stop(&name).await;
                let _ = rt.remove(&name).await;
                let mut reason = reason;
                if let Some(v) = &from
                    && was_running
                    && let Err(e) = self.start_version(&rec, v).await
                {
                    // The record keeps `v` active: reconcile retries it.
                    tracing::warn!(app = %name, version = %v, error = %e, "could not restart the previous version");
                    reason = format!(
                        "{reason}; then {v} could not be started again ({e}); the agent keeps retrying"
                    );
                }
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: now,
                        action: action.to_string(),
                        version: to.clone(),
                        outcome: Outcome::RolledBack {
                            reason: reason.clone(),
                            to: from.clone(),
                        },
                    },
                );
                self.save(&rec).await.map_err(rpc)?;
                emit(events, DeployEvent::RolledBack { to: from.clone() });
                Ok(Reply::Activation(Activation::RolledBack {
                    reason,
                    to: from,
                }))
            }
        }
    }

    /// Waits for the health gate of `version` of `app`.
    async fn gate(
        &self,
        app: &str,
        version: &semver::Version,
        m: &Manifest,
        options: &ActivateOptions,
    ) -> std::result::Result<(), String> {
        let limit = options
            .gate_timeout
            .unwrap_or_else(|| match &m.health {
                Some(h) => {
                    h.check
                        .start_period
                        .saturating_add(h.check.interval.saturating_mul(
                            h.gate.saturating_add(h.check.retries).saturating_add(1),
                        ))
                        .saturating_add(Duration::from_secs(30))
                }
                None => options.settle.saturating_add(Duration::from_secs(30)),
            })
            .min(self.inner.cfg.max_request_timeout);
        let poll = match &m.health {
            Some(h) => {
                (h.check.interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
            }
            None => Duration::from_millis(250),
        };
        let begun = tokio::time::Instant::now();
        let deadline = begun + limit;
        let mut up_since: Option<tokio::time::Instant> = None;
        let want = version.to_string();
        // The runtime forgets a failed probe once it restarts the app:
        // remember the latest, to say why.
        let mut failed_probe: Option<String> = None;
        loop {
            let s = match self.inner.parts.runtime.status(app).await {
                Ok(s) => s,
                Err(e) => return Err(format!("the runtime lost the app: {e}")),
            };
            if let Some(p2p_core::HealthOutcome::Unhealthy(r)) = &s.health {
                failed_probe = Some(r.clone());
            }
            if s.version != want {
                return Err(format!(
                    "the runtime runs version {}, not {want}",
                    s.version
                ));
            }
            if s.restarts > 0 {
                if let Some(probe) = &failed_probe {
                    return Err(format!(
                        "unhealthy: {probe} (restarted {} time(s) during the health gate)",
                        s.restarts
                    ));
                }
                return Err(format!(
                    "it exited and was restarted {} time(s) during the health gate{}{}",
                    s.restarts,
                    s.exit
                        .map(|e| format!(" (last exit {e:?})"))
                        .unwrap_or_default(),
                    s.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
            }
            match s.state {
                AppState::Failed | AppState::Stopped | AppState::BackingOff => {
                    return Err(format!(
                        "it is {:?}{}{}",
                        s.state,
                        s.exit.map(|e| format!(", exit {e:?}")).unwrap_or_default(),
                        s.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
                _ => {}
            }
            let now = tokio::time::Instant::now();
            match &m.health {
                Some(h) => {
                    if s.healthy_streak >= h.gate {
                        return Ok(());
                    }
                }
                None => {
                    if matches!(s.state, AppState::Running | AppState::Healthy) {
                        let since = *up_since.get_or_insert(now);
                        if now - since >= options.settle {
                            return Ok(());
                        }
                    } else {
                        up_since = None;
                    }
                }
            }
            if now >= deadline {
                let health = match &s.health {
                    Some(p2p_core::HealthOutcome::Unhealthy(r)) => format!(", last probe: {r}"),
                    Some(p2p_core::HealthOutcome::Healthy) => ", last probe passed".to_string(),
                    None => String::new(),
                };
                return Err(format!(
                    "not healthy within {limit:?} (state {:?}, {} of {} passing probes in a row{health})",
                    s.state,
                    s.healthy_streak,
                    m.health.as_ref().map_or(0, |h| h.gate),
                ));
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }

    /// Keeps the active version and the `keep - 1` most recent others
    /// (the previous version first); uninstalls the rest, and drops the
    /// app's releases kept ahead that can no longer be deployed.
    async fn collect_versions(&self, rec: &mut AppRecord, keep: u32) -> Result<()> {
        let keep = keep.max(1) as usize;
        let mut kept: Vec<semver::Version> = Vec::new();
        kept.extend(rec.active.clone());
        if let Some(p) = &rec.previous
            && kept.len() < keep
            && !kept.contains(p)
        {
            kept.push(p.clone());
        }
        for v in rec.installed.keys().rev() {
            if kept.len() >= keep {
                break;
            }
            if !kept.contains(v) {
                kept.push(v.clone());
            }
        }
        let gone: Vec<(semver::Version, PackageId)> = rec
            .installed
            .iter()
            .filter(|(v, _)| !kept.contains(v))
            .map(|(v, id)| (v.clone(), *id))
            .collect();
        if !gone.is_empty() {
            for (v, _) in &gone {
                rec.installed.remove(v);
                if rec.previous.as_ref() == Some(v) {
                    rec.previous = None;
                }
            }
            self.save(rec).await?;
            for (v, _) in &gone {
                tracing::info!(app = %rec.name, version = %v, "removing an old version");
                self.inner.parts.installer.uninstall(&rec.name, v).await?;
            }
        }
        let mut ids: Vec<PackageId> = gone.into_iter().map(|(_, id)| id).collect();
        for id in self.undeployable(rec).await? {
            if !ids.contains(&id) {
                tracing::info!(app = %rec.name, release = %id, "dropping a release kept ahead that can no longer be deployed");
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        self.drop_releases(&ids).await
    }

    /// Releases of `rec`'s app kept without being installed (fetched
    /// ahead, [`Request::Fetch`]) that can no longer be deployed: a version
    /// installed is as high or higher, and a deploy never goes below one.
    /// One still being fetched is left alone.
    async fn undeployable(&self, rec: &AppRecord) -> Result<Vec<PackageId>> {
        let Some(top) = rec.installed.keys().next_back() else {
            return Ok(Vec::new());
        };
        let installed: BTreeSet<PackageId> = rec.installed.values().copied().collect();
        let fetching: BTreeSet<PackageId> = locked(&self.inner.transfers).keys().copied().collect();
        Ok(self
            .inner
            .chunks
            .releases()
            .await?
            .into_iter()
            .filter(|d| d.manifest.name == rec.name && d.manifest.version <= *top)
            .map(|d| d.id())
            .filter(|id| !installed.contains(id) && !fetching.contains(id))
            .collect())
    }
}

fn active_version(rec: &AppRecord) -> Res<semver::Version> {
    rec.active.clone().ok_or_else(|| {
        not_found(format!(
            "{} has no active version; deploy one first",
            rec.name
        ))
    })
}

fn list_versions(rec: &AppRecord) -> String {
    if rec.installed.is_empty() {
        return "none".into();
    }
    rec.installed
        .keys()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn push_history(rec: &mut AppRecord, e: HistoryEntry) {
    rec.history.push(e);
    let over = rec.history.len().saturating_sub(HISTORY_KEPT);
    rec.history.drain(..over);
}
