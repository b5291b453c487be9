//! SDK connections over libp2p: the wire format, [`Libp2pConnection`] and
//! its streams.
//!
//! libp2p keeps one (rarely two) connections per peer and `libp2p-stream`
//! opens streams to a *peer*, not to a connection. An SDK connection is
//! therefore a session: a control stream opened by the dialer, plus any
//! number of data streams, each of which names its session in a header.
//! Many sessions to one peer share its libp2p connection, and the inbound
//! streams of a peer are demultiplexed to their sessions by that header.
//!
//! Every stream starts with a 20-byte header from its opener:
//!
//! | bytes | meaning |
//! |---|---|
//! | 2 | magic `PD` |
//! | 1 | version, 1 |
//! | 1 | kind: 1 open a session, 2 data stream of a session the opener dialed, 3 data stream of a session the receiver dialed |
//! | 16 | session id, chosen by the dialer |
//!
//! The receiver answers every header at once with the byte [`RECEIVED`],
//! then an open with one frame (p2p-core framing) holding an
//! [`OpenReply`], and a data stream with one more byte: [`ACK_OK`] once
//! the stream is queued for `accept_bi`, [`ACK_NO_SESSION`] when the
//! session is gone.
//!
//! `libp2p-stream` hands inbound streams over through a channel with room
//! for one and drops a stream that arrives while it is full. So an opener
//! opens at most one stream to a peer at a time until that stream is
//! [`RECEIVED`] (see [`Gates`]); a stream dropped anyway (by a burst from
//! several peers) ends before `RECEIVED` and is opened again. The second
//! answer gives `open_bi` its backpressure: it returns once the peer has
//! room for the stream.
//!
//! After the welcome the control stream carries one [`ControlMsg::Close`]
//! with the reason, from whichever side closes first. The end of the
//! control stream without one, or its failure, means the peer or the
//! libp2p connection is gone.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use libp2p::{Stream, StreamProtocol};
use p2p_core::framing::{decode, read_frame_bytes, write_frame};
use p2p_core::{Connection, Error, PeerId, RecvStream, Result, SendStream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The one libp2p protocol the SDK speaks; which SDK protocol a stream
/// carries is named by p2p-core's hello at its start.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2p-deploy/1");

const MAGIC: [u8; 2] = *b"PD";
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 20;
/// Control frames are small: a reason is cut to [`MAX_REASON`] bytes.
pub(crate) const MAX_CONTROL_FRAME: u32 = 4096;
const MAX_REASON: usize = 1024;
/// The receiver took the stream from `libp2p-stream` and read its header.
pub(crate) const RECEIVED: u8 = 0x7e;
/// A data stream was queued for the peer's `accept_bi`.
pub(crate) const ACK_OK: u8 = 1;
/// The receiver has no such session (it was closed).
pub(crate) const ACK_NO_SESSION: u8 = 2;
/// How often `open_bi` and `connect` open a stream again when the peer
/// dropped it before answering.
pub(crate) const OPEN_ATTEMPTS: u32 = 10;

/// A libp2p stream as tokio I/O.
pub(crate) type Io = Compat<Stream>;

/// What a stream header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Open a session.
    Open,
    /// A data stream; `opener_dialed` tells whose id the session id is.
    Data { opener_dialed: bool },
}

/// A parsed stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) session: u128,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = match self.kind {
            Kind::Open => 1,
            Kind::Data {
                opener_dialed: true,
            } => 2,
            Kind::Data {
                opener_dialed: false,
            } => 3,
        };
        out[4..].copy_from_slice(&self.session.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[..2] != MAGIC {
            return Err(Error::protocol(
                "stream does not start with the p2p-deploy header",
            ));
        }
        if b[2] != VERSION {
            return Err(Error::VersionMismatch {
                protocol: "p2p-libp2p stream header".into(),
                ours_min: u16::from(VERSION),
                ours_max: u16::from(VERSION),
                theirs_min: u16::from(b[2]),
                theirs_max: u16::from(b[2]),
            });
        }
        let kind = match b[3] {
            1 => Kind::Open,
            2 => Kind::Data {
                opener_dialed: true,
            },
            3 => Kind::Data {
                opener_dialed: false,
            },
            k => return Err(Error::protocol(format!("unknown stream kind {k}"))),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[4..]);
        Ok(Header {
            kind,
            session: u128::from_be_bytes(id),
        })
    }
}

