//! The controller: finds nodes, selects targets, runs rollouts, follows
//! logs across the fleet.
//!
//! A rollout deploys one signed [`Release`] to the selected nodes by a
//! [`Plan`]: all at once, in rolling batches, or a canary batch first and
//! the rest only if every canary passes. After each batch the failures are
//! counted; past [`RolloutPlan::max_failures`] the rollout halts and,
//! unless told otherwise, rolls back the nodes it had already changed (a
//! node that fails rolls itself back; the agent does that). Progress comes
//! as [`Progress`] events on a channel, for progress bars or JSON lines.
//!
//! The controller serves the release's chunks itself: agents fetch what
//! they lack over the connection the deploy came on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use p2p_core::framing::Framed;
use p2p_core::{
    Connection, Discovered, Error, LogLine, LogSelection, PeerAddr, PeerId, Provider, Result,
    Signature,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::chunks::chunk_len;
use crate::package::{Descriptor, PackageFile, PackageId};
use crate::pool::Pool;
use crate::proto::{
    ActivateOptions, Activation, Call, DeployEvent, ErrorKind, Frame, MAX_FRAME, NodeInfo, Reply,
    Request, RpcError, accept_request, call_watched, end_with, send_chunks, unexpected,
};
use crate::selector::Selector;
use crate::swarm::Seed;
use futures::future::BoxFuture;

/// A release the controller deploys and serves.
#[derive(Debug, Clone)]
pub struct Release {
    /// The descriptor.
    pub descriptor: Descriptor,
    /// Its canonical bytes (what was signed).
    pub descriptor_bytes: Vec<u8>,
    /// Signatures.
    pub signatures: Vec<Signature>,
    archive: Archive,
}

#[derive(Debug, Clone)]
enum Archive {
    Memory(Arc<Vec<u8>>),
    File { path: PathBuf, offset: u64 },
}

impl Release {
    /// The release in a package file (the archive is read from the file
    /// as chunks are asked for). Nothing is checked here: call
    /// [`PackageFile::check_archive`] first (as `p2pctl deploy` does), or a
    /// changed byte is found only by the nodes, each of which then fails
    /// the deploy naming the chunk.
    pub fn from_package(pkg: &PackageFile) -> Self {
        Release {
            descriptor: pkg.descriptor.clone(),
            descriptor_bytes: pkg.descriptor_bytes.clone(),
            signatures: pkg.signatures.clone(),
            archive: Archive::File {
                path: pkg.path.clone(),
                offset: pkg.archive_offset,
            },
        }
    }

    /// A release held in memory; the archive must match the descriptor.
    pub fn from_parts(
        descriptor: Descriptor,
        signatures: Vec<Signature>,
        archive: Vec<u8>,
    ) -> Result<Self> {
        let h = crate::package::hash_archive(&archive[..], descriptor.chunk_size)
            .map_err(|e| Error::io("hashing the archive", e))?;
        if h.len != descriptor.archive_size || h.sha256 != descriptor.archive_sha256 {
            return Err(crate::trust::VerifyError::ArchiveHash.into());
        }
        if let Some(index) =
            (0..descriptor.chunks.len()).find(|&i| h.chunks.get(i) != descriptor.chunks.get(i))
        {
            return Err(crate::trust::VerifyError::ChunkHash { index }.into());
        }
        Ok(Release {
            descriptor_bytes: descriptor.to_bytes(),
            descriptor,
            signatures,
            archive: Archive::Memory(Arc::new(archive)),
        })
    }

    /// The package id.
    pub fn id(&self) -> PackageId {
        self.descriptor.id()
    }

    /// Chunk `index`.
    pub fn chunk(&self, index: usize) -> Result<Vec<u8>> {
        if index >= self.descriptor.chunks.len() {
            return Err(Error::NotFound {
                what: format!("chunk {index} of {}", self.id()),
            });
        }
        let start = index as u64 * u64::from(self.descriptor.chunk_size);
        let len = chunk_len(&self.descriptor, index) as usize;
        match &self.archive {
            Archive::Memory(b) => Ok(b[start as usize..start as usize + len].to_vec()),
            Archive::File { path, offset } => {
                use std::io::{Read, Seek, SeekFrom};
                let ioe = |e| Error::io(format!("reading {}", path.display()), e);
                let mut f = std::fs::File::open(path).map_err(ioe)?;
                f.seek(SeekFrom::Start(offset + start)).map_err(ioe)?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf).map_err(ioe)?;
                Ok(buf)
            }
        }
    }
}

