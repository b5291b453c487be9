//! Bringing apps to their desired state: recovery after a restart,
//! the reconcile pass, and the simple operations (start, stop, restart,
//! remove).

use std::collections::{BTreeMap, BTreeSet};

use p2p_core::{AppStatus, Error, Result};

use super::records::{AppRecord, active_version, push_history, record_key};
use super::{Agent, Res, not_found, rpc};
use crate::manifest::Manifest;
use crate::package::PackageId;
use crate::proto::{ErrorKind, HistoryEntry, Outcome, Reply, RpcError};

impl Agent {
    /// After a restart: records activations that were interrupted (the
    /// node stays on the version that was active), drops releases no app
    /// refers to, and brings the runtime to the desired state.
    pub async fn recover(&self) -> Result<()> {
        let clock = self.inner.parts.clock.now().as_millis();
        let mut referenced = BTreeSet::new();
        let mut installed = BTreeMap::new();
        for name in self.app_names().await? {
            let Some(mut rec) = self.load_readable(&name).await else {
                continue;
            };
            installed.insert(name.clone(), rec.installed.keys().cloned().collect());
            if let Some(p) = rec.pending.take() {
                tracing::warn!(
                    app = %name,
                    version = %p.to,
                    active = ?rec.active.as_ref().map(|v| v.to_string()),
                    "the agent stopped during an activation; staying on the active version"
                );
                let to = rec.active.clone();
                self.inner.metrics.rollbacks.inc();
                self.record(crate::events::EventKind::RolledBack {
                    app: name.clone(),
                    from: p.to.clone(),
                    to: to.clone(),
                    reason: format!(
                        "the agent stopped during the {} (activation interrupted)",
                        p.action
                    ),
                })
                .await;
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: clock,
                        action: p.action,
                        version: p.to,
                        outcome: Outcome::Interrupted { to },
                    },
                );
                self.save(&rec).await?;
            }
            referenced.extend(rec.installed.values().copied());
        }
        match self.inner.chunks.releases().await {
            Ok(releases) => {
                // A release no record refers to was being received: kept
                // (its transfer resumes) if it is newer than every version
                // installed of its app, dropped otherwise.
                for d in releases {
                    let m = &d.manifest;
                    let newer =
                        installed
                            .get(&m.name)
                            .is_none_or(|vs: &BTreeSet<semver::Version>| {
                                vs.iter().all(|v| *v < m.version)
                            });
                    if !referenced.contains(&d.id()) && !newer {
                        self.inner.chunks.remove_release(&d.id()).await?;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the kept releases; not collecting"),
        }
        self.collect_chunks().await;
        match self.inner.parts.installer.clean(&installed).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "cleaned up after interrupted installs"),
            Err(e) => tracing::warn!(error = %e, "could not clean up after interrupted installs"),
        }
        self.reconcile().await
    }

    /// Brings every app that is not busy to its desired state: started if
    /// it should run and the runtime does not have it (or has another
    /// version), stopped if it should not run.
    pub async fn reconcile(&self) -> Result<()> {
        for name in self.app_names().await? {
            let Ok(_guard) = self.lock(&name).try_lock_owned() else {
                continue; // an operation on it is in progress
            };
            let Some(rec) = self.load_readable(&name).await else {
                continue;
            };
            let status = self.status(&name).await;
            match (&rec.active, rec.running) {
                (Some(v), true) => {
                    let wrong = match &status {
                        None => true,
                        Some(s) => s.version != v.to_string(),
                    };
                    if wrong {
                        tracing::info!(app = %name, version = %v, "starting the desired version");
                        if let Err(e) = self.start_version(&rec, v).await {
                            tracing::warn!(app = %name, error = %e, "could not start");
                        }
                    }
                }
                _ => {
                    if status.is_some_and(|s| s.state.is_live()) {
                        tracing::info!(app = %name, "stopping an app that should not run");
                        let _ = self.inner.parts.runtime.stop(&name).await;
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) async fn status(&self, app: &str) -> Option<AppStatus> {
        self.inner.parts.runtime.status(app).await.ok()
    }

    /// Whether the runtime runs `v` of `app`, live.
    pub(super) async fn runs(&self, app: &str, v: &semver::Version) -> bool {
        self.status(app)
            .await
            .is_some_and(|s| s.state.is_live() && s.version == v.to_string())
    }

    pub(super) async fn manifest_of(
        &self,
        rec: &AppRecord,
        v: &semver::Version,
    ) -> Result<Manifest> {
        let id = rec.installed.get(v).ok_or_else(|| Error::NotFound {
            what: format!("version {v} of {} is not installed", rec.name),
        })?;
        // `manifest` also reads a format-1 release installed before an
        // upgrade, so such a version keeps running.
        self.inner
            .chunks
            .manifest(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("the release of {} {v} ({id})", rec.name),
            })
    }

    pub(super) async fn start_version(
        &self,
        rec: &AppRecord,
        v: &semver::Version,
    ) -> Result<AppStatus> {
        let m = self.manifest_of(rec, v).await?;
        let spec = m.app_spec(&self.inner.parts.installer.workdir(&m.name, &m.version));
        let rt = &self.inner.parts.runtime;
        if rt.status(&m.name).await.is_ok() {
            let _ = rt.stop(&m.name).await;
            let _ = rt.remove(&m.name).await;
        }
        rt.start(spec).await
    }

    pub(super) async fn start_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let v = active_version(&rec)?;
        rec.running = true;
        self.save(&rec).await.map_err(rpc)?;
        if !self.runs(app, &v).await {
            self.start_version(&rec, &v).await.map_err(rpc)?;
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    pub(super) async fn stop_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        rec.running = false;
        self.save(&rec).await.map_err(rpc)?;
        match self.inner.parts.runtime.stop(app).await {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(rpc(e)),
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    pub(super) async fn restart_app(&self, app: &str) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let v = active_version(&rec)?;
        rec.running = true;
        self.save(&rec).await.map_err(rpc)?;
        match self.inner.parts.runtime.restart(app).await {
            Ok(s) if s.version == v.to_string() => {}
            Ok(_) | Err(Error::NotFound { .. }) => {
                self.start_version(&rec, &v).await.map_err(rpc)?;
            }
            Err(e) => return Err(rpc(e)),
        }
        Ok(Reply::App(Box::new(self.app_info(&rec).await)))
    }

    pub(super) async fn remove(&self, app: &str, version: Option<&semver::Version>) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let mut rec = self.need(app).await?;
        let installer = &self.inner.parts.installer;
        match version {
            Some(v) => {
                if rec.active.as_ref() == Some(v) {
                    return Err(RpcError::new(
                        ErrorKind::Invalid,
                        format!(
                            "{app} {v} is the active version; switch to another or remove the app"
                        ),
                    ));
                }
                let id = rec
                    .installed
                    .remove(v)
                    .ok_or_else(|| not_found(format!("{app} {v} is not installed")))?;
                if rec.previous.as_ref() == Some(v) {
                    rec.previous = None;
                }
                self.save(&rec).await.map_err(rpc)?;
                installer.uninstall(app, v).await.map_err(rpc)?;
                self.drop_releases(&[id]).await.map_err(rpc)?;
                Ok(Reply::App(Box::new(self.app_info(&rec).await)))
            }
            None => {
                // Not running first, so that nothing restarts it if a
                // later step fails.
                rec.running = false;
                self.save(&rec).await.map_err(rpc)?;
                let rt = &self.inner.parts.runtime;
                let _ = rt.stop(app).await;
                match rt.remove(app).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(rpc(e)),
                }
                // Files first, then the record: a failure part way leaves
                // a record that a second remove finishes.
                for v in rec.installed.keys() {
                    installer.uninstall(app, v).await.map_err(rpc)?;
                }
                self.inner
                    .parts
                    .storage
                    .delete(&record_key(app))
                    .await
                    .map_err(rpc)?;
                let ids: Vec<PackageId> = rec.installed.values().copied().collect();
                self.drop_releases(&ids).await.map_err(rpc)?;
                Ok(Reply::Ok)
            }
        }
    }
}
