//! [`SimNet`]: the simulated network and its fault controls.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::{Error, MemStorage, NodeKey, PeerId, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::clock::SimClock;
use crate::engine::{Config, ConnId, NetStats, NodeIdx, NodeTraffic, Shared, State};
use crate::link::{LinkSpec, NodeConfig};
use crate::process::{ScriptBook, SimRuntime};
use crate::provider::{SimConnection, SimProvider};
use crate::trace::TraceEvent;

/// Builds a [`SimNet`] with non-default model parameters.
#[derive(Debug, Clone)]
pub struct SimNetBuilder {
    seed: u64,
    cfg: Config,
    link: LinkSpec,
    clock_start_ms: u64,
}

impl SimNetBuilder {
    /// The link used between nodes without a specific one (default
    /// [`LinkSpec::default`]).
    pub fn default_link(mut self, link: LinkSpec) -> Self {
        self.link = link;
        self
    }

    /// Bytes a stream writer may have in flight and unread (default 2 MiB).
    pub fn stream_window(mut self, bytes: usize) -> Self {
        self.cfg.window = bytes.max(1);
        self
    }

    /// Largest segment (default 64 KiB). Smaller segments model sharing
    /// more finely and cost more events.
    pub fn segment_size(mut self, bytes: usize) -> Self {
        self.cfg.mss = bytes.max(1);
        self
    }

    /// How long a dial waits for an answer (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.connect_timeout = d;
        self
    }

    /// How long a connection survives a partition before both ends see it
    /// time out (default 30 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.cfg.idle_timeout = d;
        self
    }

    /// Wall-clock start of [`SimNet::clock`], in Unix milliseconds.
    pub fn clock_start_ms(mut self, ms: u64) -> Self {
        self.clock_start_ms = ms;
        self
    }

    /// Creates the network and starts its driver task.
    ///
    /// # Panics
    ///
    /// Outside a current-thread tokio runtime with paused time (see
    /// [`SimNet`]), with a message saying how to get one;
    /// [`SimNetBuilder::try_build`] returns that as an error instead.
    pub fn build(self) -> SimNet {
        match self.try_build() {
            Ok(net) => net,
            Err(e) => panic!("{e}"),
        }
    }

    /// Creates the network and starts its driver task, or says why the
    /// current tokio runtime cannot run it: it must be a current-thread
    /// runtime with paused time (see [`SimNet`]), or the simulation would
    /// run in real time with a different trace on every run.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] outside a tokio runtime, on a multi-thread one,
    /// or when time is not paused.
    pub fn try_build(self) -> Result<SimNet> {
        if let Some(problem) = crate::engine::runtime_problem() {
            return Err(Error::invalid(
                "tokio runtime for a SimNet",
                format!(
                    "{problem}; the simulator needs a current-thread runtime with paused \
                     time, or it runs in real time with a different trace on every run. Use \
                     #[tokio::test(start_paused = true)] or \
                     tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)"
                ),
            ));
        }
        let epoch = Instant::now();
        let rng = sub_rng(self.seed, "links");
        let state = State::new(self.seed, self.cfg, self.link, rng);
        let shared = Shared::new(state, epoch, connection_handle);
        tokio::spawn(crate::engine::drive(
            Arc::downgrade(&shared),
            shared.notify.clone(),
            epoch,
        ));
        Ok(SimNet {
            shared,
            clock: SimClock::with_epoch(self.clock_start_ms, epoch),
            scripts: ScriptBook::new(),
            factories: Arc::default(),
        })
    }
}

/// The handle the engine hands out for one side of a new connection.
fn connection_handle(
    shared: Arc<Shared>,
    conn: ConnId,
    side: usize,
    remote: PeerId,
) -> Arc<dyn p2p_core::Connection> {
    Arc::new(SimConnection::new(shared, conn, side, remote))
}

/// A node's boxed main task, made by its factory.
type Factory = Arc<dyn Fn(NodeCtx) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A deterministic child RNG for component `name` of a network with `seed`.
fn sub_rng(seed: u64, name: &str) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"p2p-sim sub-seed");
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// What a node factory gets for each incarnation of its node.
pub struct NodeCtx {
    /// The node's name.
    pub name: String,
    /// The node's key (the same in every incarnation).
    pub key: NodeKey,
    /// This incarnation's provider.
    pub provider: SimProvider,
    /// The node's storage: the same in every incarnation, so state
    /// survives a crash.
    pub storage: MemStorage,
    /// Wall clock following virtual time.
    pub clock: SimClock,
    /// A seed for this incarnation's own randomness (differs per restart).
    pub seed: u64,
    /// This incarnation's simulated processes, scripted by
    /// [`SimNet::scripts`]; all of them die when the node crashes.
    pub runtime: Arc<SimRuntime>,
    net: SimNet,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCtx({})", self.name)
    }
}

