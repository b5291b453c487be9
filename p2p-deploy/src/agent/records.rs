//! The agent's records: one per app under `agent/apps/<name>` (postcard),
//! with the active version and whether it should run, the previous
//! version, the installed versions with their package ids, a pending
//! activation, and the last [`HISTORY_KEPT`] deployment records; .

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::DeployError;
use crate::manifest::Manifest;
use crate::package::PackageId;
use crate::proto::{ErrorKind, HistoryEntry, RpcError};
use crate::trust::check_not_downgrade;

/// Deployment records kept per app.
pub const HISTORY_KEPT: usize = 50;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct AppRecord {
    pub(super) name: String,
    pub(super) active: Option<semver::Version>,
    pub(super) running: bool,
    pub(super) previous: Option<semver::Version>,
    pub(super) installed: BTreeMap<semver::Version, PackageId>,
    pub(super) pending: Option<Pending>,
    pub(super) history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) action: String,
    pub(super) to: semver::Version,
}

impl AppRecord {
    /// Refuses `m` if its version is below one installed here: a deploy
    /// (or a fetch ahead of one) never goes back; only a rollback does.
    pub(super) fn check_not_below(&self, m: &Manifest) -> Result<(), DeployError> {
        let installed: Vec<_> = self.installed.keys().cloned().collect();
        check_not_downgrade(&m.version, &installed, false).map_err(|source| {
            DeployError::Downgrade {
                app: m.name.clone(),
                source,
            }
        })
    }
}

pub(super) fn record_key(app: &str) -> String {
    format!("agent/apps/{app}")
}

pub(super) fn active_version(rec: &AppRecord) -> Result<semver::Version, RpcError> {
    rec.active.clone().ok_or_else(|| {
        RpcError::new(
            ErrorKind::NotFound,
            format!("{} has no active version; deploy one first", rec.name),
        )
    })
}

pub(super) fn list_versions(rec: &AppRecord) -> String {
    if rec.installed.is_empty() {
        return "none".into();
    }
    rec.installed
        .keys()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn push_history(rec: &mut AppRecord, e: HistoryEntry) {
    rec.history.push(e);
    let over = rec.history.len().saturating_sub(HISTORY_KEPT);
    rec.history.drain(..over);
}
