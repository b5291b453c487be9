//! The deploy RPC protocol: what controllers and agents say to each other.
//!
//! Every request is one bidirectional stream on a p2p-core
//! [`Connection`](p2p_core::Connection), framed with
//! [`p2p_core::framing`] (u32 length + postcard):
//!
//! 1. The client sends its [`Hello`] for
//!    [`PROTOCOL`] and, without waiting, one [`Request`]; the server
//!    answers with its hello (a version mismatch fails both sides with
//!    [`Error::VersionMismatch`]).
//! 2. The server answers with zero or more progress frames
//!    ([`Frame::Event`] during a deploy, [`Frame::Log`] for logs,
//!    [`Frame::Chunk`] for chunk fetches) and ends with exactly one
//!    [`Frame::Done`] or [`Frame::Error`]. A followed log has no end: the
//!    client closes the stream when it has seen enough.
//!
//! From version 2, the server also sends [`Frame::Alive`] every
//! [`HEARTBEAT`] while it works on a request (a deploy's transfer,
//! install and health gate, a switch...), so that a client can tell a
//! node that is busy from one that stopped answering (killed, cut off)
//! within seconds, long before the transport's idle timeout; see
//! [`Call::open_watched`]. A version-1 peer neither sends nor gets them.
//!
//! Every request carries its deadline (`timeout_ms`); the server gives up
//! at the deadline with [`ErrorKind::Timeout`], and the client waits a
//! little longer than that for the answer. Errors travel as [`RpcError`]:
//! a kind the caller can branch on and a message a user can act on; the
//! client turns them back into [`p2p_core::Error`] variants.
//!
//! Chunk fetches go the other way too: an agent receiving a deploy fetches
//! the chunks it lacks from the peer that sent the deploy, with
//! [`Request::FetchChunks`] on a stream it opens on the same connection.

use std::collections::BTreeMap;
use std::time::Duration;

use p2p_core::framing::{Framed, Hello, ProtocolId, negotiate};
use p2p_core::{AppStatus, Error, LogLine, LogSelection, PeerAddr, PeerId, Result, Signature};
use serde::{Deserialize, Serialize};

use crate::package::PackageId;
pub use crate::swarm::Bitfield;

/// The protocol name and versions this build speaks.
pub const PROTOCOL: ProtocolId = ProtocolId {
    name: "p2p/deploy",
    min: 1,
    max: 2,
};

/// The protocol version from which a server sends [`Frame::Alive`]
/// while it works on a request.
pub const ALIVE_VERSION: u16 = 2;

/// How often a server sends [`Frame::Alive`] while it works on a request
/// (version 2 on).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Largest frame on a deploy stream: a 16 MiB chunk plus room.
pub const MAX_FRAME: u32 = (16 << 20) + (64 << 10);

/// The SDK version agents report in [`NodeInfo`].
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a deploy is activated on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateOptions {
    /// How long the health gate may take; `None`: from the manifest's
    /// health check (start period + interval x (gate + retries + 1) +
    /// 30 s), or 30 s for an app without one.
    pub gate_timeout: Option<Duration>,
    /// For an app without a health check: how long it must stay up,
    /// without a restart, to pass.
    pub settle: Duration,
}

