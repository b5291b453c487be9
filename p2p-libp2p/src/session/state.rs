//! A session: one SDK connection's state, shared by its handles, its
//! streams, the registry of live sessions and its control reader; the
//! control stream (hand-over, close from either side) and the inbound
//! data streams queued for `accept_bi`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use p2p_core::framing::{decode, read_frame_bytes, write_frame};
use p2p_core::sync::lock;
use p2p_core::{Error, PeerId, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::opening::Gates;
use super::wire::{ACK_NO_SESSION, ACK_OK, ControlMsg, Io, MAX_CONTROL_FRAME, OpenReply, truncate};

/// Identifies a session among all sessions with all peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SessionKey {
    pub(crate) peer: libp2p::PeerId,
    pub(crate) id: u128,
    pub(crate) we_dialed: bool,
}

/// The live sessions of a provider.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<BTreeMap<SessionKey, Arc<Session>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Registry {
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Arc<Session>> {
        lock(&self.sessions).get(key).cloned()
    }

    /// Whether a session with this key is live.
    pub(crate) fn contains(&self, key: &SessionKey) -> bool {
        lock(&self.sessions).contains_key(key)
    }

    /// Adds a session; false once the registry was drained for closing,
    /// or when its key is taken.
    fn insert(&self, s: Arc<Session>) -> bool {
        // Checked under the map's lock, which `drain` holds when it sets
        // the flag: no session slips in after a drain.
        let mut sessions = lock(&self.sessions);
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        match sessions.entry(s.key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(s);
                true
            }
            std::collections::btree_map::Entry::Occupied(_) => false,
        }
    }

    /// Removes `s`, and only `s`: never a later session with the same key.
    fn remove(&self, s: &Session) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&s.key)
            .is_some_and(|there| std::ptr::eq(Arc::as_ptr(there), s))
        {
            sessions.remove(&s.key);
        }
    }

    /// Takes every session out, for closing them all; later inserts fail.
    pub(crate) fn drain(&self) -> Vec<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        std::mem::take(&mut *sessions).into_values().collect()
    }
}

/// Settings a session needs from the provider.
#[derive(Clone)]
pub(crate) struct SessionEnv {
    pub(crate) control: crate::streams::Control,
    pub(crate) gates: Arc<Gates>,
    pub(crate) registry: Weak<Registry>,
    pub(crate) open_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_streams: usize,
    pub(crate) paths: crate::paths::PathBook,
}

/// One SDK connection's state, shared by its handles, its streams, the
/// registry and its control reader.
pub(crate) struct Session {
    pub(super) key: SessionKey,
    pub(super) remote: PeerId,
    pub(super) env: SessionEnv,
    pub(super) closed: CancellationToken,
    reason: Mutex<Option<String>>,
    inbound_tx: mpsc::Sender<Io>,
    pub(super) inbound_rx: tokio::sync::Mutex<mpsc::Receiver<Io>>,
    control_send: Mutex<Option<WriteHalf<Io>>>,
    /// Whether the peer has its answer to the open (always, on the
    /// dialer): before that, a close must not put a frame on the control
    /// stream, where the dialer expects the answer.
    handed_over: std::sync::atomic::AtomicBool,
    /// Opens of this connection waiting for room in the peer's queue; a
    /// cap, so that one connection whose peer does not accept cannot take
    /// the whole per-peer stream budget.
    pub(super) pending_opens: Arc<tokio::sync::Semaphore>,
    guard: OnceLock<Weak<Guard>>,
    /// Set by `close` before it marks the session closed when it will put
    /// the reason on the control stream: the reader then waits for the
    /// peer's answer instead of letting go of its half at once.
    close_sent: std::sync::atomic::AtomicBool,
    /// Cancelled when the control reader is done: after the peer's answer
    /// to our close (its side of the control stream finished), or at once
    /// when no answer is awaited.
    answered: CancellationToken,
}