/// How the controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Nodes to reach besides those discovered.
    pub bootstrap: Vec<PeerAddr>,
    /// Deadline of quick requests (info, status, start, stop, ...).
    pub request_timeout: Duration,
    /// Deadline of verification and transfer in a deploy.
    pub deploy_timeout: Duration,
    /// The bound on connecting to a node.
    pub connect_timeout: Duration,
    /// A node that sends nothing for this long while it works on a
    /// request (a deploy's transfer, install or health gate, a switch, a
    /// status) is reported as having stopped answering, and the request
    /// fails: a node killed or cut off mid-rollout counts as failed within
    /// seconds instead of at the transport's idle timeout. Nodes send a
    /// heartbeat every [`proto::HEARTBEAT`](crate::proto::HEARTBEAT), so
    /// keep this to a few of them; `None`: no such check.
    pub node_silence: Option<Duration>,
    /// Whether targets fetch from each other (the swarm) as well as from
    /// the controller. Off, every byte comes from the controller.
    pub swarm: bool,
    /// Swarm peers given to each target (a random subset of the others).
    pub swarm_peers: usize,
    /// With the swarm on: how many nodes are sent the release's
    /// descriptor itself ([`Request::Deploy`]), counting those that took
    /// it in earlier batches. The others get [`Request::DeployRef`] and
    /// take the descriptor from two of those, so that the controller's
    /// uplink does not carry a copy per target (13 KB per 100 MB of
    /// package) before the first chunk moves. `usize::MAX`: every
    /// target gets the descriptor (agents older than `DeployRef` need
    /// that).
    pub descriptor_copies: usize,
    /// Seed of the controller's own randomness (which peers each target
    /// is given, the seed's tie-breaks).
    pub seed: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            bootstrap: Vec::new(),
            request_timeout: Duration::from_secs(30),
            deploy_timeout: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(10),
            node_silence: Some(Duration::from_secs(5)),
            swarm: true,
            swarm_peers: 12,
            descriptor_copies: 16,
            seed: 0,
        }
    }
}

/// A node as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Where it was reached (or tried).
    pub addr: PeerAddr,
    /// What it said, or why it could not be asked.
    pub info: std::result::Result<NodeInfo, String>,
    /// How the controller's connection reached it (direct or relayed, the
    /// round trip), when there was one.
    #[serde(default)]
    pub path: Option<p2p_core::PathInfo>,
}

impl NodeView {
    /// The views that hold an error instead of the node's info.
    pub fn unanswered(views: &[NodeView]) -> impl Iterator<Item = &NodeView> {
        views.iter().filter(|v| v.info.is_err())
    }

    /// What the node said, with the address it was reached at first in
    /// its address list (the one it reports itself may not be reachable
    /// from here).
    fn reached(&self) -> Option<NodeInfo> {
        let mut i = self.info.clone().ok()?;
        let mut addrs = self.addr.addrs.clone();
        for a in &i.addr.addrs {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        i.addr = PeerAddr { id: i.id, addrs };
        Some(i)
    }

    /// The node's name, else its short id.
    pub fn label(&self) -> String {
        match &self.info {
            Ok(i) => i.label(),
            Err(_) => self.addr.id.short(),
        }
    }
}

/// What [`Controller::search`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    /// Matching releases.
    pub hits: Vec<SearchHit>,
    /// Nodes that could not be asked, and why.
    pub unanswered: Vec<(PeerAddr, String)>,
}

/// One release found in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// App name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The release's id.
    pub id: PackageId,
    /// Archive size in bytes.
    pub size: u64,
    /// Nodes holding it, complete holders first.
    pub holders: Vec<Holder>,
}

impl SearchHit {
    /// The nodes holding every chunk, to fetch it from.
    pub fn complete_holders(&self) -> Vec<PeerAddr> {
        self.holders
            .iter()
            .filter(|h| h.complete)
            .map(|h| h.node.clone())
            .collect()
    }
}

/// A node holding a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node, at the address it was reached at.
    pub node: PeerAddr,
    /// Whether it holds every chunk.
    pub complete: bool,
    /// Whether the version is installed there.
    pub installed: bool,
    /// Whether it is the active version there.
    pub active: bool,
}

/// How many nodes per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// A number of nodes (at least 1).
    Nodes(usize),
    /// A percentage of the targets (rounded up, at least 1 node).
    Percent(u8),
}

impl BatchSize {
    fn of(self, total: usize) -> usize {
        match self {
            BatchSize::Nodes(n) => n.max(1),
            BatchSize::Percent(p) => (total * usize::from(p.min(100))).div_ceil(100).max(1),
        }
    }
}

/// How targets are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Every target at once.
    All,
    /// Batches one after another.
    Rolling {
        /// Batch size.
        batch: BatchSize,
    },
    /// `canary` nodes first; the rest only if all of them pass, in
    /// batches of `batch` (all at once when `None`).
    Canary {
        /// Canary nodes.
        canary: usize,
        /// Batch size for the rest.
        batch: Option<BatchSize>,
    },
}

/// How many failures a rollout tolerates before it halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureLimit {
    /// At most this many failed nodes.
    Count(usize),
    /// At most this percentage of the targets (rounded down).
    Percent(u8),
}