impl Default for ActivateOptions {
    fn default() -> Self {
        ActivateOptions {
            gate_timeout: None,
            settle: Duration::from_secs(5),
        }
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Node info: id, name, labels, addresses, SDK version, apps.
    Info,
    /// Every app on the node.
    List,
    /// One app.
    Status {
        /// App name.
        app: String,
    },
    /// Start the app's active version and keep it running.
    Start {
        /// App name.
        app: String,
    },
    /// Stop the app and keep it stopped.
    Stop {
        /// App name.
        app: String,
    },
    /// Restart the app's active version.
    Restart {
        /// App name.
        app: String,
    },
    /// Activate an installed version (through the health gate).
    Switch {
        /// App name.
        app: String,
        /// An installed version.
        version: semver::Version,
        /// Activation options.
        options: ActivateOptions,
    },
    /// Activate the version that was active before the current one.
    Rollback {
        /// App name.
        app: String,
        /// Activation options.
        options: ActivateOptions,
    },
    /// Remove an app (stopped and uninstalled), or one inactive version.
    Remove {
        /// App name.
        app: String,
        /// Only this version.
        version: Option<semver::Version>,
    },
    /// Install and activate a signed release. The agent fetches the chunks
    /// it lacks from the sender, over the same connection.
    Deploy {
        /// The descriptor's canonical bytes.
        descriptor: Vec<u8>,
        /// Signatures over the descriptor.
        signatures: Vec<Signature>,
        /// Activation options.
        options: ActivateOptions,
        /// Other nodes receiving or holding the release, to fetch chunks
        /// from besides the sender (the swarm); may be empty.
        peers: Vec<PeerAddr>,
    },
    /// An app's logs: tail and/or follow.
    Logs {
        /// App name.
        app: String,
        /// Which stream, how many lines, follow or not.
        selection: LogSelection,
    },
    /// Chunks of a release, by index, streamed as [`Frame::Chunk`].
    FetchChunks {
        /// The release.
        package: PackageId,
        /// Chunk indexes.
        indexes: Vec<u32>,
    },
    /// A swarm session for a release: the server answers with
    /// [`Frame::Have`] and then [`Frame::Got`] as chunks arrive; the
    /// client sends [`Frame::Got`] frames the same way after its request.
    /// The session lasts until both sides hold every chunk or either
    /// closes it.
    Swarm {
        /// The release.
        package: PackageId,
        /// The chunks the client holds.
        have: Bitfield,
    },
    /// One chunk the seed (the controller) chooses: one the client lacks
    /// and the fleet holds fewest copies of. Answered with one
    /// [`Frame::Chunk`]; [`ErrorKind::NotFound`] when there is nothing
    /// left to give.
    FetchAny {
        /// The release.
        package: PackageId,
        /// The chunks the client holds or is fetching.
        have: Bitfield,
    },
    /// The releases this node holds, complete or not ([`Reply::Catalog`]).
    Catalog,
    /// A held release's descriptor and signatures ([`Reply::Release`]),
    /// for a peer that wants to fetch it.
    Release {
        /// The release.
        package: PackageId,
    },
    /// Fetch a release from peers that hold it (found with
    /// [`Request::Catalog`]) and keep it, without installing it: a later
    /// deploy of it finds every chunk present. The descriptor and
    /// signatures come from the first of `from` that has them and are
    /// checked against the node's trust store before any chunk is
    /// fetched. Answered with [`Reply::Catalog`] holding its entry. The
    /// release is dropped once a version of the app as high or higher is
    /// installed there (it could no longer be deployed).
    Fetch {
        /// The release.
        package: PackageId,
        /// Peers holding it (all or part).
        from: Vec<PeerAddr>,
    },
    /// [`Request::Deploy`] with the descriptor by reference. In a large
    /// rollout the controller sends the descriptor itself to a few
    /// targets and this to the rest, so that its uplink carries a few
    /// copies rather than one per target (a descriptor holds a hash per
    /// chunk: 13 KB for 100 MB). The agent takes the descriptor from its
    /// store when it holds the release, else from `from`, asked in the
    /// order given and again after a short rest (they may be receiving it
    /// themselves), and at last from the sender. Any copy is checked
    /// against `package`, the descriptor's hash, and `signatures` against
    /// the trust store, as for a deploy; then it is a deploy.
    DeployRef {
        /// The release.
        package: PackageId,
        /// Signatures over its descriptor.
        signatures: Vec<Signature>,
        /// Activation options.
        options: ActivateOptions,
        /// Nodes holding the descriptor or receiving it, asked for it in
        /// this order; may be empty (then the sender is asked).
        from: Vec<PeerAddr>,
        /// As for [`Request::Deploy`]: other nodes receiving or holding
        /// the release, to fetch chunks from.
        peers: Vec<PeerAddr>,
    },
}

impl Request {
    /// Whether the request changes the node (only operators may send it).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Request::Start { .. }
                | Request::Stop { .. }
                | Request::Restart { .. }
                | Request::Switch { .. }
                | Request::Rollback { .. }
                | Request::Remove { .. }
                | Request::Deploy { .. }
                | Request::DeployRef { .. }
                | Request::Fetch { .. }
        )
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::List => "list",
            Request::Status { .. } => "status",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Restart { .. } => "restart",
            Request::Switch { .. } => "switch",
            Request::Rollback { .. } => "rollback",
            Request::Remove { .. } => "remove",
            Request::Deploy { .. } | Request::DeployRef { .. } => "deploy",
            Request::Logs { .. } => "logs",
            Request::FetchChunks { .. } => "fetch-chunks",
            Request::Swarm { .. } => "swarm",
            Request::FetchAny { .. } => "fetch-any",
            Request::Catalog => "catalog",
            Request::Release { .. } => "release",
            Request::Fetch { .. } => "fetch",
        }
    }
}

