//! Rollout plans: how targets are batched, and how many failures a
//! rollout tolerates before it halts.

use serde::{Deserialize, Serialize};

use super::super::ControllerConfig;
use crate::proto::{ActivateOptions, NodeInfo};

/// How many nodes per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchSize {
    /// A number of nodes (at least 1).
    Nodes(usize),
    /// A percentage of the targets (rounded up, at least 1 node).
    Percent(u8),
}

impl BatchSize {
    pub(super) fn of(self, total: usize) -> usize {
        match self {
            BatchSize::Nodes(n) => n.max(1),
            BatchSize::Percent(p) => (total * usize::from(p.min(100))).div_ceil(100).max(1),
        }
    }
}

/// How targets are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum FailureLimit {
    /// At most this many failed nodes.
    Count(usize),
    /// At most this percentage of the targets (rounded down).
    Percent(u8),
}

impl FailureLimit {
    pub(super) fn of(self, total: usize) -> usize {
        match self {
            FailureLimit::Count(n) => n,
            FailureLimit::Percent(p) => total * usize::from(p.min(100)) / 100,
        }
    }
}

/// A rollout's plan and policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// How targets are batched: all at once, rolling, or canary first.
    pub plan: Plan,
    /// Failures tolerated; one more halts the rollout. Default 0.
    pub max_failures: FailureLimit,
    /// Roll back the nodes this rollout changed when it halts. Default on.
    pub rollback_on_halt: bool,
    /// How each node activates the release.
    pub options: ActivateOptions,
    /// Only stage the release: each target verifies it and fetches it
    /// into its chunk store (from the controller and the swarm) without
    /// installing or activating it; a later deploy of it then moves
    /// nothing. Results are [`NodeResult::Staged`](super::NodeResult::Staged).
    pub stage: bool,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            plan: Plan::All,
            max_failures: FailureLimit::Count(0),
            rollback_on_halt: true,
            options: ActivateOptions::default(),
            stage: false,
        }
    }
}

/// How many of a batch's first targets are sent the descriptor itself
/// ([`ControllerConfig::descriptor_copies`] less the `holders` from
/// earlier batches); the rest get it by reference from those.
pub(super) fn sent_whole(cfg: &ControllerConfig, holders: usize, batch: usize) -> usize {
    if !cfg.swarm {
        return batch;
    }
    cfg.descriptor_copies
        .max(1)
        .saturating_sub(holders)
        .min(batch)
}

/// Splits targets into batches by plan.
pub(super) fn batches(targets: &[NodeInfo], plan: Plan) -> Vec<Vec<NodeInfo>> {
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