/// The receiver's answer to an open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpenReply {
    /// A listener took the connection.
    Welcome,
    /// Refused, with why.
    Refused { code: Refusal, reason: String },
}

/// Why an open was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// No listener.
    NotAccepting,
    /// Admission refused the peer.
    Denied,
    /// The accept backlog is full.
    Busy,
    /// The node is shutting down.
    Closing,
}

impl OpenReply {
    /// The error a dialer reports for a refusal.
    pub(crate) fn into_result(self, who: &str) -> Result<()> {
        match self {
            OpenReply::Welcome => Ok(()),
            OpenReply::Refused { code, reason } => Err(match code {
                Refusal::NotAccepting => {
                    Error::unreachable(format!("{who} is not accepting connections: {reason}"))
                }
                Refusal::Denied => Error::denied(format!("{who}: {reason}")),
                Refusal::Busy => Error::unreachable(format!("{who} is busy: {reason}")),
                Refusal::Closing => Error::unreachable(format!("{who} is shutting down: {reason}")),
            }),
        }
    }
}

/// Messages on the control stream after the welcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    /// The sender closed the connection.
    Close { reason: String },
}

/// Cuts `reason` to [`MAX_REASON`] bytes on a character boundary.
pub(crate) fn truncate(reason: &str) -> &str {
    p2p_core::error::truncate_reason(reason, MAX_REASON)
}

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Per peer: a gate, so that at most one stream to the peer is between
/// "opened" and [`RECEIVED`] at a time, and a budget of open streams.
///
/// `libp2p-stream` hands inbound streams over through a channel with room
/// for one and drops any stream that arrives while it is full, so a burst
/// of opens towards one peer would lose all but the first. Waiting for
/// each stream's [`RECEIVED`] before opening the next keeps the channel
/// free. Streams from several peers can still collide at a receiver; those
/// are opened again (see [`OPEN_ATTEMPTS`]).
///
/// yamux counts the streams of both directions against one limit and
/// closes the whole connection when a peer opens one past it; the budget
/// keeps this node's streams to a peer (control streams included) within
/// its share of that limit, and `open_bi` waits for room instead.
pub(crate) struct Gates {
    peers: Mutex<BTreeMap<libp2p::PeerId, PeerGate>>,
    budget: usize,
}

struct PeerGate {
    gate: Arc<tokio::sync::Mutex<()>>,
    budget: Arc<tokio::sync::Semaphore>,
}

/// A stream's share of a peer's budget, returned when the stream goes.
pub(crate) type Slot = tokio::sync::OwnedSemaphorePermit;

impl Gates {
    /// Gates allowing `budget` open streams per peer.
    pub(crate) fn new(budget: usize) -> Self {
        Gates {
            peers: Mutex::new(BTreeMap::new()),
            budget,
        }
    }

    fn peer(
        &self,
        peer: libp2p::PeerId,
    ) -> (Arc<tokio::sync::Mutex<()>>, Arc<tokio::sync::Semaphore>) {
        let mut peers = lock(&self.peers);
        // Forget peers with no stream open and nobody waiting.
        peers.retain(|p, g| {
            *p == peer || Arc::strong_count(&g.gate) > 1 || Arc::strong_count(&g.budget) > 1
        });
        let g = peers.entry(peer).or_insert_with(|| PeerGate {
            gate: Arc::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(self.budget)),
        });
        (g.gate.clone(), g.budget.clone())
    }

    /// Waits for room for one more stream to `peer`.
    pub(crate) async fn slot(&self, peer: libp2p::PeerId) -> Slot {
        let (_, budget) = self.peer(peer);
        budget
            .acquire_owned()
            .await
            .expect("the budget semaphore is never closed")
    }

    /// Waits for the gate of `peer`.
    pub(crate) async fn pass(&self, peer: libp2p::PeerId) -> tokio::sync::OwnedMutexGuard<()> {
        let (gate, _) = self.peer(peer);
        gate.lock_owned().await
    }
}