impl FailureLimit {
    fn of(self, total: usize) -> usize {
        match self {
            FailureLimit::Count(n) => n,
            FailureLimit::Percent(p) => total * usize::from(p.min(100)) / 100,
        }
    }
}

/// A rollout's plan and policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// Batching.
    pub plan: Plan,
    /// Failures tolerated; one more halts the rollout. Default 0.
    pub max_failures: FailureLimit,
    /// Roll back the nodes this rollout changed when it halts. Default on.
    pub rollback_on_halt: bool,
    /// How each node activates the release.
    pub options: ActivateOptions,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            plan: Plan::All,
            max_failures: FailureLimit::Count(0),
            rollback_on_halt: true,
            options: ActivateOptions::default(),
        }
    }
}

/// How one node's deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeResult {
    /// Activated.
    Activated,
    /// Was already active; unchanged.
    AlreadyActive,
    /// Failed its gate and went back by itself.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The deploy could not run (unreachable, refused, bad release ...).
    Failed {
        /// Why.
        error: String,
    },
    /// Not attempted: the rollout halted first.
    Skipped,
}

impl NodeResult {
    /// Whether it counts as a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            NodeResult::RolledBack { .. } | NodeResult::Failed { .. }
        )
    }
}

/// Progress of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// The targets, in the order they will be taken.
    Selected {
        /// Target ids.
        nodes: Vec<PeerId>,
    },
    /// A batch begins (batch 0 is the canary batch of a canary plan).
    Batch {
        /// Batch number.
        index: usize,
        /// Its nodes.
        nodes: Vec<PeerId>,
    },
    /// Bytes a node holds of the release.
    Transfer {
        /// The node.
        node: PeerId,
        /// Bytes present.
        bytes: u64,
        /// Archive size.
        total: u64,
    },
    /// The node installed the release.
    Installed {
        /// The node.
        node: PeerId,
    },
    /// The node started it; its health gate runs.
    Started {
        /// The node.
        node: PeerId,
    },
    /// The node's health gate passed.
    HealthPassed {
        /// The node.
        node: PeerId,
    },
    /// The node's health gate failed.
    HealthFailed {
        /// The node.
        node: PeerId,
        /// Why.
        reason: String,
    },
    /// A node is back on a previous version.
    RolledBack {
        /// The node.
        node: PeerId,
        /// The version active again.
        to: Option<semver::Version>,
    },
    /// A node's deploy ended.
    NodeDone {
        /// The node.
        node: PeerId,
        /// How.
        result: NodeResult,
    },
    /// A node this rollout changed could not be rolled back after the
    /// halt.
    RollbackFailed {
        /// The node.
        node: PeerId,
        /// Why.
        error: String,
    },
    /// The rollout halts.
    Halted {
        /// Why.
        reason: String,
    },
    /// The rollout is over.
    Done(RolloutReport),
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// App and version.
    pub app: String,
    /// Version deployed.
    pub version: semver::Version,
    /// `None` when it completed; the reason when it halted.
    pub halted: Option<String>,
    /// Each target's result.
    pub nodes: BTreeMap<PeerId, NodeResult>,
    /// Nodes this rollout changed and then rolled back after the halt.
    pub rolled_back: Vec<PeerId>,
    /// Nodes this rollout changed that could not be rolled back after the
    /// halt, with why: they may still run the new version.
    pub rollback_failed: BTreeMap<PeerId, String>,
}

impl RolloutReport {
    /// Completed with every node on the new version (or already on it).
    pub fn is_success(&self) -> bool {
        self.halted.is_none() && self.nodes.values().all(|r| !r.is_failure())
    }
}

/// The controller.
pub struct Controller {
    provider: Arc<dyn Provider>,
    cfg: ControllerConfig,
    conns: Pool,
    releases: Served,
    book: Mutex<BTreeMap<PeerId, PeerAddr>>,
    discovered: Mutex<Option<Discovered>>,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Controller({})", self.provider.local_id().short())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Controller {
    /// A controller on `provider`.
    pub fn new(provider: Arc<dyn Provider>, cfg: ControllerConfig) -> Self {
        let book = cfg
            .bootstrap
            .iter()
            .map(|a| (a.id, a.clone()))
            .collect::<BTreeMap<_, _>>();
        let discovered = provider.discovered();
        Controller {
            provider,
            conns: Pool::default(),
            releases: Arc::new(Mutex::new(BTreeMap::new())),
            book: Mutex::new(book),
            discovered: Mutex::new(Some(discovered)),
            rng: Mutex::new(rand::SeedableRng::seed_from_u64(cfg.seed)),
            cfg,
        }
    }

    /// Adds a node to reach.
    pub fn add_peer(&self, addr: PeerAddr) {
        lock(&self.book).insert(addr.id, addr);
    }

