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

mod acquire;
mod activate;
mod deploy;
mod error;
pub mod gate;
mod inventory;
mod lifecycle;
mod observe;
mod records;
mod retention;
pub(crate) mod serve;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use p2p_core::sync::lock;
use p2p_core::{
    Clock, Connection, Error, NodeKey, PeerId, Provider, RecvStream, Result, Runtime, SendStream,
    Storage,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunks::ChunkStore;
use crate::install::Installer;
use crate::proto::{DeployEvent, ErrorKind, Frame, Reply, Request, RpcError};
use crate::swarm::{Reputation, SwarmConfig, SwarmPeer};
use crate::trust::TrustStore;
pub use error::DeployError;
pub use gate::{GateFailure, GateStep, HealthGate};
pub use records::HISTORY_KEPT;
use serve::rate::RateBook;
pub use serve::rate::RequestRate;
pub use serve::slots::SLOTS_PER_PEER;
use serve::slots::UploadSlots;

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
    /// Events kept in the node's [event log](crate::events), the newest.
    pub events_kept: usize,
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
            events_kept: crate::events::EVENTS_KEPT,
        }
    }
}

/// What an agent runs on: the p2p-core implementations it is given.
#[derive(Clone)]
pub struct AgentParts {
    /// The transport: connections in and out (wrap it in `Admitted` for
    /// a pre-shared key and allow-list).
    pub provider: Arc<dyn Provider>,
    /// Where apps run.
    pub runtime: Arc<dyn Runtime>,
    /// Where records, the node key, release descriptors and chunks are
    /// kept across restarts.
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
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.inner.parts.provider.local_id().short())
    }
}

pub(crate) struct Inner {
    cfg: AgentConfig,
    parts: AgentParts,
    chunks: ChunkStore,
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The node's part in swarm transfers.
    swarm: SwarmPeer,
    /// Chunk requests being served, in all and per peer.
    upload_slots: UploadSlots,
    /// Read-only requests per peer ([`AgentConfig::request_rate`]).
    rates: Mutex<RateBook>,
    /// Peers over their request rate, logged once per period.
    over_rate: p2p_core::ratelog::LogLimiter,
    /// Changes refused as not an operator's, logged once per peer per
    /// period (any admitted peer can send them).
    denied: p2p_core::ratelog::LogLimiter,
    /// The counters ([`Agent::metrics`]).
    pub(crate) metrics: crate::metrics::DeployMetrics,
    /// The event log, opened on first use.
    events: tokio::sync::OnceCell<crate::events::EventLog>,
    /// Each app's (version, restarts, state) when last looked at, for the
    /// restart and failure events.
    apps_seen: Mutex<BTreeMap<String, (String, u32, p2p_core::AppState)>>,
    /// An app watch is running.
    watching: std::sync::atomic::AtomicBool,
    /// Membership, when the node takes part ([`Agent::set_membership`]).
    membership: std::sync::OnceLock<crate::membership::Membership>,
    /// Work for [`Agent::run`] to own: sessions, connections we dialed.
    background: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
    background_rx: Mutex<Option<mpsc::UnboundedReceiver<BoxFuture<'static, ()>>>>,
}

/// How often the agent looks at its apps for restarts and failures (the
/// event log and the app metrics).
const APP_WATCH: Duration = Duration::from_secs(2);

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
        let chunks = ChunkStore::new(parts.storage.clone());
        let (background, background_rx) = mpsc::unbounded_channel();
        Agent {
            inner: Arc::new(Inner {
                swarm: SwarmPeer::new(&cfg.swarm, parts.seed),
                upload_slots: UploadSlots::new(cfg.swarm.upload_slots),
                cfg,
                parts,
                chunks,
                locks: Mutex::new(BTreeMap::new()),
                background,
                background_rx: Mutex::new(Some(background_rx)),
                membership: std::sync::OnceLock::new(),
                metrics: crate::metrics::DeployMetrics::default(),
                events: tokio::sync::OnceCell::new(),
                apps_seen: Mutex::default(),
                watching: std::sync::atomic::AtomicBool::new(false),
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
        &self.inner.swarm.reputation
    }

    /// Makes the node take part in membership: [`run`](Self::run) runs its
    /// gossip rounds and keeps its record up to date (addresses, labels,
    /// the releases held, at every reconcile), and the agent answers
    /// gossip and [`Request::Members`]. Once only, before `run`.
    pub fn set_membership(&self, membership: crate::membership::Membership) -> Result<()> {
        self.inner
            .membership
            .set(membership)
            .map_err(|_| Error::invalid("agent", "membership is already set"))
    }

    /// The node's membership, if it takes part.
    pub fn membership(&self) -> Option<&crate::membership::Membership> {
        self.inner.membership.get()
    }

    /// Recovers from a previous run, then serves the protocol and
    /// reconciles until the provider closes. Every task it starts is owned
    /// by this future: dropping it stops them all.
    pub async fn run(&self) -> Result<()> {
        let mut background = lock(&self.inner.background_rx)
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
        if let Some(m) = self.inner.membership.get().cloned() {
            self.publish_profile().await;
            requests.spawn(async move { m.run().await });
        }
        self.watch_apps().await;
        self.measure_store().await;
        let mut look = tokio::time::interval(APP_WATCH);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        me.publish_profile().await;
                        me.measure_store().await;
                    });
                }
                _ = look.tick() => {
                    let me = self.clone();
                    requests.spawn(async move { me.watch_apps().await });
                }
                Some(work) = background.recv() => {
                    requests.spawn(work);
                }
                Some(_) = conns.join_next() => {}
                Some(_) = requests.join_next() => {}
            }
        }
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
}
