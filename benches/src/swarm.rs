//! The swarm scenario on the simulator, shared by `bench-report swarm`
//! and the swarm tests: a controller and N agents, one release, and the
//! time until every agent holds all of it, against the Kumar-Ross bound.
//!
//! Kumar and Ross ("Peer-Assisted File Distribution: The Minimum
//! Distribution Time", 2006): giving a file of F bits to N peers takes at
//! least max(F/u_s, F/d_min, N F / (u_s + sum of u_i)), with u_s the
//! server's upload rate, u_i the peers' and d_min the slowest download.
//!
//! Agents run the real [`Agent`] on [`SimRuntime`](p2p_sim::SimRuntime)
//! with a storage that shares chunk bytes between nodes (chunks are
//! content-addressed and verified before they are stored, so the bytes
//! under a key are the same on every node) and an installer that records
//! versions without reading them, so that the memory and CPU of a
//! 500-node run go to the transfer being measured.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::{Ed25519Signer, Result, Storage};
use p2p_deploy::chunks::ChunkStore;
use p2p_deploy::{
    AgentParts, Controller, ControllerConfig, Descriptor, Installer, NodeInfo, Plan, Progress,
    Release, RolloutPlan, RolloutReport, SwarmConfig,
};
use p2p_sim::{LinkSpec, NodeConfig, SimNet};
use p2p_testkit::{Fleet, Node, RandomRelease};
use tokio::sync::mpsc;

/// One swarm run.
#[derive(Debug, Clone)]
pub struct SwarmScenario {
    /// Targets (the controller comes on top).
    pub nodes: usize,
    /// Release size in bytes.
    pub size: usize,
    /// Chunk size.
    pub chunk_size: u32,
    /// Every node's upload and download, Mbit/s (the controller's too).
    pub mbit: u64,
    /// One-way link latency.
    pub latency: Duration,
    /// Packet loss on every link, 0 to 1.
    pub loss: f64,
    /// Share of targets that are slow, 0 to 1.
    pub slow_share: f64,
    /// How many times slower they are.
    pub slow_factor: u64,
    /// Targets fetch from each other; off, from the controller only.
    pub swarm: bool,
    /// Simulator seed.
    pub seed: u64,
    /// The agents' swarm settings.
    pub agent: SwarmConfig,
    /// The controller's [`ControllerConfig::descriptor_copies`].
    pub descriptor_copies: usize,
    /// Records [`SwarmOutcome::traffic`] at this interval; `None`: not.
    pub sample_every: Option<Duration>,
    /// Targets spread over sites behind WAN links, the controller at a
    /// site of its own; `None`: one flat network.
    pub sites: Option<Sites>,
    /// The targets first get version 1.0.0 (not measured), and the
    /// release measured is a 2.0.0 whose chunks differ from it in about
    /// this share (1.0: none shared, a full release); `None`: the targets
    /// hold nothing before.
    pub previous: Option<f64>,
}

/// A topology of sites: `count` sites of `nodes / count` targets each
/// (`s0`, `s1`, ...), every target at `mbit` inside its site, each site
/// and the controller's (`ctl-site`) behind a WAN link of `wan_mbit` up
/// and down with `wan_latency` one way.
#[derive(Debug, Clone)]
pub struct Sites {
    /// Sites of targets.
    pub count: usize,
    /// Each site's WAN rate, Mbit/s each way.
    pub wan_mbit: u64,
    /// Each site's WAN one-way delay.
    pub wan_latency: Duration,
    /// Agents and controller use sites (membership, labels, the site
    /// rules); off: the same topology with a swarm blind to it.
    pub aware: bool,
}

impl Sites {
    /// The topology: 5 sites behind 50 Mbit/s, 10 ms.
    pub fn five(aware: bool) -> Self {
        Sites {
            count: 5,
            wan_mbit: 50,
            wan_latency: Duration::from_millis(10),
            aware,
        }
    }

    fn of(&self, i: usize, nodes: usize) -> String {
        let per = nodes.div_ceil(self.count).max(1);
        format!("s{}", i / per)
    }
}

/// The longest a deploy may take in these runs (virtual time).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

impl SwarmScenario {
    /// The scenario: 100 MB, 100 Mbit/s everywhere, 20 ms, in
    /// chunks of 256 KiB (with 1 MiB chunks each hop of the spread takes
    /// four times longer: 1.68x the bound at N=100 against 1.39x).
    pub fn new(nodes: usize) -> Self {
        SwarmScenario {
            nodes,
            size: 100_000_000,
            chunk_size: 256 << 10,
            mbit: 100,
            latency: Duration::from_millis(20),
            loss: 0.0,
            slow_share: 0.0,
            slow_factor: 10,
            swarm: true,
            seed: 2026,
            agent: SwarmConfig::default(),
            descriptor_copies: ControllerConfig::default().descriptor_copies,
            sample_every: None,
            sites: None,
            previous: None,
        }
    }