    /// Every node known: bootstrap, added, and discovered so far.
    pub fn known(&self) -> Vec<PeerAddr> {
        let mut d = lock(&self.discovered);
        if let Some(stream) = d.as_mut() {
            loop {
                match stream.next().now_or_never() {
                    Some(Some(addr)) => {
                        if addr.id != self.provider.local_id() {
                            lock(&self.book).insert(addr.id, addr);
                        }
                    }
                    Some(None) => {
                        *d = None;
                        break;
                    }
                    None => break,
                }
            }
        }
        lock(&self.book).values().cloned().collect()
    }

    /// Asks every known node for its info, concurrently.
    pub async fn nodes(&self) -> Vec<NodeView> {
        let addrs = self.known();
        futures::future::join_all(addrs.into_iter().map(|addr| async move {
            let conn = match self.connect(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    return NodeView {
                        addr,
                        info: Err(e.to_string()),
                        path: None,
                    };
                }
            };
            let info = match call_watched(
                &conn,
                Request::Info,
                self.cfg.request_timeout,
                self.cfg.node_silence,
            )
            .await
            {
                Ok(Reply::Info(i)) => Ok(*i),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            NodeView {
                addr,
                info,
                path: Some(conn.path()),
            }
        }))
        .await
    }

    /// The nodes among `views` that answered and match `selector`, plus
    /// those named in `ids` (which must have answered). Nodes that did not
    /// answer cannot be matched by label: [`NodeView::unanswered`] lists
    /// them, for a caller to warn about.
    pub fn select(
        views: &[NodeView],
        selector: Option<&Selector>,
        ids: &[PeerId],
    ) -> Result<Vec<NodeInfo>> {
        let mut out = Vec::new();
        for id in ids {
            match views.iter().find(|v| v.addr.id == *id) {
                Some(v @ NodeView { info: Ok(_), .. }) => out.extend(v.reached()),
                Some(NodeView { info: Err(e), .. }) => {
                    return Err(Error::unreachable(format!("node {}: {e}", id.short())));
                }
                None => {
                    return Err(Error::NotFound {
                        what: format!("node {} is not known", id.short()),
                    });
                }
            }
        }
        if let Some(sel) = selector {
            for v in views {
                if let Ok(i) = &v.info
                    && sel.matches(&i.labels)
                    && !out.iter().any(|o| o.id == i.id)
                {
                    out.extend(v.reached());
                }
            }
        }
        Ok(out)
    }

    /// A connection to `addr`, reused while it lasts. Each one serves the
    /// releases' chunks to the node.
    pub async fn connect(&self, addr: &PeerAddr) -> Result<Arc<dyn Connection>> {
        let releases = self.releases.clone();
        self.conns
            .connect(&*self.provider, addr, self.cfg.connect_timeout, |conn| {
                tokio::spawn(serve_chunks(conn, releases));
            })
            .await
    }

    /// One request to one node, with the configured deadline.
    pub async fn request(&self, addr: &PeerAddr, request: Request) -> Result<Reply> {
        let conn = self.connect(addr).await?;
        call_watched(
            &conn,
            request,
            self.cfg.request_timeout,
            self.cfg.node_silence,
        )
        .await
    }

    /// The same request to many nodes, concurrently.
    pub async fn request_all(
        &self,
        nodes: &[NodeInfo],
        request: Request,
    ) -> Vec<(PeerId, Result<Reply>)> {
        futures::future::join_all(nodes.iter().map(|n| {
            let r = request.clone();
            async move { (n.id, self.request(&n.addr, r).await) }
        }))
        .await
    }

