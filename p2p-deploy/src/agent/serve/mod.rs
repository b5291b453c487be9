//! Serving the deploy protocol: one request per stream, read-only
//! requests within each peer's [rate](rate), changes only from
//! [operators](authorize), chunk requests within the [upload
//! slots](slots), progress and heartbeats streamed back while a change
//! runs.

pub(super) mod authorize;
pub(super) mod rate;
pub(super) mod slots;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use p2p_core::framing::Framed;
use p2p_core::sync::lock;
use p2p_core::{Connection, Error, PeerId, RecvStream, SendStream};
use tokio::sync::mpsc;

use super::{Agent, not_found, rpc};
use crate::package::PackageId;
use crate::proto::{
    ALIVE_VERSION, DeployEvent, ErrorKind, Frame, HEARTBEAT, HELD_VERSION, MAX_FRAME, Reply,
    Request, RpcError, accept_request, end_with, send_chunks,
};
use crate::swarm;
use authorize::authorize;
use rate::{OVER_RATE_DELAY, counts_against_rate};

/// How long an upload slot waits, after the chunks were written, for the
/// client to say it read them.
const SLOT_HOLD: Duration = Duration::from_secs(10);

impl Agent {
    /// Handles one request and logs a refused or failed change (a
    /// deploy, switch, stop...) with the peer, its address and why: one
    /// line per request, at warn, so that an operator reading a node's log
    /// sees every change it did not make. Read-only requests that fail
    /// are logged at debug.
    pub(in crate::agent) async fn handle_within(
        &self,
        from: PeerId,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<mpsc::UnboundedSender<Frame>>,
        timeout: Duration,
    ) -> std::result::Result<Reply, RpcError> {
        let kind = request.kind();
        let mutating = request.is_mutating();
        let address = conn.as_ref().and_then(|c| c.path().remote);
        let is_deploy = matches!(request, Request::Deploy { .. } | Request::DeployRef { .. });
        let result = self.dispatch(from, request, conn, events, timeout).await;
        if is_deploy {
            use crate::proto::Activation;
            self.inner.metrics.deploy(match &result {
                Ok(Reply::Activation(Activation::Activated { .. })) => "activated",
                Ok(Reply::Activation(Activation::AlreadyActive { .. })) => "already_active",
                Ok(Reply::Activation(Activation::RolledBack { .. })) => "rolled_back",
                Ok(_) => "activated",
                Err(e) => match e.kind {
                    ErrorKind::Denied
                    | ErrorKind::BadSignature
                    | ErrorKind::Downgrade
                    | ErrorKind::Invalid => "refused",
                    _ => "failed",
                },
            });
        }
        if mutating {
            // The record lists the releases held: publish a change now,
            // not at the next reconcile; and the store's size changed.
            let me = self.clone();
            let _ = self.inner.background.send(Box::pin(async move {
                if me.inner.membership.get().is_some() {
                    me.publish_profile().await;
                }
                me.measure_store().await;
                me.watch_apps().await;
            }));
        }
        if let Err(e) = &result {
            let address = address.as_deref().unwrap_or("unknown");
            if !mutating {
                tracing::debug!(peer = %from.short(), %address, request = kind, error = %e, "request failed");
            } else if let Some(held) = if e.kind == ErrorKind::Denied {
                // A peer that is no operator can send refusals at will:
                // those are logged once per peer per period.
                self.inner.denied.allow(&from.to_string())
            } else {
                Some(0)
            } {
                tracing::warn!(
                    peer = %from.short(),
                    %address,
                    request = kind,
                    kind = ?e.kind,
                    "{kind} refused or failed: {e}{}",
                    p2p_core::ratelog::held_back(held)
                );
                // The event log is rate-limited as the log is: a peer
                // that is no operator cannot flood it.
                self.record(crate::events::EventKind::Refused {
                    request: kind.to_string(),
                    peer: from,
                    error: e.kind.name().to_string(),
                    reason: e.message.clone(),
                })
                .await;
            }
        }
        result
    }

