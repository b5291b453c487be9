//! Opening an SDK connection to a peer: a libp2p connection from the
//! swarm task, then a session's control stream and the peer's answer,
//! retried while the libp2p connection stays open.

use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::swarm::ConnectionId;
use p2p_core::framing::{decode, read_frame_bytes};
use p2p_core::{Connection, Error, PeerAddr, PeerId, Result};

use super::Libp2pProvider;
use super::state::Core;
use crate::addr;
use crate::driver::{Command, ConnState};
use crate::session::{
    Header, Io, Kind, Libp2pConnection, MAX_CONTROL_FRAME, OPEN_ATTEMPTS, OpenReply, SessionKey,
    backoff, open_raw,
};

impl Libp2pProvider {
    /// Opens an SDK connection to `peer`.
    pub async fn dial(&self, peer: &PeerAddr) -> Result<Libp2pConnection> {
        let core = &self.core;
        core.check_open()?;
        let who = format!("peer {}", peer.id.short());
        if peer.id == core.local {
            return Err(Error::invalid(
                "peer address",
                format!("{who} is this node itself"),
            ));
        }
        if !core.allowed(&peer.id) {
            return Err(Error::denied(format!(
                "admission denied: {who} is not in this node's allow-list"
            )));
        }
        let mut addrs = addr::to_multiaddrs(peer)?;
        if !core.config.quic_enabled() {
            let before = addrs.len();
            addrs.retain(|a| !addr::is_quic(a));
            if before > 0 && addrs.is_empty() {
                return Err(Error::invalid(
                    "peer address",
                    format!(
                        "{peer}: only QUIC addresses, and QUIC is off on this node \
                         (it has a pre-shared key, or QUIC disabled); give a TCP address"
                    ),
                ));
            }
        }
        let limit = core.config.connect_timeout;
        tokio::time::timeout(limit, self.hand_over(peer.id, addrs, &who))
            .await
            .map_err(|_| Error::timeout(format!("connecting to {who}"), limit))?
    }

    /// Waits briefly for the swarm to report whether libp2p connection
    /// `conn` closed (a close travels a round trip behind the failure it
    /// caused).
    async fn fate_of(&self, conn: ConnectionId) -> ConnState {
        let wait = (self.core.config.connect_timeout / 4).min(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = self.core.conn_state(conn).await;
            if state != ConnState::Open || tokio::time::Instant::now() >= deadline {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn hand_over(
        &self,
        id: PeerId,
        addrs: Vec<Multiaddr>,
        who: &str,
    ) -> Result<Libp2pConnection> {
        let core = &self.core;
        let lp = addr::to_libp2p(&id);
        let mut last_err = None;
        for attempt in 0..OPEN_ATTEMPTS {
            let conn = core
                .command(|reply| Command::Dial {
                    peer: lp,
                    addrs: addrs.clone(),
                    who: who.to_string(),
                    reply,
                })
                .await??;
            let session = core.new_session_id();
            match open_session(core, lp, session, who).await {
                Ok((io, reply)) => {
                    reply.into_result(who)?;
                    let key = SessionKey {
                        peer: lp,
                        id: session,
                        we_dialed: true,
                    };
                    let conn = Libp2pConnection::start(key, id, core.env(), io);
                    if !conn.is_connected() {
                        return Err(core.closed_error());
                    }
                    return Ok(conn);
                }
                Err(HandOverError {
                    error,
                    received: true,
                }) => {
                    // The peer took the stream, then failed to answer.
                    return Err(error);
                }
                Err(HandOverError { error: e, .. }) => {
                    core.check_open()?;
                    match self.fate_of(conn).await {
                        ConnState::ClosedByPeer { after }
                            if after <= core.config.connect_timeout =>
                        {
                            // How libp2p's allow-list and connection limits
                            // refuse: the peer closes a connection as soon
                            // as it is established.
                            return Err(Error::denied(format!(
                                "admission denied: {who} closed the connection {after:.1?} after \
                                 the handshake; it does not admit this node (allow-list or \
                                 connection limit), or it is shutting down ({e})"
                            )));
                        }
                        ConnState::ClosedByPeer { .. } | ConnState::Closed => {
                            return Err(Error::unreachable(format!(
                                "the connection to {who} was lost during the hand-over ({e})"
                            )));
                        }
                        ConnState::Open => {}
                    }
                    tracing::debug!(attempt, error = %e, "hand-over failed; trying again");
                    last_err = Some(e);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::unreachable(format!("{who}: hand-over failed"))))
    }
}

/// Why a hand-over failed, and whether the peer had taken the stream
/// (answered `RECEIVED`) before it did.
struct HandOverError {
    error: Error,
    received: bool,
}

/// Opens the control stream of a new session and reads the peer's answer.
async fn open_session(
    core: &Core,
    peer: libp2p::PeerId,
    session: u128,
    who: &str,
) -> std::result::Result<(Io, OpenReply), HandOverError> {
    let header = Header {
        kind: Kind::Open,
        session,
    }
    .encode();
    let mut io = open_raw(
        &core.control,
        &core.gates,
        peer,
        &header,
        core.config.connect_timeout,
        who,
    )
    .await
    .map_err(|error| HandOverError {
        error,
        received: false,
    })?;
    let after = |error| HandOverError {
        error,
        received: true,
    };
    let mut buf = Vec::new();
    if !read_frame_bytes(&mut io, &mut buf, MAX_CONTROL_FRAME)
        .await
        .map_err(after)?
    {
        return Err(after(Error::unreachable(format!(
            "{who} ended the hand-over without an answer"
        ))));
    }
    let reply: OpenReply = decode(&buf).map_err(after)?;
    Ok((io, reply))
}