    /// Follows (or tails) `app`'s logs on every node in `nodes`, merged
    /// as lines arrive, each with the node's name (or short id). The
    /// requests are opened concurrently. A node that cannot be asked, or
    /// whose stream breaks, yields one error (naming the node) in the
    /// stream; the other nodes go on.
    pub async fn logs(
        &self,
        nodes: &[NodeInfo],
        app: &str,
        selection: LogSelection,
    ) -> BoxStream<'static, Result<(String, LogLine)>> {
        let opened = futures::future::join_all(nodes.iter().map(|n| {
            let request = Request::Logs {
                app: app.to_string(),
                selection: selection.clone(),
            };
            async move {
                let conn = self.connect(&n.addr).await?;
                let c = Call::open(&*conn, request, self.cfg.request_timeout).await?;
                Ok::<_, Error>((c, conn))
            }
        }))
        .await;
        let follow = selection.follow;
        let streams = nodes.iter().zip(opened).map(|(n, opened)| {
            let prefix = n.label();
            futures::stream::unfold(Some(opened), move |state| {
                let prefix = prefix.clone();
                async move {
                    let (mut c, conn) = match state? {
                        Ok(open) => open,
                        Err(e) => return Some((Err(e), None)),
                    };
                    let next = if follow {
                        c.next_unbounded().await
                    } else {
                        c.next().await
                    };
                    match next {
                        Ok(Frame::Log(l)) => Some((Ok((prefix, l)), Some(Ok((c, conn))))),
                        Ok(Frame::Done(_)) => None,
                        Ok(other) => Some((
                            Err(unexpected(&conn.remote_id(), "a log line", &other)),
                            None,
                        )),
                        Err(e) => Some((Err(e), None)),
                    }
                }
            })
            .boxed()
        });
        futures::stream::select_all(streams).boxed()
    }

    /// Searches the fleet's catalogs: every known node is asked which
    /// releases it holds, concurrently. `name` matches an app name exactly,
    /// or, ending in `*`, as a prefix (`"web*"`; `"*"` or `""` match
    /// everything); `version` narrows to a semver requirement. Hits come
    /// sorted by name, newest version first, each with the nodes holding
    /// it (complete holders first); nodes that could not be asked are
    /// listed in [`Search::unanswered`].
    pub async fn search(&self, name: &str, version: Option<&semver::VersionReq>) -> Search {
        let addrs = self.known();
        let answers = futures::future::join_all(addrs.into_iter().map(|addr| async move {
            let r = match self.request(&addr, Request::Catalog).await {
                Ok(Reply::Catalog(entries)) => Ok(entries),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            (addr, r)
        }))
        .await;
        let matches = |n: &str| match name.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => name.is_empty() || n == name,
        };
        let mut hits: BTreeMap<PackageId, SearchHit> = BTreeMap::new();
        let mut unanswered = Vec::new();
        for (addr, r) in answers {
            let entries = match r {
                Ok(e) => e,
                Err(e) => {
                    unanswered.push((addr, e));
                    continue;
                }
            };
            for e in entries {
                if !matches(&e.name) || version.is_some_and(|req| !req.matches(&e.version)) {
                    continue;
                }
                let hit = hits.entry(e.id).or_insert_with(|| SearchHit {
                    name: e.name.clone(),
                    version: e.version.clone(),
                    id: e.id,
                    size: e.size,
                    holders: Vec::new(),
                });
                hit.holders.push(Holder {
                    node: addr.clone(),
                    complete: e.is_complete(),
                    installed: e.installed,
                    active: e.active,
                });
            }
        }
        let mut hits: Vec<SearchHit> = hits.into_values().collect();
        for h in &mut hits {
            h.holders.sort_by_key(|h| (!h.complete, h.node.id));
        }
        hits.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| b.version.cmp(&a.version))
                .then_with(|| a.id.cmp(&b.id))
        });
        Search { hits, unanswered }
    }

    /// Has `node` fetch release `package` from `from` (nodes holding it,
    /// as [`search`](Self::search) finds them) and keep it without
    /// installing it, so that a later deploy of it starts with every chunk
    /// present. Bounded by the deploy deadline.
    pub async fn prefetch(
        &self,
        node: &PeerAddr,
        package: PackageId,
        from: Vec<PeerAddr>,
    ) -> Result<crate::proto::CatalogEntry> {
        let conn = self.connect(node).await?;
        let reply = call_watched(
            &conn,
            Request::Fetch { package, from },
            self.cfg.deploy_timeout,
            self.cfg.node_silence,
        )
        .await?;
        match reply {
            Reply::Catalog(mut e) if e.len() == 1 => Ok(e.remove(0)),
            other => Err(Error::protocol(format!(
                "node {} answered a fetch with {other:?}",
                node.id.short()
            ))),
        }
    }

    /// Deploys `release` to `targets` by `plan`, sending progress to
    /// `events` (which may be dropped: progress is then discarded).
    pub async fn deploy(
        &self,
        release: Arc<Release>,
        targets: &[NodeInfo],
        plan: &RolloutPlan,
        events: mpsc::UnboundedSender<Progress>,
    ) -> RolloutReport {
        let send = |p: Progress| {
            let _ = events.send(p);
        };
        let m = &release.descriptor.manifest;
        let _serving = Serving::new(&self.releases, &release, self.cfg.seed);
        let mut report = RolloutReport {
            app: m.name.clone(),
            version: m.version.clone(),
            halted: None,
            nodes: targets
                .iter()
                .map(|t| (t.id, NodeResult::Skipped))
                .collect(),
            rolled_back: Vec::new(),
            rollback_failed: BTreeMap::new(),
        };
        send(Progress::Selected {
            nodes: targets.iter().map(|t| t.id).collect(),
        });
        let total = targets.len();
        let limit = plan.max_failures.of(total);
        let batches = batches(targets, plan.plan);
        let mut failures = 0;
        let mut changed: Vec<(NodeInfo, Option<semver::Version>)> = Vec::new();
        // Nodes whose deploy ended in an error on our side (a timeout, a
        // lost connection): they may have activated anyway.
        let mut uncertain: Vec<NodeInfo> = Vec::new();
        let mut holders: Vec<PeerAddr> = Vec::new();
        for (index, batch) in batches.iter().enumerate() {
            send(Progress::Batch {
                index,
                nodes: batch.iter().map(|t| t.id).collect(),
            });
            // Swarm peers: the nodes that took the release in earlier
            // batches, and this batch.
            let candidates: Vec<PeerAddr> = holders
                .iter()
                .cloned()
                .chain(batch.iter().map(|t| t.addr.clone()))
                .collect();
            let full = sent_whole(&self.cfg, holders.len(), batch.len());
            let sources: Vec<PeerAddr> = holders
                .iter()
                .cloned()
                .chain(batch[..full].iter().map(|t| t.addr.clone()))
                .collect();
            let results = futures::future::join_all(batch.iter().enumerate().map(|(i, t)| {
                let release = release.clone();
                let events = events.clone();
                let peers = self.swarm_peers(&candidates, t.id);
                let from = (i >= full).then(|| self.pick(&sources, t.id, 2));
                async move {
                    let (result, previous) = self
                        .deploy_one(&release, t, &plan.options, from, peers, &events)
                        .await;
                    // Reported as soon as this node is done, not when its
                    // batch is.
                    let _ = events.send(Progress::NodeDone {
                        node: t.id,
                        result: result.clone(),
                    });
                    (t, (result, previous))
                }
            }))
            .await;
            let mut batch_failed = 0;
            for (t, (result, previous)) in results {
                if result.is_failure() {
                    batch_failed += 1;
                }
                if !matches!(result, NodeResult::Failed { .. }) {
                    holders.push(t.addr.clone());
                }
                if result == NodeResult::Activated {
                    // A node that was on this version already (not
                    // running) was restarted, not changed: no rollback.
                    if previous.as_ref() != Some(&m.version) {
                        changed.push((t.clone(), previous));
                    }
                } else if matches!(result, NodeResult::Failed { .. }) {
                    uncertain.push(t.clone());
                }
                report.nodes.insert(t.id, result);
            }
            failures += batch_failed;
            let canary_failed =
                matches!(plan.plan, Plan::Canary { .. }) && index == 0 && batch_failed > 0;
            if canary_failed || failures > limit {
                let reason = if canary_failed {
                    format!("{batch_failed} canary node(s) failed")
                } else {
                    format!("{failures} node(s) failed, more than the {limit} allowed")
                };
                send(Progress::Halted {
                    reason: reason.clone(),
                });
                report.halted = Some(reason);
                break;
            }
        }
        if report.halted.is_some() && plan.rollback_on_halt {
            // A node that failed on our side but is on the new version was
            // changed by this rollout too.
            let asked = futures::future::join_all(uncertain.into_iter().map(|t| async move {
                let status = Request::Status {
                    app: m.name.clone(),
                };
                let r = self.request(&t.addr, status).await;
                (t, r)
            }))
            .await;
            for (t, r) in asked {
                if let Ok(Reply::App(a)) = r
                    && a.active.as_ref() == Some(&m.version)
                {
                    changed.push((t, a.previous.clone()));
                }
            }
            let rolled = futures::future::join_all(changed.iter().map(|(t, previous)| {
                let app = m.name.clone();
                let options = plan.options.clone();
                async move {
                    let req = match previous {
                        Some(_) => Request::Rollback { app, options },
                        None => Request::Stop { app },
                    };
                    (t, previous, self.request_long(&t.addr, req).await)
                }
            }))
            .await;
            for (t, previous, r) in rolled {
                match r {
                    Ok(Reply::Activation(Activation::Activated { version, .. })) => {
                        send(Progress::RolledBack {
                            node: t.id,
                            to: Some(version),
                        });
                        report.rolled_back.push(t.id);
                    }
                    Ok(Reply::App(_)) if previous.is_none() => {
                        send(Progress::RolledBack {
                            node: t.id,
                            to: None,
                        });
                        report.rolled_back.push(t.id);
                    }
                    other => {
                        let error = match other {
                            Ok(Reply::Activation(Activation::RolledBack { reason, .. })) => {
                                format!("going back failed too: {reason}")
                            }
                            Ok(Reply::Activation(Activation::AlreadyActive { version })) => {
                                format!("it is on {version}")
                            }
                            Ok(other) => format!("unexpected answer {other:?}"),
                            Err(e) => e.to_string(),
                        };
                        tracing::warn!(node = %t.id.short(), %error, "rollback failed");
                        send(Progress::RollbackFailed {
                            node: t.id,
                            error: error.clone(),
                        });
                        report.rollback_failed.insert(t.id, error);
                    }
                }
            }
        }
        send(Progress::Done(report.clone()));
        report
    }

    /// Up to `swarm_peers` of `candidates` other than `node`, at random.
    fn swarm_peers(&self, candidates: &[PeerAddr], node: PeerId) -> Vec<PeerAddr> {
        if !self.cfg.swarm {
            return Vec::new();
        }
        self.pick(candidates, node, self.cfg.swarm_peers)
    }

    /// Up to `want` of `candidates` other than `node`, at random.
    fn pick(&self, candidates: &[PeerAddr], node: PeerId, want: usize) -> Vec<PeerAddr> {
        let mut others: Vec<PeerAddr> = candidates
            .iter()
            .filter(|a| a.id != node)
            .cloned()
            .collect();
        let want = want.min(others.len());
        let mut rng = lock(&self.rng);
        for i in 0..want {
            let j = rand::RngExt::random_range(&mut *rng, i..others.len());
            others.swap(i, j);
        }
        others.truncate(want);
        others
    }

    async fn request_long(&self, addr: &PeerAddr, request: Request) -> Result<Reply> {
        let conn = self.connect(addr).await?;
        call_watched(
            &conn,
            request,
            self.cfg.deploy_timeout,
            self.cfg.node_silence,
        )
        .await
    }

    /// Deploys to one node; returns its result and the version it had.
    /// With `from`, the descriptor goes by reference: the node takes it
    /// from those nodes ([`Request::DeployRef`]).
    async fn deploy_one(
        &self,
        release: &Release,
        node: &NodeInfo,
        options: &ActivateOptions,
        from: Option<Vec<PeerAddr>>,
        peers: Vec<PeerAddr>,
        events: &mpsc::UnboundedSender<Progress>,
    ) -> (NodeResult, Option<semver::Version>) {
        let id = node.id;
        let send = |p: Progress| {
            let _ = events.send(p);
        };
        let run = async {
            let conn = self.connect(&node.addr).await?;
            let request = match from {
                Some(from) => Request::DeployRef {
                    package: release.id(),
                    signatures: release.signatures.clone(),
                    options: options.clone(),
                    from,
                    peers,
                },
                None => Request::Deploy {
                    descriptor: release.descriptor_bytes.clone(),
                    signatures: release.signatures.clone(),
                    options: options.clone(),
                    peers,
                },
            };
            let c = Call::open_watched(
                &conn,
                request,
                self.cfg.deploy_timeout,
                self.cfg.node_silence,
            )
            .await?;
            c.finish(|f| match f {
                Frame::Event(e) => send(match e {
                    DeployEvent::Transfer { bytes, total } => Progress::Transfer {
                        node: id,
                        bytes,
                        total,
                    },
                    DeployEvent::Installed => Progress::Installed { node: id },
                    DeployEvent::Started => Progress::Started { node: id },
                    DeployEvent::HealthPassed => Progress::HealthPassed { node: id },
                    DeployEvent::HealthFailed { reason } => {
                        Progress::HealthFailed { node: id, reason }
                    }
                    DeployEvent::RolledBack { to } => Progress::RolledBack { node: id, to },
                    DeployEvent::Verified => return,
                }),
                other => tracing::debug!(node = %id.short(), "ignored frame {other:?}"),
            })
            .await
        };
        match run.await {
            Ok(Reply::Activation(Activation::Activated { previous, .. })) => {
                (NodeResult::Activated, previous)
            }
            Ok(Reply::Activation(Activation::AlreadyActive { .. })) => {
                (NodeResult::AlreadyActive, None)
            }
            Ok(Reply::Activation(Activation::RolledBack { reason, .. })) => {
                (NodeResult::RolledBack { reason }, None)
            }
            Ok(other) => (
                NodeResult::Failed {
                    error: format!("unexpected answer {other:?}"),
                },
                None,
            ),
            Err(e) => (
                NodeResult::Failed {
                    error: e.to_string(),
                },
                None,
            ),
        }
    }
}