    pub(in crate::agent) async fn dispatch(
        &self,
        from: PeerId,
        request: Request,
        conn: Option<Arc<dyn Connection>>,
        events: Option<mpsc::UnboundedSender<Frame>>,
        timeout: Duration,
    ) -> std::result::Result<Reply, RpcError> {
        let local = self.inner.parts.provider.local_id();
        authorize(&request, from, self.inner.cfg.operators.as_ref(), local)?;
        match request {
            Request::Info => Ok(Reply::Info(Box::new(self.info().await.map_err(rpc)?))),
            Request::List => Ok(Reply::Apps(self.apps().await.map_err(rpc)?)),
            Request::Status { app } => {
                let rec = self.need(&app).await?;
                Ok(Reply::App(Box::new(self.app_info(&rec).await)))
            }
            Request::Start { app } => self.start_app(&app).await,
            Request::Stop { app } => self.stop_app(&app).await,
            Request::Restart { app } => self.restart_app(&app).await,
            Request::Switch {
                app,
                version,
                options,
            } => self.switch(&app, &version, &options, events.as_ref()).await,
            Request::Rollback { app, options } => {
                self.rollback(&app, &options, events.as_ref()).await
            }
            Request::Remove { app, version } => self.remove(&app, version.as_ref()).await,
            request @ (Request::Deploy { .. } | Request::DeployRef { .. }) => {
                // The deploy's typed error becomes the wire's here.
                Ok(self
                    .deploy_request(request, conn, events.as_ref(), timeout)
                    .await?)
            }
            request @ Request::Stage { .. } => Ok(self
                .stage_request(request, conn, events.as_ref(), timeout)
                .await?),
            Request::Catalog => Ok(Reply::Catalog(self.catalog().await.map_err(rpc)?)),
            Request::Release { package } => {
                let d = self
                    .inner
                    .chunks
                    .release(&package)
                    .await
                    .map_err(rpc)?
                    .ok_or_else(|| not_found(format!("release {package} is not held here")))?;
                let signatures = self.inner.chunks.signatures(&package).await.map_err(rpc)?;
                if signatures.is_empty() {
                    return Err(not_found(format!(
                        "release {package} is held here without its signatures \
                         (it arrived before they were kept); fetch it from another peer"
                    )));
                }
                Ok(Reply::Release {
                    descriptor: d.to_bytes(),
                    signatures,
                })
            }
            Request::Fetch { package, from } => Ok(self
                .fetch_release(&package, from, events.as_ref(), timeout)
                .await?),
            Request::Members => match self.inner.membership.get() {
                Some(m) => Ok(Reply::Members(m.entries())),
                None => Err(not_found("membership: this node does not take part")),
            },
            Request::Plan {
                descriptor,
                signatures,
            } => self.plan(from, &descriptor, &signatures).await,
            Request::Logs { .. }
            | Request::Events { .. }
            | Request::FetchChunks { .. }
            | Request::Swarm { .. }
            | Request::FetchAny { .. }
            | Request::Gossip { .. } => Err(RpcError::new(
                ErrorKind::Invalid,
                "logs, chunk fetches, swarm and gossip sessions are streamed; use the protocol",
            )),
        }
    }