impl NodeCtx {
    /// Spawns a task that belongs to this node: it is aborted when the node
    /// crashes.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // The node may already have crashed again; then nothing is spawned.
        let _ = self.net.spawn_on(&self.name, fut);
    }

    /// Runs `hook` when this incarnation crashes (to kill simulated
    /// processes, for example).
    pub fn on_crash(&self, hook: impl FnOnce() + Send + 'static) {
        let _ = self.net.on_crash(&self.name, hook);
    }

    /// The network, to inspect or inject faults from inside a node.
    pub fn net(&self) -> &SimNet {
        &self.net
    }
}

/// A simulated network: nodes as [`SimProvider`]s, links with latency,
/// jitter, loss and bandwidth, partitions, crashes and restarts, all in
/// virtual time and reproducible from one seed.
///
/// Cloning gives another handle to the same network.
///
/// # Runtime
///
/// A `SimNet` runs on a tokio **current-thread runtime with paused time**:
/// `#[tokio::test(start_paused = true)]`, or
/// `tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)`.
/// Paused time is what makes idle time jump to the next event and the
/// trace the same on every run; on a multi-thread runtime, or with time
/// running, the network would run in real time and differ from run to
/// run. [`SimNet::new`] and [`SimNetBuilder::build`] therefore panic there,
/// saying so, and [`SimNetBuilder::try_build`] returns the error.
#[derive(Clone)]
pub struct SimNet {
    shared: Arc<Shared>,
    clock: SimClock,
    scripts: ScriptBook,
    /// The software of nodes added with [`SimNet::spawn_node`].
    factories: Arc<Mutex<BTreeMap<NodeIdx, Factory>>>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimNet(seed {})", self.seed())
    }
}

impl SimNet {
    /// A network with default parameters.
    ///
    /// # Panics
    ///
    /// Outside a current-thread tokio runtime with paused time (see
    /// [Runtime](SimNet#runtime)).
    pub fn new(seed: u64) -> Self {
        Self::builder(seed).build()
    }

    /// A builder for non-default parameters.
    pub fn builder(seed: u64) -> SimNetBuilder {
        SimNetBuilder {
            seed,
            cfg: Config::default(),
            link: LinkSpec::default(),
            clock_start_ms: SimClock::DEFAULT_START_MS,
        }
    }

    /// The seed this network was built from.
    pub fn seed(&self) -> u64 {
        self.shared.with(|st| st.seed)
    }

    /// Virtual time since the network was built.
    pub fn now(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    /// A wall clock following virtual time.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// The scripts that every node's [`SimRuntime`] follows: set how a
    /// given app version behaves (`net.scripts().set("web", "2.0.0",
    /// Script::exits_after(1, secs(5)))`) before or during a test.
    pub fn scripts(&self) -> &ScriptBook {
        &self.scripts
    }

    /// A deterministic RNG for a named component (a node's runtime, a test's
    /// workload), derived from the network seed.
    pub fn rng(&self, component: &str) -> ChaCha20Rng {
        sub_rng(self.seed(), component)
    }

    /// The key a node named `name` gets when none is given.
    pub fn key_for(&self, name: &str) -> NodeKey {
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut self.rng(&format!("node key {name}")), &mut seed);
        NodeKey::from_seed(seed)
    }

    fn idx(&self, name: &str) -> Result<NodeIdx> {
        self.shared.with(|st| {
            st.names.get(name).copied().ok_or_else(|| Error::NotFound {
                what: format!("simulated node {name:?}"),
            })
        })
    }

    fn provider_for(&self, n: NodeIdx, inc: u64) -> SimProvider {
        let (id, name, addr) = self.shared.with(|st| {
            let node = &st.nodes[n as usize];
            (node.id, node.name.clone(), node.addr.clone())
        });
        SimProvider {
            shared: self.shared.clone(),
            node: n,
            inc,
            id,
            name,
            addr,
        }
    }

    /// Adds a node with default settings and brings it up. Its key is
    /// derived from the seed and the name.
    pub fn add_node(&self, name: &str) -> Result<SimProvider> {
        self.add_node_with(name, NodeConfig::default())
    }