/// How many of a batch's first targets are sent the descriptor itself
/// ([`ControllerConfig::descriptor_copies`] less the `holders` from
/// earlier batches); the rest get it by reference from those.
fn sent_whole(cfg: &ControllerConfig, holders: usize, batch: usize) -> usize {
    if !cfg.swarm {
        return batch;
    }
    cfg.descriptor_copies
        .max(1)
        .saturating_sub(holders)
        .min(batch)
}

/// Splits targets into batches by plan.
fn batches(targets: &[NodeInfo], plan: Plan) -> Vec<Vec<NodeInfo>> {
    let total = targets.len();
    let cut = |items: &[NodeInfo], size: usize| -> Vec<Vec<NodeInfo>> {
        items
            .chunks(size.max(1))
            .map(<[NodeInfo]>::to_vec)
            .collect()
    };
    match plan {
        Plan::All => vec![targets.to_vec()],
        Plan::Rolling { batch } => cut(targets, batch.of(total)),
        Plan::Canary { canary, batch } => {
            let k = canary.clamp(1, total.max(1)).min(total);
            let mut out = vec![targets[..k].to_vec()];
            let rest = &targets[k..];
            if !rest.is_empty() {
                match batch {
                    Some(b) => out.extend(cut(rest, b.of(total))),
                    None => out.push(rest.to_vec()),
                }
            }
            out
        }
    }
}