/// A request with its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Milliseconds the server may spend on it.
    pub timeout_ms: u64,
    /// The request.
    pub request: Request,
}

/// What an agent knows about one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// App name.
    pub name: String,
    /// The version the node keeps active, if any.
    pub active: Option<semver::Version>,
    /// Whether the node keeps it running.
    pub running: bool,
    /// Installed versions with their package ids, lowest first.
    pub installed: Vec<(semver::Version, PackageId)>,
    /// The version active before the current one.
    pub previous: Option<semver::Version>,
    /// What the runtime reports, if it knows the app.
    pub status: Option<AppStatus>,
    /// The latest deployment records, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One deployment record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Wall-clock milliseconds (the agent's injected clock).
    pub at_ms: u64,
    /// What was attempted: `deploy`, `switch`, `rollback`, `start`, ...
    pub action: String,
    /// The version it was about.
    pub version: semver::Version,
    /// How it ended.
    pub outcome: Outcome,
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The version passed its health gate and is active.
    Activated,
    /// It failed; the node went back to `to` (or has nothing active).
    RolledBack {
        /// Why it failed.
        reason: String,
        /// The version active again.
        to: Option<semver::Version>,
    },
    /// The agent stopped during activation; after restart it went back.
    Interrupted {
        /// The version active again.
        to: Option<semver::Version>,
    },
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer id.
    pub id: PeerId,
    /// Human name (configured; may be empty).
    pub name: String,
    /// Labels for selectors.
    pub labels: BTreeMap<String, String>,
    /// Where it listens.
    pub addr: PeerAddr,
    /// The SDK version it runs.
    pub sdk_version: String,
    /// Its apps.
    pub apps: Vec<AppInfo>,
    /// The swarm peers it has scored, with any bans.
    pub peers: Vec<crate::swarm::PeerScore>,
}

impl NodeInfo {
    /// Its name, else its short id: how it is shown to people.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.id.short()
        } else {
            self.name.clone()
        }
    }
}

/// Steps of a deploy on one node, streamed as they happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployEvent {
    /// Signatures and version checks passed.
    Verified,
    /// Chunk bytes present so far.
    Transfer {
        /// Bytes present.
        bytes: u64,
        /// Archive size.
        total: u64,
    },
    /// The version is unpacked and recorded.
    Installed,
    /// The new version is started; the health gate is running.
    Started,
    /// The health gate passed.
    HealthPassed,
    /// The health gate failed.
    HealthFailed {
        /// Why.
        reason: String,
    },
    /// The node went back to the previous version.
    RolledBack {
        /// The version active again.
        to: Option<semver::Version>,
    },
}

