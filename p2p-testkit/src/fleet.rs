//! A simulated fleet: agents with labels, a controller, a signing key, and
//! the faults to throw at them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Ed25519Signer, PeerAddr, PeerId, Provider};
use p2p_deploy::{
    AgentConfig, AgentParts, BuildOptions, Controller, ControllerConfig, NodeInfo, Progress,
    Release, RolloutPlan, Selector, TrustStore, membership::MembershipConfig,
};
use p2p_sim::{LinkSpec, NodeConfig, Script, SimNet};
use tokio::sync::mpsc;

use crate::agent::{PartsHook, spawn_agent_with};
use crate::release::{RandomRelease, package};
use crate::rollout::Rollout;

/// The name of the node the fleet's controller runs on.
pub const CONTROLLER: &str = "ctl";

/// One agent of a fleet: its name, its labels and its network settings.
///
/// ```
/// use p2p_testkit::Node;
/// let edge = Node::new("edge-07").label("zone", "b").label("role", "web").mbit(20);
/// ```
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    labels: BTreeMap<String, String>,
    config: NodeConfig,
    join: Vec<String>,
}

impl Node {
    /// An agent called `name` (its simulator node name and the name it
    /// reports), without labels, at 100 Mbit/s up and down, with a public
    /// address.
    pub fn new(name: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            labels: BTreeMap::new(),
            config: NodeConfig::default().mbit(100),
            join: Vec::new(),
        }
    }

    /// Joins the fleet's membership through the agent called `name` (see
    /// [`FleetBuilder::membership`]); repeat for more bootstrap peers.
    pub fn join(mut self, name: impl Into<String>) -> Self {
        self.join.push(name.into());
        self
    }

    /// With label `key=value`, for selectors.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// With `mbit_per_s` up and down.
    pub fn mbit(mut self, mbit_per_s: u64) -> Self {
        self.config = self.config.mbit(mbit_per_s);
        self
    }

    /// Reached as `reach` says: public, or behind NAT through a relay
    /// (see [`FleetBuilder::relay`]).
    pub fn reach(mut self, reach: p2p_sim::Reach) -> Self {
        self.config = self.config.reach(reach);
        self
    }

    /// With these network settings (bandwidth, NAT, discovery LAN, key)
    /// instead.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }
}

type ConfigHook = Arc<dyn Fn(&mut AgentConfig) + Send + Sync>;

/// Builds a [`Fleet`]; from [`Fleet::builder`].
pub struct FleetBuilder {
    seed: u64,
    link: LinkSpec,
    signer: Option<Ed25519Signer>,
    relays: Vec<(String, NodeConfig)>,
    agents: Vec<Node>,
    agent_config: Option<ConfigHook>,
    agent_parts: Option<PartsHook>,
    controller: ControllerConfig,
    controller_node: NodeConfig,
    membership: Option<MembershipConfig>,
}

impl FleetBuilder {
    /// Every agent takes part in membership with `cfg`, its bootstrap
    /// peers being the agents named with [`Node::join`] (none: it waits
    /// to be found).
    pub fn membership(mut self, cfg: MembershipConfig) -> Self {
        self.membership = Some(cfg);
        self
    }

    /// Every link without a setting of its own: 10 ms one way, no jitter,
    /// no loss unless set here.
    pub fn link(mut self, link: LinkSpec) -> Self {
        self.link = link;
        self
    }