    /// Adds a node with `cfg` and brings it up.
    pub fn add_node_with(&self, name: &str, cfg: NodeConfig) -> Result<SimProvider> {
        let key = cfg.key.clone().unwrap_or_else(|| self.key_for(name));
        let (n, inc) = self.shared.with(|st| {
            let n = st.add_node(name, key, cfg)?;
            Ok::<_, Error>((n, st.bring_up(n)))
        })?;
        Ok(self.provider_for(n, inc))
    }

    /// Adds a node whose software is `factory`: it runs once now and again
    /// after every [`SimNet::restart`], with a fresh provider and the same
    /// storage. Its task, and every task it spawns through
    /// [`NodeCtx::spawn`], is aborted when the node crashes.
    pub fn spawn_node<F, Fut>(&self, name: &str, cfg: NodeConfig, factory: F) -> Result<()>
    where
        F: Fn(NodeCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let key = cfg.key.clone().unwrap_or_else(|| self.key_for(name));
        let factory: Factory = Arc::new(move |ctx| Box::pin(factory(ctx)));
        let n = self.shared.with(|st| st.add_node(name, key, cfg))?;
        p2p_core::sync::lock(&self.factories).insert(n, factory);
        self.start_incarnation(n);
        Ok(())
    }

    fn start_incarnation(&self, n: NodeIdx) -> SimProvider {
        let inc = self.shared.with(|st| st.bring_up(n));
        let provider = self.provider_for(n, inc);
        let (key, storage, name, seed) = self.shared.with(|st| {
            let node = &st.nodes[n as usize];
            (
                node.key.clone(),
                node.storage.clone(),
                node.name.clone(),
                st.seed,
            )
        });
        let factory = p2p_core::sync::lock(&self.factories).get(&n).cloned();
        if let Some(factory) = factory {
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(name.as_bytes());
            h.update(inc.to_le_bytes());
            let digest: [u8; 32] = h.finalize().into();
            let mut s = [0u8; 8];
            s.copy_from_slice(&digest[..8]);
            let seed = u64::from_le_bytes(s);
            let runtime = Arc::new(SimRuntime::new(
                self.scripts.clone(),
                Arc::new(self.clock),
                seed,
            ));
            let dying = runtime.clone();
            let _ = self.on_crash(&name, move || dying.shutdown());
            let ctx = NodeCtx {
                name: name.clone(),
                key,
                provider: provider.clone(),
                storage,
                clock: self.clock,
                seed,
                runtime,
                net: self.clone(),
            };
            let _ = self.spawn_on(&name, factory(ctx));
        }
        provider
    }

    /// Spawns a task owned by node `name`: aborted when the node crashes.
    pub fn spawn_on<F>(&self, name: &str, fut: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.idx(name)?;
        if !self.shared.with(|st| st.nodes[n as usize].up) {
            return Err(Error::closed(format!("simulated node {name} is down")));
        }
        // Spawn outside the state lock: a future rejected by a shutting-down
        // runtime is dropped at once, and its handles' Drop takes the lock.
        let task = tokio::spawn(fut).abort_handle();
        self.shared.with(|st| {
            let node = &mut st.nodes[n as usize];
            node.tasks.retain(|t| !t.is_finished());
            node.tasks.push(task);
        });
        Ok(())
    }

    /// Runs `hook` when node `name` next crashes.
    pub fn on_crash(&self, name: &str, hook: impl FnOnce() + Send + 'static) -> Result<()> {
        let n = self.idx(name)?;
        self.shared
            .with(|st| st.nodes[n as usize].hooks.push(Box::new(hook)));
        Ok(())
    }

    /// The current provider of node `name`.
    pub fn provider(&self, name: &str) -> Result<SimProvider> {
        let n = self.idx(name)?;
        let inc = self.shared.with(|st| st.nodes[n as usize].inc);
        Ok(self.provider_for(n, inc))
    }

    /// The storage of node `name` (kept across crashes).
    pub fn storage(&self, name: &str) -> Result<MemStorage> {
        let n = self.idx(name)?;
        Ok(self.shared.with(|st| st.nodes[n as usize].storage.clone()))
    }

    /// The peer id of node `name`.
    pub fn peer_id(&self, name: &str) -> Result<PeerId> {
        let n = self.idx(name)?;
        Ok(self.shared.with(|st| st.nodes[n as usize].id))
    }

    /// The name of the node with peer id `id`.
    pub fn name_of(&self, id: &PeerId) -> Option<String> {
        self.shared.with(|st| {
            st.resolve(&p2p_core::PeerAddr::id_only(*id))
                .ok()
                .map(|n| st.nodes[n as usize].name.clone())
        })
    }