    /// `nodes` targets in five sites of 1 Gbit/s behind 50 Mbit/s WAN
    /// links, the controller at a sixth, 1 ms inside a site.
    pub fn five_sites(nodes: usize, size: usize, aware: bool) -> Self {
        SwarmScenario {
            size,
            mbit: 1000,
            latency: Duration::from_millis(1),
            sites: Some(Sites::five(aware)),
            ..SwarmScenario::new(nodes)
        }
    }

    fn slow(&self, i: usize) -> bool {
        (i as f64) < self.slow_share * self.nodes as f64
    }

    fn mbit_of(&self, i: usize) -> u64 {
        if self.slow(i) {
            (self.mbit / self.slow_factor).max(1)
        } else {
            self.mbit
        }
    }

    /// The Kumar-Ross minimum distribution time; with sites, the bound of
    /// that topology: every site's WAN downlink must carry the release
    /// once, and the controller's WAN uplink must send it once, so no
    /// schedule beats F / (WAN rate), nor the flat bound inside a site.
    pub fn bound(&self) -> Duration {
        let flat = self.flat_bound();
        match &self.sites {
            Some(s) => {
                let wan = self.size as f64 * 8.0 / (s.wan_mbit as f64 * 1e6);
                flat.max(Duration::from_secs_f64(wan))
            }
            None => flat,
        }
    }

    fn flat_bound(&self) -> Duration {
        let f = self.size as f64 * 8.0;
        let us = self.mbit as f64 * 1e6;
        let rates: Vec<f64> = (0..self.nodes)
            .map(|i| self.mbit_of(i) as f64 * 1e6)
            .collect();
        let dmin = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let sum: f64 = rates.iter().sum();
        let t = (f / us)
            .max(f / dmin)
            .max(self.nodes as f64 * f / (us + sum));
        Duration::from_secs_f64(t)
    }

    /// Runs it on a fresh current-thread runtime with paused time,
    /// measuring the wall time it takes.
    #[allow(clippy::disallowed_methods)] // wall time, outside the simulation
    pub fn run(&self) -> SwarmOutcome {
        let wall = std::time::Instant::now();
        let mut outcome = p2p_testkit::block_on(self.run_async());
        outcome.wall = wall.elapsed();
        outcome
    }

    /// Runs it on the current runtime (which must have paused time).
    pub async fn run_async(&self) -> SwarmOutcome {
        let fleet = self.fleet();
        if let Some(s) = &self.sites {
            let link = p2p_sim::SiteLink::mbit(s.wan_mbit, s.wan_latency);
            for i in 0..s.count {
                fleet.net().set_site_link(&format!("s{i}"), link);
            }
            fleet.net().set_site_link("ctl-site", link);
            if s.aware {
                // Membership tells each node its peers' sites.
                fleet.run_for(Duration::from_secs(15)).await;
            }
        }
        let mut release = release(self.size, self.chunk_size, fleet.signer());
        let names: Vec<String> = fleet.agents().map(str::to_string).collect();
        let ctl = fleet.controller();
        let views = ctl.nodes().await;
        let targets =
            Controller::select(&views, Some(&"".parse().expect("selector")), &[]).expect("targets");
        assert_eq!(targets.len(), self.nodes, "every agent answers");
        if let Some(changed) = self.previous {
            let (report, _) = timed_deploy(ctl, release, &targets).await;
            assert!(report.is_success(), "the first version: {report:?}");
            release = RandomRelease::new("payload", "2.0.0", self.size)
                .chunk_size(self.chunk_size)
                .seed(self.size as u64)
                .changed(changed, 7)
                .sign(fleet.signer());
        }
        self.deploy(fleet.net(), &names, ctl, release, &targets)
            .await
    }

