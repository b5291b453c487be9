//! Activation: stop the active version, start the new one, wait for the
//! [health gate](super::gate), then commit with one storage write or go
//! back to the version that was active; and the operations that activate
//! an installed version (switch, rollback).

use super::gate::{GateFailure, GateStep, HealthGate};
use super::records::{AppRecord, Pending, list_versions, push_history};
use super::{Agent, Events, Res, emit, not_found, rpc};
use crate::events::EventKind;
use crate::manifest::Manifest;
use crate::proto::{ActivateOptions, Activation, DeployEvent, HistoryEntry, Outcome, Reply};

impl Agent {
    pub(super) async fn switch(
        &self,
        app: &str,
        version: &semver::Version,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let rec = self.need(app).await?;
        if !rec.installed.contains_key(version) {
            return Err(not_found(format!(
                "{app} {version} is not installed here (installed: {})",
                list_versions(&rec)
            )));
        }
        if rec.active.as_ref() == Some(version) && rec.running && self.runs(app, version).await {
            return Ok(Reply::Activation(Activation::AlreadyActive {
                version: version.clone(),
            }));
        }
        self.activate(rec, version, "switch", options, events).await
    }

    pub(super) async fn rollback(
        &self,
        app: &str,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let _g = self.busy(app).await?;
        let rec = self.need(app).await?;
        // The previous version; else the newest earlier version that was
        // once active here (one that failed its gate is a poor target),
        // else the newest earlier one.
        let earlier = |once_active: bool| {
            let active = rec.active.as_ref()?;
            rec.installed
                .keys()
                .rev()
                .filter(|v| *v < active)
                .find(|v| {
                    !once_active
                        || rec
                            .history
                            .iter()
                            .any(|h| &h.version == *v && h.outcome == Outcome::Activated)
                })
                .cloned()
        };
        let target = rec
            .previous
            .clone()
            .filter(|p| rec.installed.contains_key(p) && Some(p) != rec.active.as_ref())
            .or_else(|| earlier(true))
            .or_else(|| earlier(false))
            .ok_or_else(|| {
                not_found(format!(
                    "{app} has no earlier version to roll back to (installed: {})",
                    list_versions(&rec)
                ))
            })?;
        self.activate(rec, &target, "rollback", options, events)
            .await
    }

    /// Stops the active version, starts `to`, waits for the gate; commits,
    /// or goes back to the active version.
    pub(super) async fn activate(
        &self,
        mut rec: AppRecord,
        to: &semver::Version,
        action: &str,
        options: &ActivateOptions,
        events: Option<&Events>,
    ) -> Res<Reply> {
        let name = rec.name.clone();
        let manifest = self.manifest_of(&rec, to).await.map_err(rpc)?;
        let from = rec.active.clone();
        let was_running = rec.running;
        rec.pending = Some(Pending {
            action: action.to_string(),
            to: to.clone(),
        });
        self.save(&rec).await.map_err(rpc)?;
        let rt = &self.inner.parts.runtime;
        tracing::info!(app = %name, from = ?from.as_ref().map(|v| v.to_string()), to = %to, action, "activating");

        let started = self.start_version(&rec, to).await;
        let gate_began = tokio::time::Instant::now();
        let verdict = match started {
            Ok(_) => {
                emit(events, DeployEvent::Started);
                self.gate(&name, to, &manifest, options).await
            }
            Err(e) => Err(GateFailure::NotStarted {
                error: e.to_string(),
            }),
        };
        let now = self.inner.parts.clock.now().as_millis();
        let gate_took = gate_began.elapsed();
        self.inner
            .metrics
            .gate_seconds
            .get_or_create(&p2p_core::metrics::label(
                "outcome",
                if verdict.is_ok() { "passed" } else { "failed" },
            ))
            .observe(gate_took.as_secs_f64());
        rec.pending = None;
        match verdict {
            Ok(()) => {
                emit(events, DeployEvent::HealthPassed);
                if from.as_ref() != Some(to) {
                    rec.previous = from.clone();
                }
                rec.active = Some(to.clone());
                rec.running = true;
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: now,
                        action: action.to_string(),
                        version: to.clone(),
                        outcome: Outcome::Activated,
                    },
                );
                self.save(&rec).await.map_err(rpc)?;
                tracing::info!(app = %name, version = %to, "activated");
                self.record(EventKind::GatePassed {
                    app: name.clone(),
                    version: to.clone(),
                    action: action.to_string(),
                    took_ms: u64::try_from(gate_took.as_millis()).unwrap_or(u64::MAX),
                })
                .await;
                if let Err(e) = self
                    .collect_versions(
                        &mut rec,
                        self.inner
                            .cfg
                            .keep_versions
                            .map_or(manifest.keep_versions, |k| k.min(manifest.keep_versions)),
                    )
                    .await
                {
                    tracing::warn!(app = %name, error = %e, "could not remove old versions");
                }
                Ok(Reply::Activation(Activation::Activated {
                    version: to.clone(),
                    previous: from,
                }))
            }
            Err(failure) => {
                let reason = failure.to_string();
                emit(
                    events,
                    DeployEvent::HealthFailed {
                        reason: reason.clone(),
                    },
                );
                tracing::warn!(app = %name, version = %to, %reason, "activation failed; going back");
                self.inner.metrics.rollbacks.inc();
                self.record(EventKind::GateFailed {
                    app: name.clone(),
                    version: to.clone(),
                    action: action.to_string(),
                    reason: reason.clone(),
                })
                .await;
                let _ = rt.stop(&name).await;
                let _ = rt.remove(&name).await;
                let mut reason = reason;
                if let Some(v) = &from
                    && was_running
                    && let Err(e) = self.start_version(&rec, v).await
                {
                    // The record keeps `v` active: reconcile retries it.
                    tracing::warn!(app = %name, version = %v, error = %e, "could not restart the previous version");
                    reason = format!(
                        "{reason}; then {v} could not be started again ({e}); the agent keeps retrying"
                    );
                }
                push_history(
                    &mut rec,
                    HistoryEntry {
                        at_ms: now,
                        action: action.to_string(),
                        version: to.clone(),
                        outcome: Outcome::RolledBack {
                            reason: reason.clone(),
                            to: from.clone(),
                        },
                    },
                );
                self.save(&rec).await.map_err(rpc)?;
                self.record(EventKind::RolledBack {
                    app: name.clone(),
                    from: to.clone(),
                    to: from.clone(),
                    reason: reason.clone(),
                })
                .await;
                emit(events, DeployEvent::RolledBack { to: from.clone() });
                Ok(Reply::Activation(Activation::RolledBack {
                    reason,
                    to: from,
                }))
            }
        }
    }

    /// Waits for the [health gate](HealthGate) of `version` of `app`.
    pub(super) async fn gate(
        &self,
        app: &str,
        version: &semver::Version,
        m: &Manifest,
        options: &ActivateOptions,
    ) -> Result<(), GateFailure> {
        let max = self.inner.cfg.max_request_timeout;
        let mut gate = HealthGate::new(version, m, options, max, tokio::time::Instant::now());
        loop {
            let s = match self.inner.parts.runtime.status(app).await {
                Ok(s) => s,
                Err(e) => {
                    return Err(GateFailure::Lost {
                        error: e.to_string(),
                    });
                }
            };
            match gate.step(&s, tokio::time::Instant::now()) {
                GateStep::Pass => return Ok(()),
                GateStep::Fail(why) => return Err(why),
                GateStep::Wait(d) => tokio::time::sleep(d).await,
            }
        }
    }
}
