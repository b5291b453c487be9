//! A deploy request: the descriptor (sent whole or found by reference),
//! verification against the trust store and the anti-downgrade rule, the
//! transfer and install (bounded by the request's deadline), then
//! activation.

use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Connection, Error};

use super::acquire::{Sources, no_space};
use super::error::DeployError;
use super::records::AppRecord;
use super::{Agent, Events, emit};
use crate::events::EventKind;
use crate::package::Descriptor;
use crate::proto::{ActivateOptions, Activation, DeployEvent, Reply, Request};

/// Says how much of `t`'s release the node holds before fetching, and
/// returns it.
fn emit_held(events: Option<&Events>, t: &crate::swarm::Transfer) -> u64 {
    let d = &t.d;
    let bytes: u64 = t
        .have()
        .ones()
        .map(|i| crate::chunks::chunk_len(d, i))
        .sum();
    emit(
        events,
        DeployEvent::AlreadyHeld {
            bytes,
            total: d.archive_size,
        },
    );
    bytes
}

impl Agent {
    /// [`trusted`](Self::trusted), as a deploy's error naming the release.
    fn trusted_release(
        &self,
        d: &Descriptor,
        signatures: &[p2p_core::Signature],
    ) -> Result<Vec<p2p_core::Signature>, DeployError> {
        self.trusted(d, signatures)
            .map_err(|source| DeployError::Untrusted {
                release: format!("{} {}", d.manifest.name, d.manifest.version),
                source,
            })
    }

    /// Answers [`Request::Stage`]: verified as a deploy is (trust store,
    /// anti-downgrade, a conflicting release of the same version), then
    /// fetched from the sender and the swarm peers and kept, neither
    /// installed nor activated. Answered with the release's catalog
    /// entry.
    pub(super) async fn stage_request(
        &self,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> Result<Reply, DeployError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Request::Stage {
            descriptor,
            signatures,
            peers,
        } = request
        else {
            return Err(Error::invalid("request", "not a stage request").into());
        };
        let d = Descriptor::from_bytes(&descriptor)?;
        let id = d.id();
        let m = d.manifest.clone();
        let _g = self.busy(&m.name).await?;
        let counted = self.trusted_release(&d, &signatures)?;
        if let Some(rec) = self.load(&m.name).await? {
            match rec.installed.get(&m.version) {
                Some(other) if *other != id => {
                    return Err(DeployError::Conflict {
                        release: format!("{} {}", m.name, m.version),
                        other: *other,
                    });
                }
                Some(_) => {}
                None => rec.check_not_below(&m)?,
            }
        }
        emit(events, DeployEvent::Verified);
        let work = async {
            let t = self.transfer(&d).await?;
            emit_held(events, &t);
            self.inner.chunks.add_release(&d).await?;
            self.inner.chunks.add_signatures(&id, &counted).await?;
            let sources = Sources { seed: conn, peers };
            self.fetch(t, sources, events, deadline).await
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| DeployError::TimedOut {
                what: format!("staging {} {}", m.name, m.version),
                after: timeout,
            })??;
        tracing::info!(app = %m.name, version = %m.version, "release staged");
        let entry = self
            .catalog()
            .await?
            .into_iter()
            .filter(|e| e.id == id)
            .collect();
        Ok(Reply::Catalog(entry))
    }

