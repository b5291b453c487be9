//! Keeping K versions: old versions are uninstalled after an activation,
//! releases no app refers to are dropped, and unreferenced chunks are
//! collected.

use std::collections::BTreeSet;

use p2p_core::Result;
use p2p_core::sync::lock;

use super::Agent;
use super::records::AppRecord;
use crate::package::PackageId;

impl Agent {
    /// Stops keeping the releases that no app's record refers to any
    /// more, then collects unreferenced chunks once.
    pub(super) async fn drop_releases(&self, ids: &[PackageId]) -> Result<()> {
        let mut referenced = BTreeSet::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load(&name).await? {
                referenced.extend(rec.installed.into_values());
            }
        }
        for id in ids.iter().filter(|id| !referenced.contains(*id)) {
            self.inner.chunks.remove_release(id).await?;
        }
        self.collect_chunks().await;
        Ok(())
    }

    /// Deletes unreferenced chunks. Housekeeping: a failure (a damaged
    /// release record, which keeps every chunk) is logged, and fails
    /// neither the request nor the recovery that asked for it.
    pub(super) async fn collect_chunks(&self) {
        if let Err(e) = self.inner.chunks.collect().await {
            tracing::warn!(error = %e, "unreferenced chunks not collected");
        }
    }

    /// Keeps the active version and the `keep - 1` most recent others
    /// (the previous version first); uninstalls the rest, and drops the
    /// app's releases kept ahead that can no longer be deployed.
    pub(super) async fn collect_versions(&self, rec: &mut AppRecord, keep: u32) -> Result<()> {
        let keep = keep.max(1) as usize;
        let mut kept: Vec<semver::Version> = Vec::new();
        kept.extend(rec.active.clone());
        if let Some(p) = &rec.previous
            && kept.len() < keep
            && !kept.contains(p)
        {
            kept.push(p.clone());
        }
        for v in rec.installed.keys().rev() {
            if kept.len() >= keep {
                break;
            }
            if !kept.contains(v) {
                kept.push(v.clone());
            }
        }
        let gone: Vec<(semver::Version, PackageId)> = rec
            .installed
            .iter()
            .filter(|(v, _)| !kept.contains(v))
            .map(|(v, id)| (v.clone(), *id))
            .collect();
        if !gone.is_empty() {
            for (v, _) in &gone {
                rec.installed.remove(v);
                if rec.previous.as_ref() == Some(v) {
                    rec.previous = None;
                }
            }
            self.save(rec).await?;
            for (v, _) in &gone {
                tracing::info!(app = %rec.name, version = %v, "removing an old version");
                self.inner.parts.installer.uninstall(&rec.name, v).await?;
            }
        }
        let mut ids: Vec<PackageId> = gone.into_iter().map(|(_, id)| id).collect();
        for id in self.undeployable(rec).await? {
            if !ids.contains(&id) {
                tracing::info!(app = %rec.name, release = %id, "dropping a release kept ahead that can no longer be deployed");
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        self.drop_releases(&ids).await
    }

    /// Releases of `rec`'s app kept without being installed (fetched
    /// ahead, [`Request::Fetch`]) that can no longer be deployed: a version
    /// installed is as high or higher, and a deploy never goes below one.
    /// One still being fetched is left alone.
    pub(super) async fn undeployable(&self, rec: &AppRecord) -> Result<Vec<PackageId>> {
        let Some(top) = rec.installed.keys().next_back() else {
            return Ok(Vec::new());
        };
        let installed: BTreeSet<PackageId> = rec.installed.values().copied().collect();
        let fetching: BTreeSet<PackageId> =
            lock(&self.inner.swarm.transfers).keys().copied().collect();
        Ok(self
            .inner
            .chunks
            .releases()
            .await?
            .into_iter()
            .filter(|d| d.manifest.name == rec.name && d.manifest.version <= *top)
            .map(|d| d.id())
            .filter(|id| !installed.contains(id) && !fetching.contains(id))
            .collect())
    }
}