    pub(in crate::agent) async fn serve_stream(
        &self,
        conn: Arc<dyn Connection>,
        send: SendStream,
        recv: RecvStream,
    ) {
        let peer = conn.remote_id();
        let mut framed = Framed::with_max(send, recv, MAX_FRAME);
        let Some((env, version)) = accept_request(&mut framed, &peer).await else {
            return;
        };
        let timeout = Duration::from_millis(env.timeout_ms).min(self.inner.cfg.max_request_timeout);
        let kind = env.request.kind();
        if counts_against_rate(&env.request)
            && !lock(&self.inner.rates).take(peer, self.inner.cfg.request_rate)
        {
            let rate = self.inner.cfg.request_rate;
            if let Some(held) = self.inner.over_rate.allow(&peer.to_string()) {
                tracing::warn!(
                    peer = %peer.short(),
                    address = conn.path().remote.as_deref().unwrap_or("unknown"),
                    "a peer is over its request rate ({} a second); answering busy{}",
                    rate.per_second,
                    p2p_core::ratelog::held_back(held)
                );
            }
            let e = RpcError::new(
                ErrorKind::Busy,
                format!(
                    "{kind} refused: more than {} requests a second from this peer; slow down",
                    rate.per_second
                ),
            );
            // The answer waits a while: a peer that floods gets as many
            // refusals a second as it has requests open, not thousands.
            tokio::time::sleep(OVER_RATE_DELAY).await;
            end_with(&mut framed, Frame::Error(e)).await;
            return;
        }
        tracing::debug!(peer = %peer.short(), request = kind, "request");
        let end = match env.request {
            Request::Logs { app, selection } => self.serve_logs(&mut framed, &app, selection).await,
            Request::Events { after, follow } => {
                self.serve_events(&mut framed, after, follow).await
            }
            Request::FetchChunks { package, indexes } => {
                let deadline = tokio::time::Instant::now() + timeout;
                // A slot per request, or "busy" at once: the client asks
                // another holder (see `SwarmConfig::upload_slots`).
                let _slot = match self.inner.upload_slots.take(peer) {
                    Ok(s) => s,
                    Err(why) => {
                        let e = RpcError::new(ErrorKind::Busy, why);
                        end_with(&mut framed, Frame::Error(e)).await;
                        return;
                    }
                };
                let end = self
                    .serve_chunks(&mut framed, &package, &indexes, deadline)
                    .await;
                end_with(&mut framed, end).await;
                // Writing only queues the bytes: the slot is held until
                // the client has read them (it closes its side then), for
                // a bounded time, so that a client that never closes
                // cannot keep it.
                let hold = deadline.min(tokio::time::Instant::now() + SLOT_HOLD);
                let _ = tokio::time::timeout_at(hold, framed.recv_opt::<Frame>()).await;
                return;
            }
            Request::Swarm { package, have } => match self.transfer_for(&package).await {
                Ok(t) => {
                    let max = self.inner.cfg.swarm.max_neighbors;
                    swarm::serve_session(t, conn.clone(), framed, have, max).await;
                    return;
                }
                Err(e) => Frame::Error(e),
            },
            Request::Gossip { root } => match self.inner.membership.get() {
                Some(m) => {
                    m.serve(peer, &mut framed, root).await;
                    return;
                }
                None => Frame::Error(not_found("membership: this node does not take part")),
            },
            Request::FetchAny { .. } => Frame::Error(RpcError::new(
                ErrorKind::Invalid,
                "fetch-any is served by the controller that seeds a release, not by agents",
            )),
            request => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let mutating = request.is_mutating();
                let work = self.handle_within(peer, request, Some(conn.clone()), Some(tx), timeout);
                // Activations finish even if the deadline passes (the gate
                // has its own); read-only requests are cut at the deadline.
                let work = async {
                    if mutating {
                        work.await
                    } else {
                        tokio::time::timeout(timeout, work)
                            .await
                            .unwrap_or_else(|_| {
                                Err(RpcError::new(
                                    ErrorKind::Timeout,
                                    format!("{kind} did not finish within {timeout:?}"),
                                ))
                            })
                    }
                };
                // Progress as it comes, and a heartbeat every second
                // between (protocol version 2 on), through transfer,
                // install and the whole health gate: the client tells a
                // busy node from a dead one by them.
                let beat = version >= ALIVE_VERSION;
                let knows_held = version >= HELD_VERSION;
                let forward = async {
                    let mut gone = false;
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + HEARTBEAT,
                        HEARTBEAT,
                    );
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        let f = tokio::select! {
                            f = rx.recv() => match f {
                                Some(Frame::Event(DeployEvent::AlreadyHeld { .. })) if !knows_held => continue,
                                Some(f) => f,
                                None => break,
                            },
                            _ = tick.tick(), if beat && !gone => Frame::Alive,
                        };
                        if !gone && framed.send(&f).await.is_err() {
                            gone = true;
                        }
                    }
                };
                let (result, ()) = tokio::join!(work, forward);
                match result {
                    Ok(r) => Frame::Done(r),
                    Err(e) => Frame::Error(e),
                }
            }
        };
        end_with(&mut framed, end).await;
    }

    pub(in crate::agent) async fn serve_logs(
        &self,
        framed: &mut Framed,
        app: &str,
        selection: p2p_core::LogSelection,
    ) -> Frame {
        if let Err(e) = self.need(app).await {
            return Frame::Error(e);
        }
        let mut lines = match self.inner.parts.runtime.logs(app, selection).await {
            Ok(l) => l,
            Err(e) => return Frame::Error(rpc(e)),
        };
        while let Some(line) = lines.next().await {
            match line {
                Ok(l) => {
                    if framed.send(&Frame::Log(l)).await.is_err() {
                        return Frame::Done(Reply::Ok); // the follower left
                    }
                }
                Err(e) => return Frame::Error(rpc(e)),
            }
        }
        Frame::Done(Reply::Ok)
    }

    pub(in crate::agent) async fn serve_chunks(
        &self,
        framed: &mut Framed,
        package: &PackageId,
        indexes: &[u32],
        deadline: tokio::time::Instant,
    ) -> Frame {
        let d = match self.inner.chunks.release_to_serve(package).await {
            Ok(Some(d)) => d,
            Ok(None) => return Frame::Error(not_found(format!("release {package}"))),
            Err(e) => return Frame::Error(rpc(e)),
        };
        let chunks = &self.inner.chunks;
        let (d, cap) = (&d, self.inner.swarm.upload.as_deref());
        let metrics = &self.inner.metrics;
        send_chunks(framed, package, indexes, |i| async move {
            // Under an upload cap, a chunk whose turn would come after the
            // request's deadline is refused as busy at once (the client
            // asks elsewhere) rather than booked and sent too late.
            if let Some(cap) = cap {
                let len = crate::chunks::chunk_len(d, i as usize);
                match cap.book(len, deadline) {
                    Some(start) => tokio::time::sleep_until(start).await,
                    None => {
                        return Err(Error::Busy {
                            what: format!(
                                "this node's upload cap ({} bytes/s) is booked past the request's deadline",
                                cap.rate()
                            ),
                        });
                    }
                }
            }
            let chunk = chunks.serve(d, i as usize).await;
            if let Ok(Some(bytes)) = &chunk {
                metrics.chunk("sent", false, bytes.len());
            }
            chunk
        })
        .await
    }
}
