//! [`Libp2pConnection`]: the handle of a session, and the p2p-core
//! [`Connection`] over it.

use std::sync::Arc;

use async_trait::async_trait;
use p2p_core::{Connection, Error, PeerId, RecvStream, Result, SendStream};
use tokio::io::AsyncReadExt;

use super::opening::{OPEN_ATTEMPTS, Slot, backoff, open_raw};
use super::state::{Guard, Session, SessionEnv, SessionKey};
use super::stream;
use super::wire::{ACK_NO_SESSION, ACK_OK, HEADER_LEN, Header, Io, Kind, truncate};

/// A connection to one peer over libp2p: a p2p-core [`Connection`].
///
/// Cloning gives another handle to the same connection; it closes when
/// [`close`](Connection::close) is called or when the last handle and the
/// last of its streams are dropped.
#[derive(Clone)]
pub struct Libp2pConnection {
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Libp2pConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.guard.session;
        f.debug_struct("Libp2pConnection")
            .field("remote", &s.remote.short())
            .field("we_dialed", &s.key.we_dialed)
            .field("connected", &!s.closed.is_cancelled())
            .finish()
    }
}

impl Libp2pConnection {
    /// Registers a new session whose control stream is `control` (the
    /// welcome already exchanged), starts its control reader, and returns
    /// the first handle. On the accepting side, call
    /// [`Session::hand_over`] next.
    ///
    /// If the provider closed meanwhile, or the key is taken, the session
    /// starts closed: check [`Connection::is_connected`].
    pub(crate) fn start(key: SessionKey, remote: PeerId, env: SessionEnv, control: Io) -> Self {
        Libp2pConnection {
            guard: Session::start(key, remote, env, control),
        }
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.guard.session
    }

    /// Whether this side dialed the connection.
    pub fn we_dialed(&self) -> bool {
        self.guard.session.key.we_dialed
    }

    fn wrap(&self, io: Io, slot: Option<Slot>) -> (SendStream, RecvStream) {
        stream::wrap(io, &self.guard, slot)
    }
}

#[async_trait]
impl Connection for Libp2pConnection {
    fn remote_id(&self) -> PeerId {
        self.guard.session.remote
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream)> {
        let s = &self.guard.session;
        let header = Header {
            kind: Kind::Data {
                opener_dialed: s.key.we_dialed,
            },
            session: s.key.id,
        }
        .encode();
        let mut last_err = None;
        for attempt in 0..OPEN_ATTEMPTS {
            s.check_open()?;
            let attempt_result = tokio::select! {
                biased;
                _ = s.closed.cancelled() => return Err(s.closed_error()),
                r = open_data_stream(s, &header) => r,
            };
            match attempt_result {
                Ok(Some((io, slot))) => return Ok(self.wrap(io, Some(slot))),
                Ok(None) => {
                    s.mark_closed(format!("{} no longer has this connection", s.who()));
                    return Err(s.closed_error());
                }
                Err(Retry(e)) => {
                    tracing::debug!(attempt, error = %e, "stream dropped before the peer answered; opening again");
                    last_err = Some(e);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::closed("stream could not be opened")))
    }

    fn path(&self) -> p2p_core::PathInfo {
        let s = &self.guard.session;
        s.env.paths.path_to(&s.key.peer)
    }

    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)> {
        let s = &self.guard.session;
        s.check_open()?;
        let mut rx = tokio::select! {
            biased;
            _ = s.closed.cancelled() => return Err(s.closed_error()),
            rx = s.inbound_rx.lock() => rx,
        };
        tokio::select! {
            biased;
            _ = s.closed.cancelled() => {
                rx.close();
                while rx.try_recv().is_ok() {}
                Err(s.closed_error())
            }
            io = rx.recv() => match io {
                Some(io) => Ok(self.wrap(io, None)),
                None => Err(s.closed_error()),
            },
        }
    }

    fn is_connected(&self) -> bool {
        !self.guard.session.closed.is_cancelled()
    }

    async fn close(&self, reason: &str) {
        self.guard
            .session
            .close(reason, format!("connection closed: {}", truncate(reason)))
            .await;
    }
}

/// An attempt failed in a way worth another try.
struct Retry(Error);

/// Opens one data stream: `Some` once the peer queued it, `None` when the
/// peer has no such session.
async fn open_data_stream(
    s: &Session,
    header: &[u8; HEADER_LEN],
) -> std::result::Result<Option<(Io, Slot)>, Retry> {
    let _pending = s
        .pending_opens
        .clone()
        .acquire_owned()
        .await
        .expect("the pending-opens semaphore is never closed");
    let slot = s.env.gates.slot(s.key.peer).await;
    let mut io = open_raw(
        &s.env.control,
        &s.env.gates,
        s.key.peer,
        header,
        s.env.open_timeout,
        &s.who(),
    )
    .await
    .map_err(Retry)?;
    // Past the gate: wait for room in the peer's accept queue.
    match io.read_u8().await {
        Ok(ACK_OK) => Ok(Some((io, slot))),
        Ok(ACK_NO_SESSION) => Ok(None),
        Ok(other) => Err(Retry(Error::protocol(format!(
            "{} answered a new stream with {other}",
            s.who()
        )))),
        Err(e) => Err(Retry(Error::from_stream_io(
            &format!("opening a stream to {}", s.who()),
            e,
        ))),
    }
}