/// The releases a controller serves, each with the number of rollouts
/// that use it.
type Served = Arc<Mutex<BTreeMap<PackageId, (Arc<Seeding>, usize)>>>;

/// A release being served, with what the seed knows of its spread.
struct Seeding {
    release: Arc<Release>,
    seed: Seed,
}

/// Serves a release while a rollout runs; the last one to end stops it.
struct Serving {
    served: Served,
    id: PackageId,
}

impl Serving {
    fn new(served: &Served, release: &Arc<Release>, seed: u64) -> Self {
        let id = release.id();
        lock(served)
            .entry(id)
            .or_insert_with(|| {
                let seeding = Seeding {
                    release: release.clone(),
                    seed: Seed::new(release.descriptor.clone(), seed),
                };
                (Arc::new(seeding), 0)
            })
            .1 += 1;
        Serving {
            served: served.clone(),
            id,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut served = lock(&self.served);
        if let Some((_, users)) = served.get_mut(&self.id) {
            *users -= 1;
            if *users == 0 {
                served.remove(&self.id);
            }
        }
    }
}

/// Serves a target on a controller's connection until it closes: chunk
/// fetches, swarm sessions, "any chunk" requests and descriptors
/// ([`Request::Release`]) for the releases being deployed.
async fn serve_chunks(conn: Arc<dyn Connection>, releases: Served) {
    let peer = conn.remote_id();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let releases = releases.clone();
        tokio::spawn(async move {
            let mut framed = Framed::with_max(send, recv, MAX_FRAME);
            let Some((env, _)) = accept_request(&mut framed, &peer).await else {
                return;
            };
            let package = match &env.request {
                Request::FetchChunks { package, .. }
                | Request::Swarm { package, .. }
                | Request::FetchAny { package, .. }
                | Request::Release { package } => *package,
                other => {
                    let e = RpcError::new(
                        ErrorKind::Invalid,
                        format!("{} is not served by a controller", other.kind()),
                    );
                    end_with(&mut framed, Frame::Error(e)).await;
                    return;
                }
            };
            let served = lock(&releases).get(&package).map(|(s, _)| s.clone());
            let Some(s) = served else {
                // To a seed's "any chunk" request: Unreachable, not
                // NotFound, so that the node stops asking this seed rather
                // than wait and ask again.
                let kind = if matches!(env.request, Request::FetchAny { .. }) {
                    ErrorKind::Unreachable
                } else {
                    ErrorKind::NotFound
                };
                let e = RpcError::new(
                    kind,
                    format!("release {package} is not served here (any more)"),
                );
                end_with(&mut framed, Frame::Error(e)).await;
                return;
            };
            match env.request {
                Request::FetchChunks { indexes, .. } => {
                    let r = &s.release;
                    let end = send_chunks(&mut framed, &package, &indexes, |i| {
                        read_chunk(r.clone(), i as usize)
                    })
                    .await;
                    end_with(&mut framed, end).await;
                }
                Request::Swarm { have, .. } => s.seed.session(peer, framed, have).await,
                Request::FetchAny { have, .. } => {
                    let r = s.release.clone();
                    let read = move |i| read_chunk(r, i);
                    if let Some(end) = s.seed.fetch_any(peer, &mut framed, have, read).await {
                        end_with(&mut framed, end).await;
                    }
                }
                Request::Release { .. } => {
                    let reply = Reply::Release {
                        descriptor: s.release.descriptor_bytes.clone(),
                        signatures: s.release.signatures.clone(),
                    };
                    end_with(&mut framed, Frame::Done(reply)).await;
                }
                _ => {}
            }
        });
    }
}