impl Session {
    /// Registers a new session whose control stream is `control` (the
    /// welcome already exchanged), starts its control reader, and returns
    /// the guard of its first handle (`Libp2pConnection::start` wraps it).
    pub(super) fn start(
        key: SessionKey,
        remote: PeerId,
        env: SessionEnv,
        control: Io,
    ) -> Arc<Guard> {
        let (read, write) = tokio::io::split(control);
        let share = (env.max_streams / 4).max(1);
        let (inbound_tx, inbound_rx) = mpsc::channel(share);
        let registry = env.registry.upgrade();
        let session = Arc::new(Session {
            key,
            remote,
            env,
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
            inbound_tx,
            inbound_rx: tokio::sync::Mutex::new(inbound_rx),
            control_send: Mutex::new(Some(write)),
            handed_over: std::sync::atomic::AtomicBool::new(key.we_dialed),
            pending_opens: Arc::new(tokio::sync::Semaphore::new(share)),
            guard: OnceLock::new(),
            close_sent: std::sync::atomic::AtomicBool::new(false),
            answered: CancellationToken::new(),
        });
        let guard = Arc::new(Guard {
            session: session.clone(),
        });
        let _ = session.guard.set(Arc::downgrade(&guard));
        if !registry.is_some_and(|r| r.insert(session.clone())) {
            session.mark_closed("connection closed: the provider is closed".into());
        }
        tokio::spawn(read_control(session.clone(), read));
        guard
    }

    /// Sends the dialer its answer (the acceptor's first frame on the
    /// control stream). False if the session closed first or the write
    /// failed, which closes it.
    pub(crate) async fn hand_over(&self, reply: &OpenReply) -> bool {
        let Some(mut w) = lock(&self.control_send).take() else {
            return false;
        };
        let sent = tokio::time::timeout(
            self.env.open_timeout,
            write_frame(&mut w, reply, MAX_CONTROL_FRAME),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.mark_closed(format!("could not answer {}", self.who()));
            return false;
        }
        self.handed_over
            .store(true, std::sync::atomic::Ordering::Release);
        let mut slot = lock(&self.control_send);
        if self.closed.is_cancelled() {
            return false;
        }
        *slot = Some(w);
        true
    }

    pub(super) fn who(&self) -> String {
        format!("peer {}", self.remote.short())
    }

    /// Marks the session closed with `reason` (the first reason wins), ends
    /// its streams and unregisters it. True if this call closed it.
    pub(super) fn mark_closed(&self, reason: String) -> bool {
        {
            let mut r = lock(&self.reason);
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
        }
        self.closed.cancel();
        if let Some(reg) = self.env.registry.upgrade() {
            reg.remove(self);
        }
        // Let go of the control stream (the reader task drops its half as
        // it sees the cancellation) and of streams nobody accepted.
        drop(lock(&self.control_send).take());
        self.drain_inbound();
        true
    }

    /// Drops streams queued for `accept_bi` once the session is closed.
    fn drain_inbound(&self) {
        if let Ok(mut rx) = self.inbound_rx.try_lock() {
            rx.close();
            while rx.try_recv().is_ok() {}
        }
    }