/// Opens a stream to `peer` and sends `header`, holding the peer's gate
/// until the peer answers [`RECEIVED`] (bounded by `limit`).
pub(crate) async fn open_raw(
    control: &crate::streams::Control,
    gates: &Gates,
    peer: libp2p::PeerId,
    header: &[u8; HEADER_LEN],
    limit: Duration,
    who: &str,
) -> Result<Io> {
    let _gate = gates.pass(peer).await;
    let mut control = control.clone();
    let exchange = async {
        let stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| Error::unreachable(format!("opening a stream to {who}: {e}")))?;
        let mut io = stream.compat();
        let io_err = |e| Error::from_stream_io(&format!("opening a stream to {who}"), e);
        io.write_all(header).await.map_err(io_err)?;
        io.flush().await.map_err(io_err)?;
        match io.read_u8().await.map_err(io_err)? {
            RECEIVED => Ok(io),
            other => Err(Error::protocol(format!(
                "{who} answered a new stream with {other}, not the expected {RECEIVED}"
            ))),
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Error::timeout(format!("opening a stream to {who}"), limit))?
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
    key: SessionKey,
    remote: PeerId,
    env: SessionEnv,
    closed: CancellationToken,
    reason: Mutex<Option<String>>,
    inbound_tx: mpsc::Sender<Io>,
    inbound_rx: tokio::sync::Mutex<mpsc::Receiver<Io>>,
    control_send: Mutex<Option<WriteHalf<Io>>>,
    /// Whether the peer has its answer to the open (always, on the
    /// dialer): before that, a close must not put a frame on the control
    /// stream, where the dialer expects the answer.
    handed_over: std::sync::atomic::AtomicBool,
    /// Opens of this connection waiting for room in the peer's queue; a
    /// cap, so that one connection whose peer does not accept cannot take
    /// the whole per-peer stream budget.
    pending_opens: Arc<tokio::sync::Semaphore>,
    guard: OnceLock<Weak<Guard>>,
}

impl Session {
    /// Registers a new session whose control stream is `control` (the
    /// welcome already exchanged), starts its control reader, and returns
    /// the first handle.
    /// On the accepting side, call [`Session::hand_over`] next.
    ///
    /// If the provider closed meanwhile, or the key is taken, the session
    /// starts closed: check [`Connection::is_connected`].
    pub(crate) fn start(
        key: SessionKey,
        remote: PeerId,
        env: SessionEnv,
        control: Io,
    ) -> Libp2pConnection {
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
        });
        let guard = Arc::new(Guard {
            session: session.clone(),
        });
        let _ = session.guard.set(Arc::downgrade(&guard));
        if !registry.is_some_and(|r| r.insert(session.clone())) {
            session.mark_closed("connection closed: the provider is closed".into());
        }
        tokio::spawn(read_control(session.clone(), read));
        Libp2pConnection { guard }
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

    fn who(&self) -> String {
        format!("peer {}", self.remote.short())
    }

    /// Marks the session closed with `reason` (the first reason wins), ends
    /// its streams and unregisters it. True if this call closed it.
    fn mark_closed(&self, reason: String) -> bool {
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

    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(self.closed_error())
        } else {
            Ok(())
        }
    }

    /// Closes with `reason` and tells the peer, within the close timeout.
    pub(crate) async fn close(&self, reason: &str, local_reason: String) {
        let writer = lock(&self.control_send).take();
        if !self.mark_closed(local_reason) {
            return;
        }
        let handed_over = self.handed_over.load(std::sync::atomic::Ordering::Acquire);
        if let Some(mut w) = writer.filter(|_| handed_over) {
            let msg = ControlMsg::Close {
                reason: truncate(reason).to_string(),
            };
            let _ = tokio::time::timeout(self.env.close_timeout, async {
                write_frame(&mut w, &msg, MAX_CONTROL_FRAME).await?;
                w.shutdown()
                    .await
                    .map_err(|e| Error::from_stream_io("finishing the control stream", e))
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
        _ = session.closed.cancelled() => return,
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
}

/// Keeps a session open: held by every connection handle and every stream.
/// When the last one goes, the session is closed and the peer told.
pub(crate) struct Guard {
    session: Arc<Session>,
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

/// A connection to one peer over libp2p: a p2p-core
/// [`Connection`](p2p_core::Connection).
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
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.guard.session
    }

    /// Whether this side dialed the connection.
    pub fn we_dialed(&self) -> bool {
        self.guard.session.key.we_dialed
    }

    fn wrap(&self, io: Io, slot: Option<Slot>) -> (SendStream, RecvStream) {
        wrap(io, &self.guard, slot)
    }
}

fn wrap(io: Io, guard: &Arc<Guard>, slot: Option<Slot>) -> (SendStream, RecvStream) {
    let (r, w) = tokio::io::split(io);
    let slot = slot.map(Arc::new);
    let life = || Life {
        guard: guard.clone(),
        ended: Box::pin(guard.session.closed.clone().cancelled_owned()),
        _slot: slot.clone(),
    };
    (
        Box::new(SdkSend {
            inner: Some(w),
            finished: false,
            life: life(),
        }),
        Box::new(SdkRecv {
            inner: r,
            life: life(),
        }),
    )
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

/// The pause before attempt `attempt + 1`: doubling from 2 ms, capped at
/// 200 ms, with jitter so that colliding openers spread out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = (2u64 << attempt.min(7)).min(200);
    let jitter = std::collections::hash_map::RandomState::new().hash_one(attempt) % (base + 1);
    Duration::from_millis(base / 2 + jitter / 2)
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

/// What every stream of a session holds: the session alive, and a way to
/// wake up when it ends.
struct Life {
    guard: Arc<Guard>,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    /// This node's share of the peer's stream budget, for streams it
    /// opened; shared by both halves, returned when both are gone.
    _slot: Option<Arc<Slot>>,
}

impl Life {
    fn error(&self) -> io::Error {
        self.guard.session.closed_error().into_io()
    }

    /// Ready when the session has ended; registers `cx` otherwise.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.ended.as_mut().poll(cx).is_ready()
    }

    fn is_ended(&self) -> bool {
        self.guard.session.closed.is_cancelled()
    }
}

use std::future::Future;

struct SdkRecv {
    inner: ReadHalf<Io>,
    life: Life,
}

impl AsyncRead for SdkRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.life.is_ended() {
            return Poll::Ready(Err(self.life.error()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending if self.life.poll_ended(cx) => Poll::Ready(Err(self.life.error())),
            other => other,
        }
    }
}

struct SdkSend {
    /// `None` only while being dropped.
    inner: Option<WriteHalf<Io>>,
    /// Shut down cleanly: nothing to do on drop.
    finished: bool,
    life: Life,
}

impl SdkSend {
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut WriteHalf<Io>>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.life.is_ended() {
            return Poll::Ready(Err(self.life.error()));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(io::Error::other("stream dropped")));
        };
        match f(Pin::new(inner), cx) {
            Poll::Pending if self.life.poll_ended(cx) => Poll::Ready(Err(self.life.error())),
            other => other,
        }
    }
}