    /// Answers [`Request::Deploy`] and [`Request::DeployRef`]: the
    /// descriptor (decoded, or found by reference), then [`deploy`](Self::deploy).
    pub(super) async fn deploy_request(
        &self,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> Result<Reply, DeployError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (d, signatures, options, peers) = match request {
            Request::Deploy {
                descriptor,
                signatures,
                options,
                peers,
            } => {
                let d = Descriptor::from_bytes(&descriptor)?;
                (d, signatures, options, peers)
            }
            Request::DeployRef {
                package,
                signatures,
                options,
                from: holders,
                peers,
            } => {
                let find = self.descriptor_for(&package, &holders, conn.as_ref());
                let d = tokio::time::timeout_at(deadline, find)
                    .await
                    .map_err(|_| DeployError::TimedOut {
                        what: format!("finding the descriptor of release {package}"),
                        after: timeout,
                    })??;
                (d, signatures, options, peers)
            }
            other => {
                return Err(
                    Error::invalid("request", format!("{} is not a deploy", other.kind())).into(),
                );
            }
        };
        let sources = Sources { seed: conn, peers };
        self.deploy(d, &signatures, &options, sources, events, deadline, timeout)
            .await
    }

    /// Deploys `d` (a decoded [`Request::Deploy`] or
    /// [`Request::DeployRef`]); verification, transfer and install end at
    /// `deadline`, which is `timeout` after the request came.
    #[allow(clippy::too_many_arguments)] // one request's parts, passed through
    pub(super) async fn deploy(
        &self,
        d: Descriptor,
        signatures: &[p2p_core::Signature],
        options: &ActivateOptions,
        sources: Sources,
        events: Option<&Events>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Reply, DeployError> {
        let id = d.id();
        let m = d.manifest.clone();
        let _g = self.busy(&m.name).await?;
        // A refusal is logged by `handle_within`, with the peer.
        let counted = self.trusted_release(&d, signatures)?;
        let mut rec = self.load(&m.name).await?.unwrap_or(AppRecord {
            name: m.name.clone(),
            ..AppRecord::default()
        });
        if let Some(other) = rec.installed.get(&m.version) {
            if *other != id {
                return Err(DeployError::Conflict {
                    release: format!("{} {}", m.name, m.version),
                    other: *other,
                });
            }
            if rec.active.as_ref() == Some(&m.version)
                && rec.running
                && self.runs(&m.name, &m.version).await
            {
                return Ok(Reply::Activation(Activation::AlreadyActive {
                    version: m.version.clone(),
                }));
            }
        }
        rec.check_not_below(&m)?;
        emit(events, DeployEvent::Verified);
        let from = sources
            .seed
            .as_ref()
            .map_or_else(|| self.inner.parts.provider.local_id(), |c| c.remote_id());
        self.record(EventKind::DeployAccepted {
            app: m.name.clone(),
            version: m.version.clone(),
            package: id,
            from,
        })
        .await;

        if !rec.installed.contains_key(&m.version) {
            // Verification, transfer and install end at the deadline;
            // activation, once begun, runs to its end.
            let fetch_install = async {
                let t = self.transfer(&d).await?;
                let held = emit_held(events, &t);
                self.inner.chunks.add_release(&d).await?;
                self.inner.chunks.add_signatures(&id, &counted).await?;
                self.fetch(t, sources, events, deadline).await?;
                self.record(EventKind::TransferDone {
                    app: m.name.clone(),
                    version: m.version.clone(),
                    fetched: d.archive_size - held,
                    held,
                })
                .await;
                match self
                    .inner
                    .parts
                    .installer
                    .install(&d, &self.inner.chunks)
                    .await
                {
                    Ok(dir) => Ok(dir),
                    Err(e) if no_space(&e) => Err(self.out_of_space(&d, e).await),
                    Err(e) => Err(DeployError::Node(e)),
                }
            };
            tokio::time::timeout_at(deadline, fetch_install)
                .await
                .map_err(|_| DeployError::TimedOut {
                    what: format!("transfer and install of {} {}", m.name, m.version),
                    after: timeout,
                })??;
            rec.installed.insert(m.version.clone(), id);
            self.save(&rec).await?;
            self.record(EventKind::Installed {
                app: m.name.clone(),
                version: m.version.clone(),
            })
            .await;
        }
        emit(events, DeployEvent::Installed);
        Ok(self
            .activate(rec, &m.version, "deploy", options, events)
            .await?)
    }
}