    pub(crate) fn closed_error(&self) -> Error {
        let reason = lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        Error::closed(reason)
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(self.closed_error())
        } else {
            Ok(())
        }
    }

    /// Closes with `reason` and tells the peer, within the close timeout.
    ///
    /// Returns once the peer answered (finished its side of the control
    /// stream), so the reason has arrived: a QUIC connection closed right
    /// after (as the provider's `close` does next) drops stream data not
    /// yet sent, and the peer would see the connection end without it.
    pub(crate) async fn close(&self, reason: &str, local_reason: String) {
        let handed_over = self.handed_over.load(std::sync::atomic::Ordering::Acquire);
        let writer = lock(&self.control_send).take().filter(|_| handed_over);
        if writer.is_some() {
            self.close_sent
                .store(true, std::sync::atomic::Ordering::Release);
        }
        if !self.mark_closed(local_reason) {
            return;
        }
        if let Some(mut w) = writer {
            let msg = ControlMsg::Close {
                reason: truncate(reason).to_string(),
            };
            let _ = tokio::time::timeout(self.env.close_timeout, async {
                write_frame(&mut w, &msg, MAX_CONTROL_FRAME).await?;
                w.shutdown()
                    .await
                    .map_err(|e| Error::from_stream_io("finishing the control stream", e))?;
                self.answered.cancelled().await;
                Ok::<_, Error>(())
            })
            .await;
        }
    }

    /// Queues an inbound data stream for `accept_bi`: waits for room (the
    /// peer's `open_bi` waits meanwhile), acknowledges, then queues.
    pub(crate) async fn deliver(&self, mut io: Io) {
        // The opener sends nothing until it has the answer, so anything
        // readable meanwhile (end of stream, a reset) means it gave up.
        let mut probe = [0u8; 1];
        let permit = tokio::select! {
            biased;
            _ = self.closed.cancelled() => None,
            p = self.inbound_tx.reserve() => p.ok(),
            _ = io.read(&mut probe) => return,
        };
        let ack = if permit.is_some() {
            ACK_OK
        } else {
            ACK_NO_SESSION
        };
        let sent = async {
            io.write_u8(ack).await?;
            io.flush().await
        };
        let acked = tokio::time::timeout(self.env.open_timeout, sent)
            .await
            .is_ok_and(|r| r.is_ok());
        if let (true, Some(p)) = (acked, permit) {
            p.send(io);
        }
    }

    fn guard(&self) -> Option<Arc<Guard>> {
        self.guard.get().and_then(Weak::upgrade)
    }
}

/// Reads the control stream until the peer closes or the session ends.
async fn read_control(session: Arc<Session>, mut read: ReadHalf<Io>) {
    let mut buf = Vec::new();
    let r = tokio::select! {
        biased;
        _ = session.closed.cancelled() => {
            if session.close_sent.load(std::sync::atomic::Ordering::Acquire) {
                // Our close is on its way: the peer answers by finishing
                // its side once it has read it.
                let _ = tokio::time::timeout(
                    session.env.close_timeout,
                    tokio::io::copy(&mut read, &mut tokio::io::sink()),
                )
                .await;
            }
            session.answered.cancel();
            return;
        }
        r = read_frame_bytes(&mut read, &mut buf, MAX_CONTROL_FRAME) => r,
    };
    let who = session.who();
    let reason = match r {
        Ok(true) => match decode::<ControlMsg>(&buf) {
            Ok(ControlMsg::Close { reason }) => format!("closed by {who}: {reason}"),
            Err(e) => format!("{who} sent a malformed control message: {e}"),
        },
        Ok(false) => format!("{who} ended the connection without a reason"),
        Err(e) => format!("connection to {who} lost: {e}"),
    };
    tracing::debug!(%reason, "connection ended");
    // Answer a close by finishing our side of the control stream.
    let writer = lock(&session.control_send).take();
    session.mark_closed(reason);
    if let Some(mut w) = writer {
        let _ = tokio::time::timeout(session.env.close_timeout, w.shutdown()).await;
    }
    // Both sides closing at once: ours need not wait for an answer.
    session.answered.cancel();
}

/// Keeps a session open: held by every connection handle and every stream.
/// When the last one goes, the session is closed and the peer told.
pub(crate) struct Guard {
    pub(super) session: Arc<Session>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = self.session.clone();
        if s.closed.is_cancelled() {
            return;
        }
        const WHY: &str = "the connection was dropped";
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { s.close(WHY, format!("connection closed: {WHY}")).await });
            }
            // No runtime to send the reason on: the peer sees the control
            // stream end instead.
            Err(_) => {
                s.mark_closed(format!("connection closed: {WHY}"));
            }
        }
    }
}

/// Accepts an inbound data stream for an existing session, answering the
/// opener. Streams for unknown sessions are refused with
/// [`ACK_NO_SESSION`].
pub(crate) async fn route_data(session: Option<Arc<Session>>, mut io: Io, open_timeout: Duration) {
    match session.filter(|s| s.guard().is_some() && !s.closed.is_cancelled()) {
        Some(s) => s.deliver(io).await,
        None => {
            let _ = tokio::time::timeout(open_timeout, async {
                io.write_u8(ACK_NO_SESSION).await?;
                io.shutdown().await
            })
            .await;
        }
    }
}
