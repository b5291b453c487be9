//! A deploy request: the descriptor (sent whole or found by reference),
//! verification against the trust store and the anti-downgrade rule, the
//! transfer and install (bounded by the request's deadline), then
//! activation.

use std::sync::Arc;
use std::time::Duration;

use p2p_core::Connection;

use super::acquire::{Sources, no_space};
use super::records::AppRecord;
use super::{Agent, Events, Res, emit, rpc};
use crate::package::Descriptor;
use crate::proto::{ActivateOptions, Activation, DeployEvent, ErrorKind, Reply, Request, RpcError};
use crate::trust::check_not_downgrade;

impl Agent {
    /// Answers [`Request::Deploy`] and [`Request::DeployRef`]: the
    /// descriptor (decoded, or found by reference), then [`deploy`](Self::deploy).
    pub(super) async fn deploy_request(
        &self,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> Res<Reply> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (d, signatures, options, peers) = match request {
            Request::Deploy {
                descriptor,
                signatures,
                options,
                peers,
            } => {
                let d = Descriptor::from_bytes(&descriptor)
                    .map_err(|e| RpcError::new(ErrorKind::Corrupt, e.to_string()))?;
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
                    .map_err(|_| {
                        RpcError::new(
                            ErrorKind::Timeout,
                            format!(
                                "the descriptor of release {package} did not arrive within {timeout:?}"
                            ),
                        )
                    })??;
                (d, signatures, options, peers)
            }
            other => {
                return Err(RpcError::new(
                    ErrorKind::Invalid,
                    format!("{} is not a deploy", other.kind()),
                ));
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
    ) -> Res<Reply> {
        let id = d.id();
        let m = d.manifest.clone();
        let _g = self.busy(&m.name).await?;
        // A refusal is logged by `handle_within`, with the peer.
        let counted = self.trusted(&d, signatures).map_err(|e| {
            RpcError::new(
                ErrorKind::BadSignature,
                format!("{} {}: {e}", m.name, m.version),
            )
        })?;
        let mut rec = self.load(&m.name).await.map_err(rpc)?.unwrap_or(AppRecord {
            name: m.name.clone(),
            ..AppRecord::default()
        });
        if let Some(other) = rec.installed.get(&m.version) {
            if *other != id {
                return Err(RpcError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{} {} is installed from another package ({other}); publish a new version instead",
                        m.name, m.version
                    ),
                ));
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
        let installed: Vec<_> = rec.installed.keys().cloned().collect();
        check_not_downgrade(&m.version, &installed, false)
            .map_err(|e| RpcError::new(ErrorKind::Downgrade, format!("{}: {e}", m.name)))?;
        emit(events, DeployEvent::Verified);

        if !rec.installed.contains_key(&m.version) {
            // Verification, transfer and install end at the deadline;
            // activation, once begun, runs to its end.
            let fetch_install = async {
                let t = self.transfer(&d).await?;
                self.inner.chunks.add_release(&d).await.map_err(rpc)?;
                self.inner
                    .chunks
                    .add_signatures(&id, &counted)
                    .await
                    .map_err(rpc)?;
                self.fetch(t, sources, events, deadline).await?;
                match self
                    .inner
                    .parts
                    .installer
                    .install(&d, &self.inner.chunks)
                    .await
                {
                    Ok(dir) => Ok(dir),
                    Err(e) if no_space(&e) => Err(self.out_of_space(&d, &e).await),
                    Err(e) => Err(rpc(e)),
                }
            };
            tokio::time::timeout_at(deadline, fetch_install)
                .await
                .map_err(|_| {
                    RpcError::new(
                        ErrorKind::Timeout,
                        format!(
                            "transfer and install of {} {} did not finish within {timeout:?}",
                            m.name, m.version
                        ),
                    )
                })??;
            rec.installed.insert(m.version.clone(), id);
            self.save(&rec).await.map_err(rpc)?;
        }
        emit(events, DeployEvent::Installed);
        self.activate(rec, &m.version, "deploy", options, events)
            .await
    }
}
