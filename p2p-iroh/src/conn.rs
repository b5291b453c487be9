//! [`IrohConnection`]: one QUIC connection as a p2p-core [`Connection`].

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iroh::TransportAddr;
use iroh::endpoint::{self, ConnectionError, VarInt};
use p2p_core::sync::lock;
use p2p_core::{Connection, Error, PathInfo, PathKind, PeerId, RecvStream, Result, SendStream};

/// QUIC application error code for an orderly close by the SDK.
pub(crate) const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code for a refusal (allow-list, no listener).
pub(crate) const CLOSE_REFUSED: u32 = 1;

/// A close reason is carried in one QUIC frame; keep it well under a packet.
const MAX_REASON: usize = 900;

/// Prefix of refusal reasons, the same one the p2p-core admission wrapper
/// uses, so a refused dialer reports [`Error::Denied`].
pub(crate) const DENIED_PREFIX: &str = "admission denied: ";

/// A verified connection to one peer over iroh.
///
/// Streams are QUIC bidirectional streams. A stream opened with
/// [`open_bi`](Connection::open_bi) becomes visible to the peer's
/// [`accept_bi`](Connection::accept_bi) when its first byte (or its finish)
/// arrives, as QUIC specifies.
pub struct IrohConnection {
    conn: endpoint::Connection,
    remote: PeerId,
    /// Why we closed it, so that local operations report our own reason.
    local_reason: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for IrohConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohConnection")
            .field("remote", &self.remote.short())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl IrohConnection {
    pub(crate) fn new(conn: endpoint::Connection) -> Self {
        let remote = crate::addr::peer_id(&conn.remote_id());
        IrohConnection {
            conn,
            remote,
            local_reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the reason for a local close is kept, shared with the
    /// provider so that its `close` can fill it in.
    pub(crate) fn reason_slot(&self) -> Arc<Mutex<Option<String>>> {
        self.local_reason.clone()
    }

    /// The underlying iroh connection, for statistics (round-trip time,
    /// paths) or features the SDK does not wrap.
    pub fn inner(&self) -> &endpoint::Connection {
        &self.conn
    }

    fn error(&self, e: ConnectionError) -> Error {
        let local = lock(&self.local_reason).clone();
        match local {
            // We closed it (or our provider did): whatever QUIC reports
            // after that, the caller's answer is our reason.
            Some(reason) => Error::closed(reason),
            None => connection_error(e, None),
        }
    }
}

/// The path `conn` sends on now: the selected one, from iroh's own path
/// list.
pub(crate) fn selected_path(conn: &endpoint::Connection) -> PathInfo {
    let paths = conn.paths();
    let Some(p) = paths.iter().find(|p| p.is_selected()) else {
        // None chosen yet (several being tried): the kind is not known,
        // an address the peer was seen at is (for logs).
        return PathInfo {
            remote: paths
                .iter()
                .next()
                .and_then(|p| describe(p.remote_addr()).1),
            ..PathInfo::unknown()
        };
    };
    let (kind, remote) = describe(p.remote_addr());
    PathInfo {
        kind,
        remote,
        rtt: Some(p.rtt()),
    }
}

/// Direct or relayed, and the address in the SDK's notation.
pub(crate) fn describe(addr: &TransportAddr) -> (PathKind, Option<String>) {
    match addr {
        TransportAddr::Ip(a) => (PathKind::Direct, Some(a.to_string())),
        TransportAddr::Relay(url) => (PathKind::Relayed, Some(url.to_string())),
        other => (PathKind::Unknown, Some(format!("{other:?}"))),
    }
}

/// Closes `conn` with `reason`, truncated to fit one QUIC frame.
pub(crate) fn close_with(conn: &endpoint::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), truncate(reason).as_bytes());
}

fn truncate(reason: &str) -> &str {
    p2p_core::error::truncate_reason(reason, MAX_REASON)
}

/// Maps a QUIC connection error to the SDK error a caller can act on.
/// `local` is the reason we gave when we closed it ourselves.
pub(crate) fn connection_error(e: ConnectionError, local: Option<&str>) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            if reason.is_empty() {
                Error::closed(format!(
                    "closed by peer (code {}) without a reason",
                    c.error_code
                ))
            } else {
                Error::closed(reason)
            }
        }
        ConnectionError::LocallyClosed => {
            Error::closed(local.unwrap_or("closed by this node").to_string())
        }
        ConnectionError::TimedOut => Error::closed(
            "connection lost: no traffic from the peer within the idle timeout".to_string(),
        ),
        ConnectionError::Reset => {
            Error::closed("connection reset by peer (it probably restarted)".to_string())
        }
        ConnectionError::ConnectionClosed(c) => {
            Error::closed(format!("connection aborted by the peer's QUIC stack: {c}"))
        }
        other => Error::protocol(format!("QUIC connection failed: {other}")),
    }
}

#[async_trait]
impl Connection for IrohConnection {
    fn remote_id(&self) -> PeerId {
        self.remote
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream)> {
        let (send, recv) = self.conn.open_bi().await.map_err(|e| self.error(e))?;
        Ok((Box::new(send), Box::new(recv)))
    }

    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)> {
        let (send, recv) = self.conn.accept_bi().await.map_err(|e| self.error(e))?;
        Ok((Box::new(send), Box::new(recv)))
    }

    fn is_connected(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn path(&self) -> PathInfo {
        selected_path(&self.conn)
    }

    async fn close(&self, reason: &str) {
        {
            let mut local = lock(&self.local_reason);
            if local.is_none() && self.conn.close_reason().is_none() {
                *local = Some(reason.to_string());
            }
        }
        close_with(&self.conn, CLOSE_NORMAL, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let r = "é".repeat(1000);
        let t = truncate(&r);
        assert!(t.len() <= MAX_REASON);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn local_close_reports_our_reason() {
        let e = connection_error(ConnectionError::LocallyClosed, Some("shutting down"));
        assert!(matches!(e, Error::Closed { ref reason } if reason == "shutting down"));
        let e = connection_error(ConnectionError::TimedOut, None);
        assert!(e.to_string().contains("idle timeout"), "{e}");
    }
}
