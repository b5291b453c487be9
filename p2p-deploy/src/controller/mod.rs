//! The controller: finds nodes, selects targets, runs rollouts, follows
//! logs across the fleet.
//!
//! A rollout deploys one signed [`Release`](crate::Release) to the selected nodes by a
//! [`Plan`]: all at once, in rolling batches, or a canary batch first and
//! the rest only if every canary passes. After each batch the failures are
//! counted; past [`RolloutPlan::max_failures`] the rollout halts and,
//! unless told otherwise, rolls back the nodes it had already changed (a
//! node that fails rolls itself back; the agent does that). Progress comes
//! as [`Progress`] events on a channel, for progress bars or JSON lines.
//!
//! The controller serves the release's chunks itself: agents fetch what
//! they lack over the connection the deploy came on.

mod chunk_server;
mod config;
mod events;
mod logs;
mod members;
mod nodes;
mod rollout;
mod search;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use p2p_core::sync::lock;
use p2p_core::{Connection, Discovered, PeerAddr, PeerId, Provider, Result};

use crate::pool::Pool;
use crate::proto::{NodeInfo, Reply, Request, call_watched};
use chunk_server::{Served, serve_chunks};
pub use config::ControllerConfig;
pub use events::{FOLLOW_SILENCE, FleetEvent, Resume};
pub use members::Members;
pub use nodes::NodeView;
pub use rollout::{
    BatchSize, DryRun, FailureLimit, NodeResult, Plan, PlannedNode, Progress, RolloutPlan,
    RolloutReport, SITE_PEERS,
};
pub use search::{Holder, Search, SearchHit};

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

    pub(super) async fn request_long(&self, addr: &PeerAddr, request: Request) -> Result<Reply> {
        let conn = self.connect(addr).await?;
        call_watched(
            &conn,
            request,
            self.cfg.deploy_timeout,
            self.cfg.node_silence,
        )
        .await
    }
}
