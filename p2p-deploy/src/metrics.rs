//! The agent's metrics, registered with
//! [`Agent::register_metrics`](crate::Agent::register_metrics) into an
//! embedder's [`Registry`] (see [`p2p_core::metrics`]; `p2pd` registers
//! them under `p2p_`):
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `chunk_bytes_total` | counter | `direction` (`received`, `sent`), `peer` (`seed`, `peer`) | release chunk bytes: verified ones from the seed (the controller) and from other nodes, and those served to other nodes |
//! | `chunks_verified_total` | counter | | chunks that arrived and matched their hash |
//! | `chunks_refused_total` | counter | `reason` (`corrupt`, `out_of_range`) | chunks that arrived and were thrown away |
//! | `chunk_duplicate_bytes_total` | counter | `peer` (`seed`, `peer`) | bytes of chunks that arrived when the node already held them (fetched twice), thrown away unchecked |
//! | `peers_banned` | gauge | | swarm peers banned now (bad chunks, failures) |
//! | `peer_bans_total` | counter | | bans so far |
//! | `deploys_total` | counter | `outcome` (`activated`, `already_active`, `rolled_back`, `refused`, `failed`) | deploy requests, by how they ended |
//! | `health_gate_duration_seconds` | histogram | `outcome` (`passed`, `failed`) | how long health gates took |
//! | `rollbacks_total` | counter | | activations that failed their gate (or that a restart of the agent interrupted) and went back |
//! | `app_restarts_total` | counter | `app` | restarts by the apps' restart policies |
//! | `app_state` | gauge | `app`, `version`, `state` | 1 for each app's current state (`running`, `healthy`, `backing_off`, `failed`...) |
//! | `chunk_store_bytes` | gauge | | bytes of release chunks held |
//! | `events_total` | counter | `type` | events recorded in the node's [event log](crate::events) |

use std::sync::Mutex;

use p2p_core::AppState;
use p2p_core::metrics::{Labels, Registry, label, slow_buckets};
use p2p_core::sync::lock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;

use crate::Agent;

/// A histogram family of slow steps.
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn slow_histogram() -> Histogram {
    Histogram::new(slow_buckets())
}

/// The agent's counters (see the [module docs](self)). Every agent has
/// one; it counts whether or not it is registered anywhere.
#[derive(Debug)]
pub struct DeployMetrics {
    pub(crate) chunk_bytes: Family<Labels, Counter>,
    pub(crate) chunks_verified: Counter,
    pub(crate) chunks_refused: Family<Labels, Counter>,
    pub(crate) duplicate_bytes: Family<Labels, Counter>,
    pub(crate) deploys: Family<Labels, Counter>,
    pub(crate) gate_seconds: Histograms,
    pub(crate) rollbacks: Counter,
    pub(crate) app_restarts: Family<Labels, Counter>,
    pub(crate) store_bytes: Gauge,
    pub(crate) events: Family<Labels, Counter>,
    /// Each app's (name, version, state), as last seen.
    pub(crate) apps: Mutex<Vec<(String, String, AppState)>>,
}

impl Default for DeployMetrics {
    fn default() -> Self {
        let m = DeployMetrics {
            chunk_bytes: Family::default(),
            chunks_verified: Counter::default(),
            chunks_refused: Family::default(),
            duplicate_bytes: Family::default(),
            deploys: Family::default(),
            gate_seconds: Family::new_with_constructor(slow_histogram),
            rollbacks: Counter::default(),
            app_restarts: Family::default(),
            store_bytes: Gauge::default(),
            events: Family::default(),
            apps: Mutex::default(),
        };
        // Every known label value from the start, at zero: a dashboard
        // or an alert finds the series before the first event.
        for direction in ["received", "sent"] {
            for peer in ["seed", "peer"] {
                let _ = m.chunk_bytes.get_or_create(&vec![
                    ("direction", direction.into()),
                    ("peer", peer.into()),
                ]);
            }
        }
        for reason in ["corrupt", "out_of_range"] {
            let _ = m.chunks_refused.get_or_create(&label("reason", reason));
        }
        for peer in ["seed", "peer"] {
            let _ = m.duplicate_bytes.get_or_create(&label("peer", peer));
        }
        for outcome in [
            "activated",
            "already_active",
            "rolled_back",
            "refused",
            "failed",
        ] {
            let _ = m.deploys.get_or_create(&label("outcome", outcome));
        }
        for outcome in ["passed", "failed"] {
            let _ = m.gate_seconds.get_or_create(&label("outcome", outcome));
        }
        m
    }
}

