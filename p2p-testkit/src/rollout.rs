//! A rollout's outcome, by node name.

use std::collections::BTreeMap;
use std::fmt;

use p2p_core::PeerId;
use p2p_deploy::{NodeResult, RolloutReport};

/// How a [`Fleet::deploy`](crate::Fleet::deploy) went: the controller's
/// [`RolloutReport`], with every node named as the fleet names it (the
/// report itself keys nodes by peer id, and its error texts may name them
/// by short id).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The controller's report.
    pub report: RolloutReport,
    /// The targets, in the order the rollout took them (by name).
    pub targets: Vec<String>,
    /// Nodes whose labels match the selector but that did not answer the
    /// controller's listing before the rollout, so were not deployed to.
    pub unanswered: Vec<String>,
    names: BTreeMap<PeerId, String>,
}

impl Rollout {
    pub(crate) fn new(
        report: RolloutReport,
        targets: Vec<String>,
        unanswered: Vec<String>,
        names: BTreeMap<PeerId, String>,
    ) -> Self {
        Rollout {
            report,
            targets,
            unanswered,
            names,
        }
    }

    /// Completed (not halted) with every target on the new version (or
    /// already on it), and no matching node left out for not answering.
    pub fn is_success(&self) -> bool {
        self.report.is_success() && self.unanswered.is_empty()
    }

    /// Why the rollout halted, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.report.halted.as_deref()
    }

    /// How the deploy to node `name` ended; `None` if it was no target.
    pub fn result(&self, name: &str) -> Option<&NodeResult> {
        let id = self.names.iter().find(|(_, n)| *n == name)?.0;
        self.report.nodes.get(id)
    }

    /// Every target's result, by name.
    pub fn results(&self) -> BTreeMap<&str, &NodeResult> {
        self.report
            .nodes
            .iter()
            .map(|(id, r)| (self.name(id), r))
            .collect()
    }

    /// The targets whose result is `want`'s kind, by name: `activated()`,
    /// `failed()` and the rest are built on it.
    fn with(&self, want: impl Fn(&NodeResult) -> bool) -> Vec<&str> {
        self.results()
            .into_iter()
            .filter(|(_, r)| want(r))
            .map(|(n, _)| n)
            .collect()
    }

    /// Targets that activated the release, by name.
    pub fn activated(&self) -> Vec<&str> {
        self.with(|r| matches!(r, NodeResult::Activated | NodeResult::AlreadyActive))
    }

    /// Targets that failed: the deploy could not run there (unreachable,
    /// stopped answering, refused) or the node rolled itself back after a
    /// failed health gate. By name.
    pub fn failed(&self) -> Vec<&str> {
        self.with(NodeResult::is_failure)
    }

    /// Targets not attempted because the rollout halted first, by name.
    pub fn skipped(&self) -> Vec<&str> {
        self.with(|r| *r == NodeResult::Skipped)
    }

    /// Nodes that the rollout changed and rolled back after it halted, by
    /// name.
    pub fn rolled_back(&self) -> Vec<&str> {
        self.report
            .rolled_back
            .iter()
            .map(|id| self.name(id))
            .collect()
    }

    /// The fleet's name of the node `id` (the fleet names every target).
    fn name(&self, id: &PeerId) -> &str {
        self.names.get(id).map_or("(unknown node)", String::as_str)
    }
}

/// A summary line, then one line per node that did not activate (with
/// its result), named: what an assertion message should show.
impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        write!(
            f,
            "{} {}: {} of {} activated",
            r.app,
            r.version,
            self.activated().len(),
            r.nodes.len()
        )?;
        match &r.halted {
            Some(why) => write!(f, "; halted: {why}")?,
            None => write!(f, "; completed")?,
        }
        for (name, result) in self.results() {
            match result {
                NodeResult::Activated | NodeResult::AlreadyActive => {}
                NodeResult::RolledBack { reason } => {
                    write!(f, "\n  {name}: rolled back: {reason}")?
                }
                NodeResult::Failed { error } => write!(f, "\n  {name}: failed: {error}")?,
                NodeResult::Skipped => write!(f, "\n  {name}: skipped")?,
                other => write!(f, "\n  {name}: {other:?}")?,
            }
        }
        for name in self.rolled_back() {
            write!(f, "\n  {name}: rolled back after the halt")?;
        }
        for (id, why) in &r.rollback_failed {
            write!(f, "\n  {}: not rolled back: {why}", self.name(id))?;
        }
        for name in &self.unanswered {
            write!(f, "\n  {name}: did not answer the listing; not a target")?;
        }
        Ok(())
    }
}