impl AsyncWrite for SdkSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |w, cx| w.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |w, cx| w.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.guarded(cx, |w, cx| w.poll_shutdown(cx));
        if matches!(r, Poll::Ready(Ok(()))) {
            self.finished = true;
        }
        r
    }
}

impl Drop for SdkSend {
    /// The two halves share one yamux stream, which ends only when both
    /// are gone; so a send half dropped without `shutdown` finishes its
    /// direction here, and the peer reads end of stream.
    fn drop(&mut self) {
        if self.finished || self.life.is_ended() {
            return;
        }
        let (Some(mut w), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let limit = self.life.guard.session.env.close_timeout;
        // Keep the connection open and the budget taken until the finish
        // is sent.
        let held = (self.life.guard.clone(), self.life._slot.take());
        rt.spawn(async move {
            let _ = tokio::time::timeout(limit, w.shutdown()).await;
            drop(held);
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_named() {
        for kind in [
            Kind::Open,
            Kind::Data {
                opener_dialed: true,
            },
            Kind::Data {
                opener_dialed: false,
            },
        ] {
            let h = Header {
                kind,
                session: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            };
            assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }
        let mut b = Header {
            kind: Kind::Open,
            session: 1,
        }
        .encode();
        b[2] = 9;
        assert!(matches!(
            Header::decode(&b),
            Err(Error::VersionMismatch { .. })
        ));
        b[2] = VERSION;
        b[3] = 7;
        assert!(
            Header::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("kind 7")
        );
        b[0] = b'X';
        assert!(
            Header::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("header")
        );
    }

    #[test]
    fn refusals_map_to_the_errors_a_dialer_acts_on() {
        let r = |code| OpenReply::Refused {
            code,
            reason: "why".into(),
        };
        assert!(OpenReply::Welcome.into_result("p").is_ok());
        assert!(matches!(
            r(Refusal::NotAccepting).into_result("p"),
            Err(Error::Unreachable { .. })
        ));
        assert!(matches!(
            r(Refusal::Denied).into_result("p"),
            Err(Error::Denied { .. })
        ));
        assert!(matches!(
            r(Refusal::Busy).into_result("p"),
            Err(Error::Unreachable { .. })
        ));
    }
}