/// The final answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// For [`Request::Info`].
    Info(Box<NodeInfo>),
    /// For [`Request::List`].
    Apps(Vec<AppInfo>),
    /// For status, start, stop, restart, remove of a version.
    App(Box<AppInfo>),
    /// For deploy, switch and rollback.
    Activation(Activation),
    /// Done, nothing to report (remove, end of logs or chunks).
    Ok,
    /// For [`Request::Catalog`] and [`Request::Fetch`].
    Catalog(Vec<CatalogEntry>),
    /// For [`Request::Release`].
    Release {
        /// The descriptor's canonical bytes.
        descriptor: Vec<u8>,
        /// The signatures the node received with it.
        signatures: Vec<Signature>,
    },
}

/// A release a node holds, as its catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// App name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The release's id (its descriptor's hash).
    pub id: PackageId,
    /// Archive size in bytes.
    pub size: u64,
    /// Chunks in the release.
    pub chunks: u32,
    /// Chunks this node holds (all of them once the release is complete).
    pub held: u32,
    /// Whether the version is installed (unpacked and recorded).
    pub installed: bool,
    /// Whether it is the app's active version.
    pub active: bool,
}

impl CatalogEntry {
    /// Whether the node holds every chunk.
    pub fn is_complete(&self) -> bool {
        self.held == self.chunks
    }
}

/// How a deploy, switch or rollback ended on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The version passed its gate and is active.
    Activated {
        /// The new active version.
        version: semver::Version,
        /// The version active before.
        previous: Option<semver::Version>,
    },
    /// The version was already active and running; nothing changed.
    AlreadyActive {
        /// The active version.
        version: semver::Version,
    },
    /// The version failed and the node went back.
    RolledBack {
        /// Why it failed.
        reason: String,
        /// The version active again, if any.
        to: Option<semver::Version>,
    },
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Deploy progress.
    Event(DeployEvent),
    /// A log line.
    Log(LogLine),
    /// A chunk.
    Chunk {
        /// Its index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// In a swarm session: the chunks the sender holds.
    Have(Bitfield),
    /// In a swarm session: the sender now holds this chunk.
    Got(u32),
    /// The answer; the request is over.
    Done(Reply),
    /// The error; the request is over.
    Error(RpcError),
    /// Version 2 on: the server is still working on the request. Sent
    /// every [`HEARTBEAT`]; [`Call`] reads past it.
    Alive,
}

/// What kind of error a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller may not do this (not an operator).
    Denied,
    /// No such app, version or release.
    NotFound,
    /// The request is malformed or impossible.
    Invalid,
    /// Signatures or trust refused the release.
    BadSignature,
    /// A lower version than an installed one, without a rollback.
    Downgrade,
    /// Another operation on the app is in progress.
    Busy,
    /// The deadline passed.
    Timeout,
    /// The node could not reach a peer it needed (the sender of a
    /// release's chunks, say).
    Unreachable,
    /// A release's bytes do not match its descriptor.
    Corrupt,
    /// Anything else on the node's side (storage, runtime).
    Internal,
}

/// An error as it travels: kind and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// What kind.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

impl RpcError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }

    /// Converts a local error for the wire.
    pub fn from_error(e: &Error) -> Self {
        let kind = match e {
            Error::Denied { .. } => ErrorKind::Denied,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Invalid { .. } | Error::AlreadyExists { .. } | Error::NotSupported { .. } => {
                ErrorKind::Invalid
            }
            Error::BadSignature { .. } => ErrorKind::BadSignature,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Unreachable { .. } | Error::Closed { .. } => ErrorKind::Unreachable,
            Error::Protocol { .. } => ErrorKind::Corrupt,
            _ => ErrorKind::Internal,
        };
        RpcError::new(kind, e.to_string())
    }

    /// Back into a p2p-core error, naming the node it came from; `after`
    /// is the deadline of the request, shown by a timeout.
    pub fn into_error(self, node: &PeerId, after: Duration) -> Error {
        let m = format!("node {}: {}", node.short(), self.message);
        match self.kind {
            ErrorKind::Denied | ErrorKind::Downgrade => Error::denied(m),
            ErrorKind::NotFound => Error::NotFound { what: m },
            ErrorKind::Invalid => Error::invalid("request", m),
            ErrorKind::BadSignature => Error::BadSignature { reason: m },
            ErrorKind::Busy => Error::Busy { what: m },
            ErrorKind::Timeout => Error::Timeout { during: m, after },
            ErrorKind::Unreachable => Error::unreachable(m),
            ErrorKind::Corrupt => Error::protocol(m),
            ErrorKind::Internal => Error::Backend {
                backend: "agent",
                source: m.into(),
            },
        }
    }
}

