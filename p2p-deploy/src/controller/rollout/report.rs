//! What a rollout reports: progress events as it goes, one result per
//! node, and the report at the end.

use std::collections::BTreeMap;

use p2p_core::PeerId;
use serde::{Deserialize, Serialize};

/// How one node's deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
    /// Staged ([`RolloutPlan::stage`](super::RolloutPlan::stage)): every
    /// chunk held, nothing installed or activated.
    Staged,
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
#[non_exhaustive]
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
    /// Bytes of the release a node held before the deploy (staged
    /// earlier, or left by an interrupted transfer): what did not move.
    AlreadyHeld {
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
    /// The app's name.
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
    /// Completed with every node on the new version (or already on it),
    /// and at least one node: a rollout to no node is no success.
    pub fn is_success(&self) -> bool {
        self.halted.is_none()
            && !self.nodes.is_empty()
            && self.nodes.values().all(|r| !r.is_failure())
    }
}