    /// Names of all nodes, in creation order.
    pub fn node_names(&self) -> Vec<String> {
        self.shared
            .with(|st| st.nodes.iter().map(|n| n.name.clone()).collect())
    }

    /// True while node `name` is up.
    pub fn is_up(&self, name: &str) -> bool {
        self.idx(name)
            .map(|n| self.shared.with(|st| st.nodes[n as usize].up))
            .unwrap_or(false)
    }

    /// Sets the link from `a` to `b` and from `b` to `a`.
    pub fn set_link(&self, a: &str, b: &str, spec: LinkSpec) -> Result<()> {
        let (x, y) = (self.idx(a)?, self.idx(b)?);
        self.shared.with(|st| {
            st.set_link(x, y, spec);
            st.set_link(y, x, spec);
        });
        Ok(())
    }

    /// Sets the link from `from` to `to` only.
    pub fn set_link_oneway(&self, from: &str, to: &str, spec: LinkSpec) -> Result<()> {
        let (x, y) = (self.idx(from)?, self.idx(to)?);
        self.shared.with(|st| st.set_link(x, y, spec));
        Ok(())
    }

    /// Changes the link used between nodes without a specific one.
    pub fn set_default_link(&self, spec: LinkSpec) {
        self.shared.with(|st| st.default_link = spec);
    }

    /// Changes a node's upload and download capacity (bytes per second;
    /// `None` is unlimited). Takes effect from the next segment.
    pub fn set_bandwidth(
        &self,
        name: &str,
        upload: Option<u64>,
        download: Option<u64>,
    ) -> Result<()> {
        let n = self.idx(name)?;
        self.shared.with(|st| {
            let cfg = &mut st.nodes[n as usize].cfg;
            cfg.upload = upload;
            cfg.download = download;
        });
        Ok(())
    }