/// A client side of one request stream.
pub struct Call {
    framed: Framed,
    peer: PeerId,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// Fail when nothing comes for this long (a server that sends
    /// [`Frame::Alive`] only), and close `conn`.
    silence: Option<Duration>,
    conn: Option<std::sync::Arc<dyn p2p_core::Connection>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Call(to {})", self.peer.short())
    }
}

/// Extra time the client waits past the server's deadline for its answer.
const CLIENT_SLACK: Duration = Duration::from_secs(5);

impl Call {
    /// Opens a stream on `conn`, sends hello and `request` with `timeout`,
    /// and checks the server's hello.
    pub async fn open(
        conn: &dyn p2p_core::Connection,
        request: Request,
        timeout: Duration,
    ) -> Result<Call> {
        Call::start(conn, request, timeout, None).await
    }

    /// As [`open`](Self::open), and with `silence` set, the request fails
    /// as soon as the node sends nothing for that long: its hello, or
    /// while it works, a frame or a heartbeat ([`Frame::Alive`], every
    /// [`HEARTBEAT`]). A node that was killed or cut off mid-deploy is
    /// then reported ("stopped answering") after `silence`, not after
    /// the transport's idle timeout. A node of protocol version 1 sends
    /// no heartbeats: only its hello is watched.
    ///
    /// The connection of a node that stopped answering is closed: nothing
    /// still queued on it (this request, say a rollback) may reach the
    /// node later, when the network heals, unknown to the caller.
    pub async fn open_watched(
        conn: &std::sync::Arc<dyn p2p_core::Connection>,
        request: Request,
        timeout: Duration,
        silence: Option<Duration>,
    ) -> Result<Call> {
        let watched = silence.map(|s| (s, conn.clone()));
        Call::start(&**conn, request, timeout, watched).await
    }