    /// The publisher key the agents trust and [`Fleet::release`] signs
    /// with; by default one made from the seed.
    pub fn signer(mut self, signer: Ed25519Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Adds an agent.
    pub fn node(mut self, node: Node) -> Self {
        self.agents.push(node);
        self
    }

    /// Adds `n` agents, the `i`th (from 0) being `node(i)`:
    /// `.nodes(200, |i| Node::new(format!("n{i:03}")).label("role", "web"))`.
    pub fn nodes(mut self, n: usize, node: impl FnMut(usize) -> Node) -> Self {
        self.agents.extend((0..n).map(node));
        self
    }

    /// Adds a relay: a plain node (no agent) that carries the signalling
    /// and relayed traffic of agents behind NAT that name it in their
    /// [`Reach`](p2p_sim::Reach), with `config`'s bandwidth.
    pub fn relay(mut self, name: impl Into<String>, config: NodeConfig) -> Self {
        self.relays.push((name.into(), config));
        self
    }

    /// Changes every agent's configuration (swarm settings, operators,
    /// timeouts, ...) after the kit has set its name, labels and trust:
    /// the closure sees `cfg.name`, to treat some nodes differently.
    pub fn agent_config(mut self, f: impl Fn(&mut AgentConfig) + Send + Sync + 'static) -> Self {
        self.agent_config = Some(Arc::new(f));
        self
    }

    /// Changes the parts each agent is composed of (another storage or
    /// installer), given the node's name and the parts the kit made: the
    /// simulator's provider, processes, storage and clock, and a
    /// [`MemInstaller`](p2p_deploy::MemInstaller). Runs again at every
    /// restart of the node.
    pub fn agent_parts(
        mut self,
        f: impl Fn(&str, AgentParts) -> AgentParts + Send + Sync + 'static,
    ) -> Self {
        self.agent_parts = Some(Arc::new(f));
        self
    }

    /// The controller's configuration; its `bootstrap` list gets every
    /// agent added.
    pub fn controller(mut self, cfg: ControllerConfig) -> Self {
        self.controller = cfg;
        self
    }

    /// The network settings of the controller's node (by default 100
    /// Mbit/s up and down, public).
    pub fn controller_node(mut self, config: NodeConfig) -> Self {
        self.controller_node = config;
        self
    }

    /// The network with the relays, then the agents (each running on its
    /// node from now on), then the controller on node [`CONTROLLER`].
    ///
    /// # Panics
    /// Outside a current-thread tokio runtime with paused time, when two
    /// nodes have the same name, or when an agent is named
    /// [`CONTROLLER`] (the controller's node).
    pub fn build(self) -> Fleet {
        if let Some(node) = self.agents.iter().find(|n| n.name == CONTROLLER) {
            panic!(
                "an agent is named {:?}, the name of the controller's node: pick another name",
                node.name
            );
        }
        let net = SimNet::builder(self.seed).default_link(self.link).build();
        let signer = self
            .signer
            .unwrap_or_else(|| Ed25519Signer::generate(&mut net.rng("publisher")));
        for (name, config) in self.relays {
            if let Err(e) = net.add_node_with(&name, config) {
                panic!("relay {name}: {e}");
            }
        }
        let trust = TrustStore::new([signer.key_id()]);
        let keys: BTreeMap<String, PeerId> = self
            .agents
            .iter()
            .map(|n| {
                let key = n.config.key.clone().unwrap_or_else(|| net.key_for(&n.name));
                (n.name.clone(), key.peer_id())
            })
            .collect();
        let mut agents = BTreeMap::new();
        let mut order = Vec::new();
        for node in self.agents {
            let mut cfg = AgentConfig::new(trust.clone());
            cfg.name = node.name.clone();
            cfg.labels = node.labels;
            if let Some(f) = &self.agent_config {
                f(&mut cfg);
            }
            agents.insert(node.name.clone(), cfg.labels.clone());
            let parts = self.agent_parts.clone();
            let membership = self.membership.clone().map(|mut m| {
                m.bootstrap = node
                    .join
                    .iter()
                    .map(|name| match keys.get(name) {
                        Some(id) => PeerAddr {
                            id: *id,
                            addrs: vec![name.clone()],
                        },
                        None => panic!(
                            "agent {} joins through {name:?}, which is no agent",
                            node.name
                        ),
                    })
                    .collect();
                m
            });
            if let Err(e) = spawn_agent_with(&net, &node.name, node.config, cfg, parts, membership)
            {
                panic!("agent {}: {e}", node.name);
            }
            order.push(node.name);
        }
        let controller = controller_on(
            &net,
            CONTROLLER,
            &self.controller_node,
            &self.controller,
            &order,
        );
        Fleet {
            net,
            signer,
            controller,
            link: self.link,
            agents,
            order,
            controller_cfg: self.controller,
            controller_node: self.controller_node,
        }
    }
}

/// A simulated fleet: agents running the real [`Agent`](p2p_deploy::Agent)
/// on named nodes of a [`SimNet`], each trusting one publisher key, and a
/// [`Controller`] on its own node ([`CONTROLLER`]) that knows them all.
///
/// Everything runs in virtual time on the current-thread tokio runtime
/// with paused time that built it: see the [crate docs](crate). Mistakes
/// in the test's own setup (an unknown node name, a selector that does
/// not parse) panic with a message, as a failed assertion does; what the
/// SDK does is returned.
pub struct Fleet {
    net: SimNet,
    signer: Ed25519Signer,
    controller: Controller,
    link: LinkSpec,
    // Labels of every agent, by name.
    agents: BTreeMap<String, BTreeMap<String, String>>,
    // Agent names in the order they were added.
    order: Vec<String>,
    controller_cfg: ControllerConfig,
    controller_node: NodeConfig,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Fleet(seed {}, {} agents)",
            self.net.seed(),
            self.agents.len()
        )
    }
}

