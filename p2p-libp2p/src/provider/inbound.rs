//! Inbound streams: every stream `libp2p-stream` hands over is taken at
//! once and handled in its own task (bounded in all and per peer); its
//! header routes it to a live session as a data stream, or opens a new
//! session, which is welcomed and queued for the listener, or refused.

use std::sync::Arc;

use futures::StreamExt;
use libp2p::Stream;
use p2p_core::framing::write_frame;
use p2p_core::sync::lock;
use p2p_core::{Connection, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::state::Core;
use crate::addr;
use crate::session::{
    HEADER_LEN, Header, Io, Kind, Libp2pConnection, MAX_CONTROL_FRAME, OpenReply, RECEIVED,
    Refusal, SessionKey, route_data,
};

/// Inbound streams whose header is being read or which wait for room in a
/// connection's accept queue, across all peers; more are dropped.
pub(super) const MAX_INBOUND_HANDOVERS: usize = 4096;

/// The same from one peer, so that one peer cannot take them all.
const MAX_INBOUND_HANDOVERS_PER_PEER: usize = 512;

/// Counts one inbound hand-over of a peer while it lives.
struct PeerHandOver {
    core: Arc<Core>,
    peer: libp2p::PeerId,
}

impl PeerHandOver {
    fn start(core: &Arc<Core>, peer: libp2p::PeerId) -> Option<Self> {
        let mut counts = lock(&core.handovers);
        let n = counts.entry(peer).or_insert(0);
        if *n >= MAX_INBOUND_HANDOVERS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerHandOver {
            core: core.clone(),
            peer,
        })
    }
}

impl Drop for PeerHandOver {
    fn drop(&mut self) {
        let mut counts = lock(&self.core.handovers);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Takes every inbound stream off `libp2p-stream` at once and handles it
/// in its own task: `libp2p-stream` drops inbound streams while its
/// hand-off channel is full, so this loop must never wait on a peer.
pub(super) async fn route_inbound(core: Arc<Core>, mut incoming: crate::streams::IncomingStreams) {
    loop {
        let next = tokio::select! {
            biased;
            _ = core.stop.cancelled() => return,
            next = incoming.next() => next,
        };
        let Some((peer, stream)) = next else { return };
        // Bounded, in all and per peer: beyond the caps a stream is
        // dropped, which its opener sees and retries.
        let Ok(permit) = core.inbound.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many inbound streams in hand-over; dropping one");
            continue;
        };
        let Some(per_peer) = PeerHandOver::start(&core, peer) else {
            tracing::debug!(%peer, "too many inbound streams from one peer in hand-over; dropping one");
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            handle_inbound(core, peer, stream).await;
            drop((permit, per_peer));
        });
    }
}

async fn handle_inbound(core: Arc<Core>, peer: libp2p::PeerId, stream: Stream) {
    let mut io = stream.compat();
    let mut raw = [0u8; HEADER_LEN];
    let limit = core.config.connect_timeout;
    let header_wait = limit / 4;
    match tokio::time::timeout(header_wait, io.read_exact(&mut raw)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound stream ended before its header");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound stream sent no header in time");
            return;
        }
    }
    let header = match Header::decode(&raw) {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "inbound stream with a bad header");
            return;
        }
    };
    // Tell the opener the stream made it past libp2p-stream's hand-off.
    let received = async {
        io.write_u8(RECEIVED).await?;
        io.flush().await
    };
    if !matches!(
        tokio::time::timeout(header_wait, received).await,
        Ok(Ok(()))
    ) {
        return;
    }
    match header.kind {
        Kind::Data { opener_dialed } => {
            let key = SessionKey {
                peer,
                id: header.session,
                we_dialed: !opener_dialed,
            };
            route_data(core.registry.get(&key), io, limit).await;
        }
        Kind::Open => accept_session(&core, peer, header.session, io).await,
    }
}

/// Answers a dialer's open: welcome and hand the connection to the
/// listener, or refuse with why.
async fn accept_session(core: &Arc<Core>, peer: libp2p::PeerId, session: u128, mut io: Io) {
    let limit = core.config.connect_timeout;
    let refuse = |code, reason: &str| OpenReply::Refused {
        code,
        reason: reason.to_string(),
    };
    let remote = addr::from_libp2p(&peer);
    let key = SessionKey {
        peer,
        id: session,
        we_dialed: false,
    };
    let permit = match &remote {
        Err(e) => Err(refuse(Refusal::Denied, &e.to_string())),
        Ok(_) if core.stop.is_cancelled() => Err(refuse(Refusal::Closing, "the node is closing")),
        Ok(id) if !core.allowed(id) => Err(refuse(
            Refusal::Denied,
            "admission denied: not in the peer's allow-list",
        )),
        Ok(_) if core.registry.contains(&key) => Err(refuse(
            Refusal::Denied,
            "a connection with this session id is already open",
        )),
        Ok(_) => {
            let tx = lock(&core.listener).as_ref().map(|(_, tx)| tx.clone());
            match tx.map(|tx| tx.try_reserve_owned()) {
                None | Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                    Err(refuse(Refusal::NotAccepting, "no listener"))
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) => Err(refuse(
                    Refusal::Busy,
                    "too many connections waiting to be accepted",
                )),
                Some(Ok(permit)) => Ok(permit),
            }
        }
    };
    let (permit, remote) = match (permit, remote) {
        (Ok(permit), Ok(remote)) => (permit, remote),
        (refused, _) => {
            let refusal = refused
                .err()
                .unwrap_or_else(|| refuse(Refusal::Denied, "not a p2p-deploy peer id"));
            let _ = tokio::time::timeout(limit, async {
                write_frame(&mut io, &refusal, MAX_CONTROL_FRAME).await?;
                io.shutdown()
                    .await
                    .map_err(|e| Error::from_stream_io("refusing a connection", e))
            })
            .await;
            return;
        }
    };
    // Registered before the welcome goes out, so that the dialer's first
    // stream always finds it. Dropped (and so closed, telling the dialer)
    // if the provider closed or the listener went away meanwhile.
    let conn = Libp2pConnection::start(key, remote, core.env(), io);
    if !conn.session().hand_over(&OpenReply::Welcome).await {
        tracing::debug!(%peer, "could not answer a hand-over");
        return;
    }
    if conn.is_connected() && !core.stop.is_cancelled() {
        permit.send(conn);
    }
}
