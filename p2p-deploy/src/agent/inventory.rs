//! What a node says about itself: its info, its apps, and the catalog of
//! releases it holds.

use std::collections::BTreeMap;

use p2p_core::Result;

use super::Agent;
use super::records::AppRecord;
use crate::proto::{AppInfo, CatalogEntry, NodeInfo, SDK_VERSION};

impl Agent {
    /// What the node says about itself.
    pub async fn info(&self) -> Result<NodeInfo> {
        let p = &self.inner.parts.provider;
        Ok(NodeInfo {
            id: p.local_id(),
            name: self.inner.cfg.name.clone(),
            labels: self.inner.cfg.labels.clone(),
            addr: p.local_addr(),
            sdk_version: SDK_VERSION.to_string(),
            apps: self.apps().await?,
            peers: self.inner.swarm.reputation.snapshot(),
        })
    }

    /// The releases this node holds (kept in its chunk store), complete
    /// or still arriving, by name and version.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        let mut recs = BTreeMap::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load_readable(&name).await {
                recs.insert(name, rec);
            }
        }
        let mut out = Vec::new();
        let releases = self.inner.chunks.releases().await?;
        let held = self.inner.chunks.held_counts(&releases).await?;
        for (d, held) in releases.into_iter().zip(held) {
            let id = d.id();
            let m = &d.manifest;
            let rec = recs.get(&m.name);
            let installed = rec.is_some_and(|r| r.installed.get(&m.version) == Some(&id));
            let active = installed && rec.is_some_and(|r| r.active.as_ref() == Some(&m.version));
            out.push(CatalogEntry {
                name: m.name.clone(),
                version: m.version.clone(),
                id,
                size: d.archive_size,
                chunks: d.chunks.len() as u32,
                held: held as u32,
                installed,
                active,
            });
        }
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(out)
    }

    /// Publishes the node's membership record again if anything in it
    /// changed: addresses (a relay address found, a new port), name,
    /// labels, the releases held.
    pub(super) async fn publish_profile(&self) {
        let Some(m) = self.inner.membership.get() else {
            return;
        };
        let mut held = match self.catalog().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "catalog unreadable; membership record not refreshed");
                return;
            }
        };
        // What a search wants most first: active, installed, complete,
        // newest.
        held.sort_by(|a, b| {
            (b.active, b.installed, b.is_complete(), &b.version).cmp(&(
                a.active,
                a.installed,
                a.is_complete(),
                &a.version,
            ))
        });
        let profile = crate::membership::Profile {
            name: self.inner.cfg.name.clone(),
            labels: self.inner.cfg.labels.clone(),
            addrs: crate::membership::worth_publishing(
                self.inner.parts.provider.local_addr().addrs,
            ),
            held: held
                .into_iter()
                .map(|e| crate::membership::HeldRelease {
                    complete: e.is_complete(),
                    name: e.name,
                    version: e.version,
                    id: e.id,
                    size: e.size,
                    installed: e.installed,
                    active: e.active,
                })
                .collect(),
        };
        if let Err(e) = m.publish(profile).await {
            tracing::warn!(error = %e, "could not publish the membership record");
        }
    }

    /// Every app's info.
    pub async fn apps(&self) -> Result<Vec<AppInfo>> {
        let mut out = Vec::new();
        for name in self.app_names().await? {
            if let Some(rec) = self.load_readable(&name).await {
                out.push(self.app_info(&rec).await);
            }
        }
        Ok(out)
    }

    pub(super) async fn app_info(&self, rec: &AppRecord) -> AppInfo {
        AppInfo {
            name: rec.name.clone(),
            active: rec.active.clone(),
            running: rec.running,
            installed: rec
                .installed
                .iter()
                .map(|(v, id)| (v.clone(), *id))
                .collect(),
            previous: rec.previous.clone(),
            status: self.status(&rec.name).await,
            history: rec.history.clone(),
        }
    }
}
