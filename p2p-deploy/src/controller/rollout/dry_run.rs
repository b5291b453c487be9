//! A rollout's dry run: the batches a plan makes of the targets, and what
//! each target would do with the release (its [`DeployPlan`]), asked of
//! every target and changing nothing.

use std::sync::Arc;

use p2p_core::{Error, PeerId};
use serde::Serialize;

use super::plan::batches;
use super::{Plan, RolloutPlan};
use crate::controller::Controller;
use crate::package::Release;
use crate::proto::{Call, DeployPlan, EVENTS_VERSION, NodeInfo, Reply, Request, unexpected};

/// One target of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedNode {
    /// The node.
    pub node: PeerId,
    /// Its name (or short id).
    pub name: String,
    /// What it would do; an error when it could not be asked (it did not
    /// answer, or runs a p2pd too old to plan).
    pub plan: Result<DeployPlan, String>,
}

impl PlannedNode {
    /// Whether the deploy would fail on this node: refused, or not
    /// reachable.
    pub fn would_fail(&self) -> bool {
        match &self.plan {
            Ok(p) => p.refusal.is_some(),
            Err(_) => true,
        }
    }
}

/// What a rollout would do, batch by batch.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The targets in the batches the plan makes, in order.
    pub batches: Vec<Vec<PlannedNode>>,
    /// Failures the plan tolerates.
    pub failures_allowed: usize,
    /// The batch (counted from 0) after which the rollout would halt,
    /// given the refusals foreseen; `None`: it would run to the end.
    pub halts_after: Option<usize>,
    /// Why it would halt, as the rollout would say it.
    pub halt_reason: Option<String>,
}

impl DryRun {
    /// Targets that would fail.
    pub fn failing(&self) -> usize {
        self.batches
            .iter()
            .flatten()
            .filter(|n| n.would_fail())
            .count()
    }

    /// Bytes the targets would fetch in all (from the controller and
    /// from each other).
    pub fn bytes_to_move(&self) -> u64 {
        self.batches
            .iter()
            .flatten()
            .filter_map(|n| n.plan.as_ref().ok())
            .filter(|p| p.refusal.is_none())
            .map(|p| p.missing_bytes)
            .sum()
    }
}

impl Controller {
    /// What deploying `release` to `targets` by `plan` would do: the
    /// batches, and each target's [`DeployPlan`] (asked of every target
    /// at once; nothing changes anywhere), and where the rollout would
    /// halt given the refusals foreseen. A target that does not answer
    /// counts as one that would fail, as it would in the deploy.
    pub async fn dry_run(
        &self,
        release: Arc<Release>,
        targets: &[NodeInfo],
        plan: &RolloutPlan,
    ) -> DryRun {
        let asked = futures::future::join_all(targets.iter().map(|t| {
            let release = release.clone();
            async move { (t.id, self.plan_one(&release, t).await) }
        }))
        .await;
        let mut plans: std::collections::BTreeMap<PeerId, Result<DeployPlan, String>> =
            asked.into_iter().collect();
        let limit = plan.max_failures.of(targets.len());
        let mut failures = 0;
        let mut halts_after = None;
        let mut halt_reason = None;
        let mut failed_names: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for (index, batch) in batches(targets, plan.plan).into_iter().enumerate() {
            let nodes: Vec<PlannedNode> = batch
                .iter()
                .map(|t| PlannedNode {
                    node: t.id,
                    name: t.label(),
                    plan: plans
                        .remove(&t.id)
                        .unwrap_or_else(|| Err("not asked".into())),
                })
                .collect();
            let failed = nodes.iter().filter(|n| n.would_fail()).count();
            if halts_after.is_none() {
                failures += failed;
                failed_names.extend(
                    nodes
                        .iter()
                        .filter(|n| n.would_fail())
                        .map(|n| n.name.clone()),
                );
                let canary_failed =
                    matches!(plan.plan, Plan::Canary { .. }) && index == 0 && failed > 0;
                if canary_failed || failures > limit {
                    halts_after = Some(index);
                    let names = failed_names.join(", ");
                    halt_reason = Some(if canary_failed {
                        format!("{failed} canary node(s) would fail: {names}")
                    } else {
                        format!(
                            "{failures} node(s) would fail, more than the {limit} allowed: {names}"
                        )
                    });
                }
            }
            out.push(nodes);
        }
        DryRun {
            batches: out,
            failures_allowed: limit,
            halts_after,
            halt_reason,
        }
    }

    async fn plan_one(&self, release: &Release, t: &NodeInfo) -> Result<DeployPlan, String> {
        let who = t.label();
        let request = Request::Plan {
            descriptor: release.descriptor_bytes.clone(),
            signatures: release.signatures.clone(),
        };
        let ask = async {
            let conn = self.connect(&t.addr).await?;
            let mut call = Call::open(&*conn, request, self.cfg.request_timeout).await?;
            if call.version() < EVENTS_VERSION {
                return Err(Error::NotSupported {
                    what: format!(
                        "node {who} runs an older p2pd (protocol version {}) that cannot plan a deploy",
                        call.version()
                    ),
                });
            }
            loop {
                match call.next().await? {
                    crate::proto::Frame::Done(Reply::Plan(p)) => return Ok(*p),
                    crate::proto::Frame::Alive => continue,
                    other => return Err(unexpected(&t.id, "a deploy plan", &other)),
                }
            }
        };
        ask.await.map_err(|e| match e {
            Error::NotSupported { what } => what,
            e => format!("did not answer: {e}"),
        })
    }
}