/// Panics naming what failed: for the fleet's setup steps, where an error
/// is a mistake in the test.
fn or_panic<T>(r: p2p_core::Result<T>, what: impl std::fmt::Display) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl Fleet {
    /// A fleet built from `seed`: the same seed and the same test give the
    /// same run, event for event ([`Fleet::trace_hash`]).
    pub fn builder(seed: u64) -> FleetBuilder {
        FleetBuilder {
            seed,
            link: LinkSpec::latency(Duration::from_millis(10)),
            signer: None,
            relays: Vec::new(),
            agents: Vec::new(),
            agent_config: None,
            agent_parts: None,
            controller: ControllerConfig::default(),
            controller_node: NodeConfig::default().mbit(100),
            membership: None,
        }
    }

    /// The simulated network, for anything the fleet does not wrap
    /// (one-way partitions, link settings, traffic counters, ...).
    pub fn net(&self) -> &SimNet {
        &self.net
    }

    /// The controller on node [`CONTROLLER`].
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The publisher key every agent trusts.
    pub fn signer(&self) -> &Ed25519Signer {
        &self.signer
    }

    /// A second controller on a new node `name`, configured as the first
    /// (a controller that takes over after one crashed, say).
    ///
    /// # Panics
    /// When a node called `name` exists already.
    pub fn add_controller(&self, name: &str) -> Controller {
        controller_on(
            &self.net,
            name,
            &self.controller_node,
            &self.controller_cfg,
            &self.order,
        )
    }

    /// Every agent's name, in the order they were added.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// The agents whose labels match `selector` (`"zone=b"`,
    /// `"role in (web, api), tier!=canary"`; `""` matches all), in name
    /// order (byte order: pad numbers, `n007`).
    ///
    /// # Panics
    /// When `selector` does not parse.
    pub fn names(&self, selector: &str) -> Vec<String> {
        let sel = parse_selector(selector);
        self.agents
            .iter()
            .filter(|(_, labels)| sel.matches(labels))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The peer id of node `name`.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn peer_id(&self, name: &str) -> PeerId {
        or_panic(self.net.peer_id(name), name)
    }

    /// `size` random bytes, signed by the fleet's publisher, as version
    /// `version` of app `name` ([`RandomRelease`] says more, and makes
    /// releases with a `[health]` table or another chunk size).
    ///
    /// # Panics
    /// When `name` or `version` is not valid in a manifest.
    pub fn release(&self, name: &str, version: &str, size: usize) -> Arc<Release> {
        RandomRelease::new(name, version, size).sign(&self.signer)
    }

    /// The directory `dir` (holding a `p2p.toml`) packaged as `p2pctl
    /// package` does and signed by the fleet's publisher, with the
    /// network's clock as creation time (see [`package`]).
    ///
    /// # Errors
    /// As [`package`].
    pub async fn package(&self, dir: &Path) -> p2p_core::Result<Arc<Release>> {
        let tmp = tempfile::tempdir().map_err(|e| p2p_core::Error::io("a temporary dir", e))?;
        let out = tmp.path().join("release.p2p");
        let clock = self.net.clock();
        package(dir, &out, &self.signer, &clock, BuildOptions::default()).await
    }

    /// Sets how simulated processes of `app` at `version` behave on every
    /// node ([`Script::never_healthy`], [`Script::exits_after`], ...); the
    /// default is [`Script::healthy`]. Takes effect for processes started
    /// from now on.
    pub fn script(&self, app: &str, version: &str, script: Script) {
        self.net.scripts().set(app, version, script);
    }

    /// The agents matching `selector` that answer the controller, as the
    /// controller sees them, in name order: what a rollout to `selector`
    /// targets.
    ///
    /// # Panics
    /// When `selector` does not parse.
    pub async fn select(&self, selector: &str) -> Vec<NodeInfo> {
        let sel = parse_selector(selector);
        let views = self.controller().nodes().await;
        let mut targets = or_panic(
            Controller::select(&views, Some(&sel), &[]),
            format_args!("selecting {selector:?}"),
        );
        targets.sort_by_key(|t| self.name_of(&t.id));
        targets
    }

    /// Rolls `release` out to the agents matching `selector` by `plan`,
    /// through the fleet's controller, taking the targets in name order;
    /// returns when the rollout is over.
    ///
    /// # Panics
    /// When `selector` does not parse or matches no agent's labels.
    pub async fn deploy(
        &self,
        release: &Arc<Release>,
        selector: &str,
        plan: &RolloutPlan,
    ) -> Rollout {
        self.deploy_with(release, selector, plan, |_| {}).await
    }

    /// [`Fleet::deploy`], calling `on_progress` with each progress event
    /// as it comes: to count events, or to inject a fault at a given
    /// point of the rollout (when batch 3 begins, when a node starts its
    /// health gate, ...) with the fleet's own methods.
    ///
    /// # Panics
    /// As [`Fleet::deploy`].
    pub async fn deploy_with(
        &self,
        release: &Arc<Release>,
        selector: &str,
        plan: &RolloutPlan,
        mut on_progress: impl FnMut(&Progress),
    ) -> Rollout {
        let matching = self.names(selector);
        assert!(
            !matching.is_empty(),
            "no agent's labels match the selector {selector:?}"
        );
        let targets = self.select(selector).await;
        let names: BTreeMap<PeerId, String> = targets
            .iter()
            .map(|t| (t.id, self.name_of(&t.id)))
            .collect();
        let unanswered = matching
            .into_iter()
            .filter(|n| !names.values().any(|t| t == n))
            .collect();
        let order = targets.iter().map(|t| self.name_of(&t.id)).collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let run = self
            .controller()
            .deploy(release.clone(), &targets, plan, tx);
        let watch = async {
            while let Some(p) = rx.recv().await {
                on_progress(&p);
            }
        };
        let (report, ()) = tokio::join!(run, watch);
        Rollout::new(report, order, unanswered, names)
    }

    /// The fleet's name of the node with peer id `id`, else its short id.
    pub fn name_of(&self, id: &PeerId) -> String {
        self.net.name_of(id).unwrap_or_else(|| id.short())
    }

    /// What every agent says about itself when the controller asks, by
    /// name; the error says why one could not be asked.
    pub async fn infos(&self) -> BTreeMap<String, Result<NodeInfo, String>> {
        self.controller()
            .nodes()
            .await
            .into_iter()
            .map(|v| (self.name_of(&v.addr.id), v.info))
            .filter(|(name, _)| self.agents.contains_key(name))
            .collect()
    }

    /// The version of `app` that each agent answering the controller
    /// runs, by name: the version it keeps active, when its runtime
    /// reports a live process of that version; `None` when the app is not
    /// installed, not running, or a process of another version runs.
    /// Agents that do not answer are left out: compare the count with
    /// [`agents`](Self::agents) when every node should answer.
    pub async fn running(&self, app: &str) -> BTreeMap<String, Option<String>> {
        self.infos()
            .await
            .into_iter()
            .filter_map(|(name, info)| Some((name, running_version(&info.ok()?, app))))
            .collect()
    }

    /// Cuts every path between the nodes in `side_a` and those in
    /// `side_b`, both ways, until [`Fleet::heal`]. Traffic in flight
    /// waits; a connection cut for the idle timeout (30 s) ends.
    ///
    /// # Panics
    /// When a name is no node's.
    pub fn partition(&self, side_a: &[impl AsRef<str>], side_b: &[impl AsRef<str>]) {
        let a: Vec<&str> = side_a.iter().map(AsRef::as_ref).collect();
        let b: Vec<&str> = side_b.iter().map(AsRef::as_ref).collect();
        or_panic(self.net.partition(&a, &b), "partition");
    }

    /// Cuts `nodes` off from every other node there is now (agents,
    /// controllers and relays), both ways, until [`Fleet::heal`]:
    /// `fleet.cut_off(&fleet.names("zone=b"))`. They still reach each
    /// other.
    ///
    /// # Panics
    /// When a name is no node's.
    pub fn cut_off(&self, nodes: &[impl AsRef<str>]) {
        let cut: BTreeSet<&str> = nodes.iter().map(AsRef::as_ref).collect();
        let rest: Vec<String> = self
            .net
            .node_names()
            .into_iter()
            .filter(|n| !cut.contains(n.as_str()))
            .collect();
        self.partition(nodes, &rest);
    }

    /// Removes every partition: held traffic resumes.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// Crashes node `name` as a machine crashes: its agent and simulated
    /// processes die, its connections reset; its storage is kept.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn crash(&self, name: &str) {
        or_panic(self.net.crash(name), format_args!("crashing {name}"));
    }

    /// Brings node `name` back (crashing it first if it is up): a fresh
    /// agent on the same key and storage, as after a reboot.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn restart(&self, name: &str) {
        or_panic(self.net.restart(name), format_args!("restarting {name}"));
    }

    /// [`Fleet::restart`], the node coming back at another address `addr`
    /// (its old one then reaches nobody), as a host with a new IP.
    ///
    /// # Panics
    /// When there is no such node, or `addr` is another node's.
    pub fn restart_at(&self, name: &str, addr: &str) {
        or_panic(
            self.net.restart_at(name, addr),
            format_args!("restarting {name} at {addr}"),
        );
    }

    /// Sets the loss of every link without a setting of its own to `loss`
    /// (0 to 0.9): lost segments are sent again, so loss shows as delay,
    /// never as missing data.
    pub fn loss(&self, loss: f64) {
        self.net.set_default_link(self.link.with_loss(loss));
    }

    /// Lets the fleet run for `d` of virtual time (with paused time, an
    /// idle minute passes in microseconds).
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Virtual time since the fleet was built.
    pub fn now(&self) -> Duration {
        self.net.now()
    }

    /// The hash of every delivery, loss, partition hold, connection event
    /// and crash so far: the same for the same seed and the same test, in
    /// any process.
    pub fn trace_hash(&self) -> String {
        self.net.trace_hash()
    }
}

/// A controller configured as `cfg` on a new node `name`, with every
/// agent in `agents` added to its bootstrap list.
fn controller_on(
    net: &SimNet,
    name: &str,
    node: &NodeConfig,
    cfg: &ControllerConfig,
    agents: &[String],
) -> Controller {
    let provider = or_panic(
        net.add_node_with(name, node.clone()),
        format_args!("controller {name}"),
    );
    let mut cfg = cfg.clone();
    cfg.bootstrap.extend(
        agents
            .iter()
            .map(|n| or_panic(net.provider(n), n).local_addr()),
    );
    Controller::new(Arc::new(provider), cfg)
}

fn parse_selector(selector: &str) -> Selector {
    selector
        .parse()
        .unwrap_or_else(|e| panic!("selector {selector:?}: {e}"))
}

fn running_version(info: &NodeInfo, app: &str) -> Option<String> {
    let a = info.apps.iter().find(|a| a.name == app)?;
    let active = a.active.as_ref()?.to_string();
    let status = a.status.as_ref()?;
    (status.state.is_live() && status.version == active).then_some(active)
}