    async fn start(
        conn: &dyn p2p_core::Connection,
        request: Request,
        timeout: Duration,
        watched: Option<(Duration, std::sync::Arc<dyn p2p_core::Connection>)>,
    ) -> Result<Call> {
        let (silence, watched_conn) = match watched {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let peer = conn.remote_id();
        let now = tokio::time::Instant::now();
        let deadline = now + timeout + CLIENT_SLACK;
        let open_by = silence.map_or(deadline, |s| deadline.min(now + s));
        let opened = tokio::time::timeout_at(open_by, async {
            let (send, recv) = conn.open_bi().await?;
            let mut framed = Framed::with_max(send, recv, MAX_FRAME);
            framed.send(&Hello::new(&PROTOCOL)).await?;
            framed
                .send(&Envelope {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    request,
                })
                .await?;
            let theirs: Hello =
                framed.recv().await.map_err(|e| match e {
                    Error::Protocol { .. } | Error::FrameTooLarge { .. } => Error::protocol(
                        format!("node {} does not speak {}", peer.short(), PROTOCOL.name),
                    ),
                    other => other,
                })?;
            let version = negotiate(&PROTOCOL, &theirs)?;
            Ok::<_, Error>((framed, version))
        })
        .await;
        let (framed, version) = match opened {
            Ok(r) => r?,
            Err(_) if open_by < deadline => {
                return Err(stopped_answering(&peer, silence, watched_conn.as_ref()).await);
            }
            Err(_) => {
                return Err(Error::timeout(
                    format!("opening a request to {}", peer.short()),
                    timeout,
                ));
            }
        };
        Ok(Call {
            framed,
            peer,
            timeout,
            deadline,
            silence: silence.filter(|_| version >= ALIVE_VERSION),
            conn: watched_conn,
        })
    }

    /// The stream, for a session that goes on past the request.
    pub(crate) fn into_framed(self) -> Framed {
        self.framed
    }

    /// The next frame; `Frame::Error` comes back as an `Err`.
    pub async fn next(&mut self) -> Result<Frame> {
        self.next_until(Some(self.deadline)).await
    }

    /// The next frame without the request's deadline (a followed log).
    pub async fn next_unbounded(&mut self) -> Result<Frame> {
        self.next_until(None).await
    }

    async fn next_until(&mut self, deadline: Option<tokio::time::Instant>) -> Result<Frame> {
        loop {
            let frame = match deadline {
                Some(d) => {
                    let quiet = self.silence.map(|s| tokio::time::Instant::now() + s);
                    let until = quiet.map_or(d, |q| q.min(d));
                    match tokio::time::timeout_at(until, self.framed.recv::<Frame>()).await {
                        Ok(f) => f.map_err(|e| self.gone(e))?,
                        Err(_) if until < d => {
                            return Err(stopped_answering(
                                &self.peer,
                                self.silence,
                                self.conn.as_ref(),
                            )
                            .await);
                        }
                        Err(_) => {
                            return Err(Error::timeout(
                                format!("waiting for node {} to answer", self.peer.short()),
                                self.timeout + CLIENT_SLACK,
                            ));
                        }
                    }
                }
                None => self
                    .framed
                    .recv::<Frame>()
                    .await
                    .map_err(|e| self.gone(e))?,
            };
            match frame {
                Frame::Alive => {}
                Frame::Error(e) => return Err(e.into_error(&self.peer, self.timeout)),
                other => return Ok(other),
            }
        }
    }

    /// A stream that ended before the answer: the node went away (it
    /// stopped or crashed, or its connection broke) mid-request.
    fn gone(&self, e: Error) -> Error {
        match e {
            Error::Closed { reason } => Error::unreachable(format!(
                "node {} stopped answering: its connection ended mid-request ({reason})",
                self.peer.short()
            )),
            other => other,
        }
    }

    /// Reads to the final reply, passing every other frame to `each`.
    pub async fn finish(mut self, mut each: impl FnMut(Frame)) -> Result<Reply> {
        loop {
            match self.next().await? {
                Frame::Done(r) => return Ok(r),
                other => each(other),
            }
        }
    }
}

/// The error of a node that sent nothing for `silence`; its connection
/// `conn` is closed.
async fn stopped_answering(
    peer: &PeerId,
    silence: Option<Duration>,
    conn: Option<&std::sync::Arc<dyn p2p_core::Connection>>,
) -> Error {
    if let Some(c) = conn {
        c.close("the node stopped answering").await;
    }
    let silence = silence.unwrap_or_default();
    Error::unreachable(format!(
        "node {} stopped answering: nothing from it for {silence:?} (killed, cut off, or its \
         host is down)",
        peer.short()
    ))
}

/// A one-shot request: open, read to the reply.
pub async fn call(
    conn: &dyn p2p_core::Connection,
    request: Request,
    timeout: Duration,
) -> Result<Reply> {
    Call::open(conn, request, timeout)
        .await?
        .finish(|_| {})
        .await
}

/// A one-shot request that fails when the node sends nothing for
/// `silence` (see [`Call::open_watched`]).
pub async fn call_watched(
    conn: &std::sync::Arc<dyn p2p_core::Connection>,
    request: Request,
    timeout: Duration,
    silence: Option<Duration>,
) -> Result<Reply> {
    Call::open_watched(conn, request, timeout, silence)
        .await?
        .finish(|_| {})
        .await
}

/// How long a server waits for a client's hello and request.
pub(crate) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a stream: reads the client's hello and request
/// within [`REQUEST_READ_TIMEOUT`]. A request that does not decode is
/// answered with an [`ErrorKind::Invalid`] error naming the problem (a
/// client of another SDK version, most often); a stream that is not this
/// protocol at all is dropped. `None`: there is nothing to serve.
/// Returns the request and the protocol version both sides speak.
pub(crate) async fn accept_request(framed: &mut Framed, peer: &PeerId) -> Option<(Envelope, u16)> {
    let read = async {
        let version = framed.hello(&PROTOCOL).await?;
        match framed.recv::<Envelope>().await {
            Ok(env) => Ok(Ok((env, version))),
            Err(e @ (Error::Protocol { .. } | Error::FrameTooLarge { .. })) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Ok(Ok(Ok(got))) => Some(got),
        Ok(Ok(Err(e))) => {
            tracing::debug!(peer = %peer.short(), error = %e, "malformed request");
            let answer = Frame::Error(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "malformed request ({e}); this node runs SDK {SDK_VERSION}, \
                     check that the client speaks the same protocol version"
                ),
            ));
            end_with(framed, answer).await;
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.short(), error = %e, "bad request stream");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer.short(), "no request within {REQUEST_READ_TIMEOUT:?}");
            None
        }
    }
}