impl DeployMetrics {
    /// Chunk bytes that arrived verified (`from_seed`: from the
    /// controller) or were served to a peer.
    pub(crate) fn chunk(&self, direction: &'static str, from_seed: bool, bytes: usize) {
        let peer = if from_seed { "seed" } else { "peer" };
        self.chunk_bytes
            .get_or_create(&vec![
                ("direction", direction.into()),
                ("peer", peer.into()),
            ])
            .inc_by(bytes as u64);
    }

    /// A chunk of `bytes` that arrived (`from_seed`: from the
    /// controller) when the node already held it.
    pub(crate) fn duplicate(&self, from_seed: bool, bytes: usize) {
        let peer = if from_seed { "seed" } else { "peer" };
        self.duplicate_bytes
            .get_or_create(&label("peer", peer))
            .inc_by(bytes as u64);
    }

    /// Bytes of chunks that arrived twice so far, from the seed
    /// (`from_seed`) or from peers.
    pub fn duplicate_bytes(&self, from_seed: bool) -> u64 {
        let peer = if from_seed { "seed" } else { "peer" };
        self.duplicate_bytes
            .get_or_create(&label("peer", peer))
            .get()
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.chunks_refused
            .get_or_create(&label("reason", reason))
            .inc();
    }

    pub(crate) fn deploy(&self, outcome: &'static str) {
        self.deploys.get_or_create(&label("outcome", outcome)).inc();
    }

    /// Deploys by outcome so far (for tests and embedders' own views).
    pub fn deploys(&self, outcome: &str) -> u64 {
        self.deploys.get_or_create(&label("outcome", outcome)).get()
    }

    /// Chunks verified on arrival so far.
    pub fn chunks_verified(&self) -> u64 {
        self.chunks_verified.get()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "chunk_bytes",
            "Release chunk bytes: received (verified) from the seed or peers, sent to peers",
            self.chunk_bytes.clone(),
        );
        registry.register(
            "chunks_verified",
            "Chunks that arrived and matched their hash",
            self.chunks_verified.clone(),
        );
        registry.register(
            "chunks_refused",
            "Chunks that arrived and were thrown away, by reason",
            self.chunks_refused.clone(),
        );
        registry.register(
            "chunk_duplicate_bytes",
            "Bytes of chunks that arrived when the node already held them (fetched twice), from the seed or peers",
            self.duplicate_bytes.clone(),
        );
        registry.register(
            "deploys",
            "Deploy requests, by outcome",
            self.deploys.clone(),
        );
        registry.register(
            "health_gate_duration_seconds",
            "How long health gates took, by outcome",
            self.gate_seconds.clone(),
        );
        registry.register(
            "rollbacks",
            "Activations that failed their health gate, or that a restart interrupted, and went back",
            self.rollbacks.clone(),
        );
        registry.register(
            "app_restarts",
            "App restarts by their restart policies",
            self.app_restarts.clone(),
        );
        registry.register(
            "chunk_store_bytes",
            "Bytes of release chunks held",
            self.store_bytes.clone(),
        );
        registry.register(
            "events",
            "Events recorded in the node's event log, by type",
            self.events.clone(),
        );
    }
}

/// The `state` label of an app state.
fn state_name(s: AppState) -> &'static str {
    match s {
        AppState::Starting => "starting",
        AppState::Running => "running",
        AppState::Healthy => "healthy",
        AppState::Unhealthy => "unhealthy",
        AppState::BackingOff => "backing_off",
        AppState::Stopped => "stopped",
        AppState::Failed => "failed",
    }
}

/// What is read at every scrape: app states, bans.
struct AgentCollector {
    agent: Agent,
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentCollector({:?})", self.agent)
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let apps = lock(&self.agent.metrics().apps).clone();
        if !apps.is_empty() {
            let mut m = encoder.encode_descriptor(
                "app_state",
                "1 for each app's current state, by app and version",
                None,
                MetricType::Gauge,
            )?;
            for (app, version, state) in &apps {
                let labels: Labels = vec![
                    ("app", app.clone()),
                    ("version", version.clone()),
                    ("state", state_name(*state).into()),
                ];
                ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let rep = self.agent.reputation();
        let banned = rep
            .snapshot()
            .iter()
            .filter(|s| s.banned_ms.is_some())
            .count() as i64;
        let g = ConstGauge::new(banned);
        g.encode(encoder.encode_descriptor(
            "peers_banned",
            "Swarm peers banned now",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(rep.bans());
        c.encode(encoder.encode_descriptor(
            "peer_bans",
            "Swarm peers banned so far",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Agent {
    /// The agent's counters.
    pub fn metrics(&self) -> &DeployMetrics {
        &self.inner.metrics
    }

    /// Registers the agent's metrics (see [`crate::metrics`]) in
    /// `registry`; a registry that outlives the agent keeps it alive.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
        registry.register_collector(Box::new(AgentCollector {
            agent: self.clone(),
        }));
    }
}