/// Chunk `i` of `r`; a package file is read off the async threads.
fn read_chunk(r: Arc<Release>, i: usize) -> BoxFuture<'static, Result<Option<Vec<u8>>>> {
    Box::pin(async move {
        if matches!(r.archive, Archive::Memory(_)) {
            return r.chunk(i).map(Some);
        }
        tokio::task::spawn_blocking(move || r.chunk(i))
            .await
            .map_err(|e| Error::io("reading a chunk", std::io::Error::other(e)))?
            .map(Some)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_targets_get_the_descriptor_and_the_rest_a_reference() {
        let cfg = |swarm, copies| ControllerConfig {
            swarm,
            descriptor_copies: copies,
            ..ControllerConfig::default()
        };
        let default = ControllerConfig::default();
        assert_eq!(default.descriptor_copies, 16);
        // (holders from earlier batches, batch size) -> sent whole.
        assert_eq!(sent_whole(&default, 0, 500), 16);
        assert_eq!(sent_whole(&default, 0, 10), 10);
        assert_eq!(sent_whole(&default, 10, 100), 6);
        assert_eq!(sent_whole(&default, 40, 100), 0);
        // Agents too old for references: every target gets it.
        assert_eq!(sent_whole(&cfg(true, usize::MAX), 40, 100), 100);
        // At least one node is sent it, or nobody would hold it.
        assert_eq!(sent_whole(&cfg(true, 0), 0, 100), 1);
        // Without the swarm there is nobody to take it from.
        assert_eq!(sent_whole(&cfg(false, 16), 0, 100), 100);
    }
}