/// Sends the frame that ends a request and finishes the stream (a client
/// that went away is no error).
pub(crate) async fn end_with(framed: &mut Framed, end: Frame) {
    if framed.send(&end).await.is_ok() {
        let _ = framed.finish().await;
    }
}

/// Most chunks served for one fetch request.
pub const MAX_FETCH_INDEXES: usize = 256;

/// Answers [`Request::FetchChunks`]: sends each chunk `get` returns as a
/// [`Frame::Chunk`] and returns the frame that ends the request. A
/// request for too many chunks, or for one `get` does not have, ends in
/// an error; a client that goes away ends it quietly.
pub(crate) async fn send_chunks<F>(
    framed: &mut Framed,
    package: &PackageId,
    indexes: &[u32],
    mut get: impl FnMut(u32) -> F,
) -> Frame
where
    F: std::future::Future<Output = Result<Option<Vec<u8>>>>,
{
    if indexes.len() > MAX_FETCH_INDEXES {
        return Frame::Error(RpcError::new(
            ErrorKind::Invalid,
            format!(
                "{} chunks asked for in one request; at most {MAX_FETCH_INDEXES}",
                indexes.len()
            ),
        ));
    }
    for &index in indexes {
        match get(index).await {
            Ok(Some(bytes)) => {
                if framed.send(&Frame::Chunk { index, bytes }).await.is_err() {
                    return Frame::Done(Reply::Ok);
                }
            }
            Ok(None) => {
                return Frame::Error(RpcError::new(
                    ErrorKind::NotFound,
                    format!("chunk {index} of release {package}"),
                ));
            }
            Err(e) => return Frame::Error(RpcError::from_error(&e)),
        }
    }
    Frame::Done(Reply::Ok)
}

/// Names a peer for messages.
pub(crate) fn unexpected(peer: &PeerId, what: &str, got: &Frame) -> Error {
    let shown = match got {
        Frame::Event(_) => "a deploy event",
        Frame::Log(_) => "a log line",
        Frame::Chunk { .. } => "a chunk",
        Frame::Have(_) => "a have-map",
        Frame::Got(_) => "a chunk announcement",
        Frame::Done(_) => "a reply",
        Frame::Error(_) => "an error",
        Frame::Alive => "a heartbeat",
    };
    Error::protocol(format!(
        "node {} sent {shown} where {what} was expected",
        peer.short()
    ))
}