    /// Targets `t000`, `t001`, ... at their bandwidth, each storing chunk
    /// bytes in one place shared by all and recording versions without
    /// reading them, and a controller at the fleet's bandwidth.
    fn fleet(&self) -> Fleet {
        let shared = SharedChunks::default();
        let mut swarm = self.agent.clone();
        let aware = self.sites.as_ref().is_none_or(|s| s.aware);
        swarm.sites = aware;
        let mut builder = Fleet::builder(self.seed);
        if self.sites.as_ref().is_some_and(|s| s.aware) {
            builder = builder.membership(p2p_deploy::membership::MembershipConfig::default());
        }
        let mut ctl_node = NodeConfig::default().mbit(self.mbit);
        if self.sites.is_some() {
            ctl_node = ctl_node.at_site("ctl-site");
        }
        builder
            .link(LinkSpec::latency(self.latency).with_loss(self.loss))
            .signer(Ed25519Signer::from_seed(&[3; 32]))
            .nodes(self.nodes, |i| {
                let node = Node::new(format!("t{i:03}"));
                match &self.sites {
                    Some(s) => {
                        let site = s.of(i, self.nodes);
                        let node = node
                            .config(NodeConfig::default().mbit(self.mbit_of(i)).at_site(&site))
                            .label("site", &site);
                        if s.aware && i > 0 {
                            node.join("t000")
                        } else {
                            node
                        }
                    }
                    None => node.mbit(self.mbit_of(i)),
                }
            })
            .agent_config(move |cfg| {
                cfg.swarm = swarm.clone();
                cfg.max_request_timeout = DEPLOY_TIMEOUT;
            })
            .agent_parts(move |_, parts| AgentParts {
                storage: Arc::new(shared.storage(parts.storage)),
                installer: Arc::new(RecordOnly),
                ..parts
            })
            .controller_node(ctl_node)
            .controller(ControllerConfig {
                swarm: self.swarm,
                sites: aware,
                seed: self.seed,
                descriptor_copies: self.descriptor_copies,
                // Every byte from the controller to 500 targets takes
                // 500 x 8 s: past the default 30 minutes.
                deploy_timeout: DEPLOY_TIMEOUT,
                ..ControllerConfig::default()
            })
            .build()
    }

    async fn deploy(
        &self,
        net: &SimNet,
        names: &[String],
        ctl: &Controller,
        release: Arc<Release>,
        targets: &[NodeInfo],
    ) -> SwarmOutcome {
        let stop = tokio::sync::Notify::new();
        let sample = async {
            let mut traffic = Vec::new();
            let Some(every) = self.sample_every else {
                return traffic;
            };
            let begun = tokio::time::Instant::now();
            loop {
                let each: Vec<p2p_sim::NodeTraffic> = names
                    .iter()
                    .map(|n| net.traffic(n).unwrap_or_default())
                    .collect();
                traffic.push(TrafficSample {
                    at: begun.elapsed(),
                    seed_sent: net.traffic("ctl").map_or(0, |t| t.sent),
                    targets: each,
                });
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.notified() => return traffic,
                }
            }
        };
        let deploy = async {
            let out = timed_deploy(ctl, release, targets).await;
            stop.notify_one();
            out
        };
        let wan_before = self.wan_down(net);
        let ((report, done), traffic) = tokio::join!(deploy, sample);
        let wan_after = self.wan_down(net);
        SwarmOutcome {
            site_wan_down: wan_after
                .into_iter()
                .zip(wan_before)
                .map(|((site, after), (_, before))| (site, after - before))
                .collect(),
            traffic,
            finished: {
                let mut t: Vec<Duration> = done.values().copied().collect();
                t.sort();
                t
            },
            bound: self.bound(),
            wall: Duration::ZERO,
            trace_hash: net.trace_hash(),
            report,
        }
    }
}

impl SwarmScenario {
    /// Bytes that came in over each target site's WAN link so far.
    fn wan_down(&self, net: &SimNet) -> Vec<(String, u64)> {
        let Some(s) = &self.sites else {
            return Vec::new();
        };
        (0..s.count)
            .map(|i| {
                let site = format!("s{i}");
                let got = net.site_traffic(&site).map_or(0, |t| t.received);
                (site, got)
            })
            .collect()
    }
}

