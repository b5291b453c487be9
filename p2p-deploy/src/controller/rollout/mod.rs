//! Rollouts: batches by plan, a deploy per target with progress, failure
//! limits, halting, and the rollback of the nodes a halted rollout had
//! changed.

mod dry_run;
mod plan;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;

use p2p_core::sync::lock;
use p2p_core::{PeerAddr, PeerId};
use tokio::sync::mpsc;

use super::Controller;
use super::chunk_server::Serving;
use crate::package::Release;
use crate::proto::{
    ActivateOptions, Activation, Call, DeployEvent, Frame, NodeInfo, Reply, Request,
};
pub use dry_run::{DryRun, PlannedNode};
pub use plan::{BatchSize, FailureLimit, Plan, RolloutPlan};
use plan::{batches, sent_whole};
pub use report::{NodeResult, Progress, RolloutReport};

impl Controller {
    /// Deploys `release` to `targets` by `plan`, sending progress to
    /// `events`. The channel is bounded: the rollout-level events
    /// (selection, batches, each node's result, a halt, the end) wait
    /// while it is full; a node's own progress (transfer, install, health)
    /// is dropped when it is full, so that a slow reader never stalls the
    /// deploys themselves. Read it promptly (a few hundred events of room
    /// is plenty for a reader that keeps up), or drop the receiver:
    /// progress is then discarded. The report has every result either
    /// way.
    pub async fn deploy(
        &self,
        release: Arc<Release>,
        targets: &[NodeInfo],
        plan: &RolloutPlan,
        events: mpsc::Sender<Progress>,
    ) -> RolloutReport {
        let m = &release.descriptor.manifest;
        let _serving = Serving::new(&self.releases, &release, self.cfg.seed);
        // Targets' sites, from their `site` labels.
        let sites: BTreeMap<PeerId, String> = if self.cfg.sites {
            targets
                .iter()
                .filter_map(|t| Some((t.id, t.labels.get("site")?.clone())))
                .collect()
        } else {
            BTreeMap::new()
        };
        if !sites.is_empty() {
            _serving.set_sites(&sites);
        }
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
        emit(
            &events,
            Progress::Selected {
                nodes: targets.iter().map(|t| t.id).collect(),
            },
        )
        .await;
        if targets.is_empty() {
            // Nothing deployed is no success: a selector that matched no
            // node is a mistake the caller should hear about. (No batch
            // runs, and there is nothing to roll back.)
            let reason = "no target nodes: the selection matched no node";
            halt(&events, &mut report, reason.to_string()).await;
        }
        let total = targets.len();
        let limit = plan.max_failures.of(total);
        let batches = batches(targets, plan.plan);
        let mut failures = 0;
        let mut changed: Vec<(NodeInfo, Option<semver::Version>)> = Vec::new();
        // Nodes whose deploy ended in an error on our side (a timeout, a
        // lost connection): they may have activated anyway.
        let mut uncertain: Vec<NodeInfo> = Vec::new();
        let mut holders: Vec<PeerAddr> = Vec::new();
        // The nodes that failed so far, by name (else short id), for the
        // halt's reason.
        let mut failed_names: Vec<String> = Vec::new();
        for (index, batch) in batches.iter().enumerate() {
            emit(
                &events,
                Progress::Batch {
                    index,
                    nodes: batch.iter().map(|t| t.id).collect(),
                },
            )
            .await;
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
                let peers = self.swarm_peers(&candidates, t.id, &sites);
                let from = (i >= full).then(|| self.pick(&sources, t.id, 2));
                async move {
                    let (result, previous) = if plan.stage {
                        (self.stage_one(&release, t, peers, &events).await, None)
                    } else {
                        self.deploy_one(&release, t, &plan.options, from, peers, &events)
                            .await
                    };
                    // Reported as soon as this node is done, not when its
                    // batch is.
                    emit(
                        &events,
                        Progress::NodeDone {
                            node: t.id,
                            result: result.clone(),
                        },
                    )
                    .await;
                    (t, (result, previous))
                }
            }))
            .await;
            let mut batch_failed = 0;
            for (t, (result, previous)) in results {
                if result.is_failure() {
                    batch_failed += 1;
                    failed_names.push(t.label());
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
                let names = failed_names.join(", ");
                let reason = if canary_failed {
                    format!("{batch_failed} canary node(s) failed: {names}")
                } else {
                    format!("{failures} node(s) failed, more than the {limit} allowed: {names}")
                };
                halt(&events, &mut report, reason).await;
                break;
            }
        }
        // A stage changes no node's version: nothing to roll back.
        if report.halted.is_some() && plan.rollback_on_halt && !plan.stage {
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
                        emit(
                            &events,
                            Progress::RolledBack {
                                node: t.id,
                                to: Some(version),
                            },
                        )
                        .await;
                        report.rolled_back.push(t.id);
                    }
                    Ok(Reply::App(_)) if previous.is_none() => {
                        emit(
                            &events,
                            Progress::RolledBack {
                                node: t.id,
                                to: None,
                            },
                        )
                        .await;
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
                        tracing::warn!(node = %t.label(), %error, "rollback failed");
                        emit(
                            &events,
                            Progress::RollbackFailed {
                                node: t.id,
                                error: error.clone(),
                            },
                        )
                        .await;
                        report.rollback_failed.insert(t.id, error);
                    }
                }
            }
        }
        emit(&events, Progress::Done(report.clone())).await;
        report
    }

    /// Up to `swarm_peers` of `candidates` other than `node`, at random;
    /// for a node whose site is in `sites`, the candidates at its site (up
    /// to [`SITE_PEERS`]) and `remote_peers` at others instead.
    pub(super) fn swarm_peers(
        &self,
        candidates: &[PeerAddr],
        node: PeerId,
        sites: &BTreeMap<PeerId, String>,
    ) -> Vec<PeerAddr> {
        if !self.cfg.swarm {
            return Vec::new();
        }
        let Some(site) = sites.get(&node) else {
            return self.pick(candidates, node, self.cfg.swarm_peers);
        };
        let (local, remote): (Vec<PeerAddr>, Vec<PeerAddr>) = candidates
            .iter()
            .cloned()
            .partition(|c| sites.get(&c.id) == Some(site));
        let mut peers = self.pick(&local, node, SITE_PEERS);
        peers.extend(self.pick(&remote, node, self.cfg.remote_peers));
        peers
    }

    /// Up to `want` of `candidates` other than `node`, at random.
    pub(super) fn pick(&self, candidates: &[PeerAddr], node: PeerId, want: usize) -> Vec<PeerAddr> {
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

    /// Deploys to one node; returns its result and the version it had.
    /// With `from`, the descriptor goes by reference: the node takes it
    /// from those nodes ([`Request::DeployRef`]).
    pub(super) async fn deploy_one(
        &self,
        release: &Release,
        node: &NodeInfo,
        options: &ActivateOptions,
        from: Option<Vec<PeerAddr>>,
        peers: Vec<PeerAddr>,
        events: &mpsc::Sender<Progress>,
    ) -> (NodeResult, Option<semver::Version>) {
        let id = node.id;
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
            self.follow(&conn, id, request, events).await
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

impl Controller {
    /// Sends a deploy or stage `request` to node `id` on `conn` and
    /// forwards its progress until the reply.
    async fn follow(
        &self,
        conn: &Arc<dyn p2p_core::Connection>,
        id: PeerId,
        request: Request,
        events: &mpsc::Sender<Progress>,
    ) -> p2p_core::Result<Reply> {
        let mut c = Call::open_watched(
            conn,
            request,
            self.cfg.deploy_timeout,
            self.cfg.node_silence,
        )
        .await?;
        loop {
            let p = match c.next().await? {
                Frame::Done(reply) => return Ok(reply),
                Frame::Event(e) => match progress_of(id, e) {
                    Some(p) => p,
                    None => continue,
                },
                other => {
                    tracing::debug!(node = %id.short(), "ignored frame {other:?}");
                    continue;
                }
            };
            // Never waits: while this waited for a slow reader, the
            // node's frames would go unread and its silence watchdog
            // could call a working node dead. Progress is advisory;
            // the report has every result.
            let _ = events.try_send(p);
        }
    }

    /// Stages the release on one node ([`Request::Stage`]).
    async fn stage_one(
        &self,
        release: &Release,
        node: &NodeInfo,
        peers: Vec<PeerAddr>,
        events: &mpsc::Sender<Progress>,
    ) -> NodeResult {
        let id = node.id;
        let run = async {
            let conn = self.connect(&node.addr).await?;
            let request = Request::Stage {
                descriptor: release.descriptor_bytes.clone(),
                signatures: release.signatures.clone(),
                peers,
            };
            self.follow(&conn, id, request, events).await
        };
        match run.await {
            Ok(Reply::Catalog(e)) if e.iter().any(|e| e.id == release.id() && e.is_complete()) => {
                NodeResult::Staged
            }
            Ok(other) => NodeResult::Failed {
                error: format!("unexpected answer {other:?}"),
            },
            Err(e) => NodeResult::Failed {
                error: e.to_string(),
            },
        }
    }
}

/// A node's deploy event as rollout progress (`None`: not reported).
fn progress_of(node: PeerId, e: DeployEvent) -> Option<Progress> {
    Some(match e {
        DeployEvent::Transfer { bytes, total } => Progress::Transfer { node, bytes, total },
        DeployEvent::AlreadyHeld { bytes, total } => Progress::AlreadyHeld { node, bytes, total },
        DeployEvent::Installed => Progress::Installed { node },
        DeployEvent::Started => Progress::Started { node },
        DeployEvent::HealthPassed => Progress::HealthPassed { node },
        DeployEvent::HealthFailed { reason } => Progress::HealthFailed { node, reason },
        DeployEvent::RolledBack { to } => Progress::RolledBack { node, to },
        DeployEvent::Verified => return None,
    })
}

/// The most swarm peers at its own site a target is given: the site's
/// nodes each bring an even share of the release in from other sites,
/// split among the peers they know of (see the swarm docs).
pub const SITE_PEERS: usize = 64;

/// Halts the rollout `report` tells of, for `reason`, and says so.
async fn halt(events: &mpsc::Sender<Progress>, report: &mut RolloutReport, reason: String) {
    emit(
        events,
        Progress::Halted {
            reason: reason.clone(),
        },
    )
    .await;
    report.halted = Some(reason);
}

/// Sends `p` to a rollout's progress channel, waiting while it is full; a
/// receiver that went away is no error (progress is then discarded).
async fn emit(events: &mpsc::Sender<Progress>, p: Progress) {
    let _ = events.send(p).await;
}