    /// Cuts every path between a node in `side_a` and a node in `side_b`,
    /// both ways. Traffic in flight waits; connections that stay cut for
    /// the idle timeout end on both sides.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) -> Result<()> {
        self.partition_oneway(side_a, side_b)?;
        self.partition_oneway(side_b, side_a)
    }

    /// Cuts the paths from every node in `from` to every node in `to`;
    /// the other direction keeps working.
    pub fn partition_oneway(&self, from: &[&str], to: &[&str]) -> Result<()> {
        let from: Vec<NodeIdx> = from.iter().map(|n| self.idx(n)).collect::<Result<_>>()?;
        let to: Vec<NodeIdx> = to.iter().map(|n| self.idx(n)).collect::<Result<_>>()?;
        self.shared.with(|st| {
            for &a in &from {
                for &b in &to {
                    st.block(a, b);
                }
            }
        });
        Ok(())
    }

    /// Removes every partition: held traffic resumes and nodes re-announce
    /// themselves to discovery.
    pub fn heal(&self) {
        self.shared.with(|st| st.heal());
    }

    /// True when traffic from `from` to `to` is cut.
    pub fn is_partitioned(&self, from: &str, to: &str) -> bool {
        match (self.idx(from), self.idx(to)) {
            (Ok(a), Ok(b)) => self.shared.with(|st| st.is_blocked(a, b)),
            _ => false,
        }
    }

    /// Crashes node `name`: its tasks are aborted, its crash hooks run, its
    /// connections are reset (peers see the reset one latency later), and
    /// it stops answering. Its storage is kept.
    pub fn crash(&self, name: &str) -> Result<()> {
        let n = self.idx(name)?;
        self.shared
            .with(|st| st.take_down(n, &format!("node {name} crashed"), false));
        Ok(())
    }

    /// Brings a crashed (or closed) node back as a new incarnation: a new
    /// provider with the same key and storage, and its factory run again.
    pub fn restart(&self, name: &str) -> Result<SimProvider> {
        let n = self.idx(name)?;
        let up = self.shared.with(|st| st.nodes[n as usize].up);
        if up {
            self.crash(name)?;
        }
        Ok(self.start_incarnation(n))
    }

    /// [`restart`](Self::restart), at another address: the node is then
    /// dialed at `addr` (what its provider's `local_addr` says), and its old
    /// address reaches nobody, as when a host comes back with a new IP.
    /// The node keeps its name for this API.
    ///
    /// # Errors
    /// No node `name`; `addr` malformed or already another node's.
    pub fn restart_at(&self, name: &str, addr: &str) -> Result<SimProvider> {
        let n = self.idx(name)?;
        if addr.is_empty()
            || addr
                .chars()
                .any(|c| c.is_whitespace() || c == ',' || c == '@')
        {
            return Err(Error::invalid(
                "simulated address",
                format!("{addr:?}: use a non-empty address without spaces, ',' or '@'"),
            ));
        }
        self.shared.with(|st| {
            match st.addrs.get(addr).or(st.names.get(addr)) {
                Some(&other) if other != n => {
                    return Err(Error::AlreadyExists {
                        what: format!("a simulated node at {addr:?}"),
                    });
                }
                _ => {}
            }
            let old = std::mem::replace(&mut st.nodes[n as usize].addr, addr.to_string());
            st.addrs.remove(&old);
            st.addrs.insert(addr.to_string(), n);
            Ok(())
        })?;
        self.restart(name)
    }

    /// Hex SHA-256 over every delivery, loss, partition hold, connection
    /// event and crash so far, in order. Equal for equal seeds and
    /// workloads, in this process or another.
    pub fn trace_hash(&self) -> String {
        self.shared.with(|st| st.trace.hash())
    }

    /// Number of trace events so far.
    pub fn trace_len(&self) -> u64 {
        self.shared.with(|st| st.trace.count())
    }

    /// The last `n` trace events (at most 4096 are kept).
    pub fn trace_tail(&self, n: usize) -> Vec<TraceEvent> {
        self.shared.with(|st| st.trace.tail(n))
    }

    /// Totals since the network started.
    pub fn stats(&self) -> NetStats {
        self.shared.with(|st| st.stats)
    }

    /// Sets the WAN link of site `site` (nodes are put at a site by
    /// [`NodeConfig::site`]); a site without a link is unlimited, with no
    /// extra delay. Takes effect for the segments that come after.
    pub fn set_site_link(&self, site: &str, link: crate::link::SiteLink) {
        self.shared.with(|st| {
            let i = st.site_index(site);
            st.sites[i].link = link;
        });
    }

    /// The bytes that left site `site` over its WAN link (`sent`) and
    /// came in over it (`received`) so far.
    ///
    /// # Errors
    /// No node is at that site and no link was set for it.
    pub fn site_traffic(&self, site: &str) -> Result<NodeTraffic> {
        self.shared.with(|st| {
            st.sites
                .iter()
                .find(|s| s.name == site)
                .map(|s| s.traffic)
                .ok_or_else(|| Error::NotFound {
                    what: format!("simulated site {site:?}"),
                })
        })
    }

    /// What the node called `name` sent and received so far.
    pub fn traffic(&self, name: &str) -> Result<NodeTraffic> {
        let n = self.idx(name)?;
        Ok(self.shared.with(|st| st.traffic(n)))
    }

    /// Live stream directions and connections held by the engine (for leak
    /// checks in tests).
    pub fn live_objects(&self) -> (usize, usize) {
        self.shared.with(|st| (st.conn_count(), st.flow_count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_thread(paused: bool) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(paused)
            .build()
            .unwrap()
    }

    fn refusal(rt: &tokio::runtime::Runtime) -> String {
        rt.block_on(async { SimNet::builder(1).try_build() })
            .expect_err("the runtime must be refused")
            .to_string()
    }

    #[test]
    fn a_multi_thread_runtime_is_refused_with_the_fix() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let e = refusal(&rt);
        assert!(e.contains("multi-thread"), "{e}");
        assert!(e.contains("#[tokio::test(start_paused = true)]"), "{e}");
        assert!(
            e.contains("new_current_thread().enable_time().start_paused(true)"),
            "{e}"
        );
    }

    #[test]
    fn running_time_is_refused_with_the_fix() {
        let e = refusal(&current_thread(false));
        assert!(e.contains("time is not paused"), "{e}");
        assert!(e.contains("start_paused(true)"), "{e}");
    }

    #[test]
    fn no_runtime_is_refused() {
        let e = SimNet::builder(1).try_build().unwrap_err().to_string();
        assert!(e.contains("no tokio runtime"), "{e}");
    }

    #[test]
    #[should_panic(expected = "#[tokio::test(start_paused = true)]")]
    fn new_panics_on_a_multi_thread_runtime_naming_the_fix() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { SimNet::new(1) });
    }

    #[test]
    fn paused_time_is_accepted_also_far_ahead_of_real_time() {
        current_thread(true).block_on(async {
            let net = SimNet::new(1);
            tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
            let again = SimNet::builder(2).try_build();
            assert!(again.is_ok(), "{:?}", again.err());
            assert_eq!(net.seed(), 1);
        });
    }
}