/// Deploys `release` to `targets` with [`Plan::All`] and returns the
/// report with, for each target that got the whole release, the time
/// from the start of the deploy until it reported holding all of it
/// (tokio time: virtual in the simulator, wall time on a real runtime).
pub(crate) async fn timed_deploy(
    ctl: &Controller,
    release: Arc<Release>,
    targets: &[NodeInfo],
) -> (RolloutReport, BTreeMap<p2p_core::PeerId, Duration>) {
    let begun = tokio::time::Instant::now();
    let (tx, mut rx) = mpsc::channel(1024);
    let watch = async move {
        let mut done: BTreeMap<p2p_core::PeerId, Duration> = BTreeMap::new();
        while let Some(p) = rx.recv().await {
            if let Progress::Transfer { node, bytes, total } = p
                && bytes == total
            {
                done.entry(node).or_insert_with(|| begun.elapsed());
            }
        }
        done
    };
    let plan = RolloutPlan {
        plan: Plan::All,
        ..RolloutPlan::default()
    };
    tokio::join!(ctl.deploy(release, targets, &plan, tx), watch)
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct SwarmOutcome {
    /// When each target that got all of it did, earliest first.
    pub finished: Vec<Duration>,
    /// The Kumar-Ross bound.
    pub bound: Duration,
    /// Wall time of the run (set by [`SwarmScenario::run`]; zero from
    /// [`SwarmScenario::run_async`]).
    pub wall: std::time::Duration,
    /// The simulator's trace hash.
    pub trace_hash: String,
    /// The rollout's report.
    pub report: RolloutReport,
    /// Traffic over time, if [`SwarmScenario::sample_every`] asked for it.
    pub traffic: Vec<TrafficSample>,
    /// With sites: the bytes each target site's WAN downlink carried
    /// during the deploy.
    pub site_wan_down: Vec<(String, u64)>,
}

/// The traffic of a run at one moment since the deploy began.
#[derive(Debug, Clone)]
pub struct TrafficSample {
    /// Since the deploy began.
    pub at: Duration,
    /// Bytes the controller's uplink sent so far.
    pub seed_sent: u64,
    /// Each target's traffic so far, in the order the targets were made.
    pub targets: Vec<p2p_sim::NodeTraffic>,
}

impl TrafficSample {
    /// Bytes all the targets' downlinks carried so far.
    pub fn targets_received(&self) -> u64 {
        self.targets.iter().map(|t| t.received).sum()
    }
}

impl SwarmOutcome {
    /// Virtual time until the last target held the whole release.
    pub fn completion(&self) -> Duration {
        self.finished.last().copied().unwrap_or_default()
    }

    /// Targets that got all of it.
    pub fn complete(&self) -> usize {
        self.finished.len()
    }

    /// Completion over the bound.
    pub fn ratio(&self) -> f64 {
        self.completion().as_secs_f64() / self.bound.as_secs_f64()
    }
}

/// A signed release of `size` incompressible bytes (no archive format:
/// the installer below never unpacks it), version `1.0.0`.
pub fn release(size: usize, chunk_size: u32, signer: &Ed25519Signer) -> Arc<Release> {
    release_of(size, chunk_size, signer, "1.0.0", size as u64)
}

/// Like [`release`], at `version` (such as `"2.0.0"`), with the bytes drawn from an
/// RNG seeded with `seed`: releases with different seeds share no chunk.
pub fn release_of(
    size: usize,
    chunk_size: u32,
    signer: &Ed25519Signer,
    version: &str,
    seed: u64,
) -> Arc<Release> {
    RandomRelease::new("payload", version, size)
        .chunk_size(chunk_size)
        .seed(seed)
        .sign(signer)
}

/// Storage whose `chunks/` values are shared by every node that stores
/// them (same key, same verified bytes); everything else is the node's.
#[derive(Clone, Default)]
struct SharedChunks {
    chunks: Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>,
}

impl SharedChunks {
    fn storage(&self, own: Arc<dyn Storage>) -> NodeStorage {
        NodeStorage {
            own,
            shared: self.chunks.clone(),
            held: Arc::new(Mutex::new(std::collections::BTreeSet::new())),
        }
    }
}

struct NodeStorage {
    own: Arc<dyn Storage>,
    shared: Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>,
    held: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Storage for NodeStorage {
    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        if key.starts_with("chunks/") {
            guard(&self.shared)
                .entry(key.to_string())
                .or_insert_with(|| Arc::new(value.to_vec()));
            guard(&self.held).insert(key.to_string());
            return Ok(());
        }
        self.own.put(key, value).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if key.starts_with("chunks/") {
            if !guard(&self.held).contains(key) {
                return Ok(None);
            }
            return Ok(guard(&self.shared).get(key).map(|v| v.to_vec()));
        }
        self.own.get(key).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        if key.starts_with("chunks/") {
            return Ok(guard(&self.held).remove(key));
        }
        self.own.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = self.own.list(prefix).await?;
        out.extend(
            guard(&self.held)
                .iter()
                .filter(|k| k.starts_with(prefix))
                .cloned(),
        );
        out.sort();
        Ok(out)
    }
}

/// Records versions as installed without reading their bytes (they were
/// verified chunk by chunk on arrival). Shared with the `swarm-netns`
/// group.
pub(crate) struct RecordOnly;

#[async_trait]
impl Installer for RecordOnly {
    async fn install(&self, d: &Descriptor, chunks: &ChunkStore) -> Result<std::path::PathBuf> {
        let missing = chunks.missing(d).await?;
        if !missing.is_empty() {
            return Err(p2p_core::Error::NotFound {
                what: format!("{} chunks", missing.len()),
            });
        }
        Ok(self.workdir(&d.manifest.name, &d.manifest.version))
    }

    fn workdir(&self, name: &str, version: &semver::Version) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/bench/{name}/{version}"))
    }

    async fn uninstall(&self, _: &str, _: &semver::Version) -> Result<()> {
        Ok(())
    }
}
