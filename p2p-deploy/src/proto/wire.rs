//! The messages: requests, replies, progress frames and what they carry,
//! and the protocol's name, version and limits.

use std::collections::BTreeMap;
use std::time::Duration;

use p2p_core::framing::ProtocolId;
use p2p_core::{AppStatus, LogLine, LogSelection, PeerAddr, PeerId, Signature};
use serde::{Deserialize, Serialize};

use super::bitfield::Bitfield;
use super::error::RpcError;
use crate::package::PackageId;

/// The protocol name and versions this build speaks.
pub const PROTOCOL: ProtocolId = ProtocolId {
    name: "p2p/deploy",
    min: 1,
    max: 4,
};

/// The protocol version from which a server sends [`Frame::Alive`]
/// while it works on a request.
pub const ALIVE_VERSION: u16 = 2;

/// The first protocol version whose clients know
/// [`DeployEvent::AlreadyHeld`] (and the membership and stage requests):
/// a server sends that event only to them, so an older controller's
/// deploy does not fail on a frame it cannot read.
pub const HELD_VERSION: u16 = 3;

/// The first protocol version whose servers answer [`Request::Events`]
/// and [`Request::Plan`].
pub const EVENTS_VERSION: u16 = 4;

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
#[non_exhaustive]
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
        #[serde(with = "serde_bytes")]
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
    /// [`Frame::Chunk`]; [`ErrorKind::NotFound`](super::ErrorKind::NotFound) when there is nothing
    /// left to give. The client may drop the stream once it has read the
    /// chunk's header (a chunk it got elsewhere meanwhile): the seed then
    /// does not count that copy.
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
    /// A membership gossip exchange (see [`crate::membership`]): the
    /// client's table root; the rest of the exchange follows on the
    /// stream.
    Gossip {
        /// The root hash of the client's membership table.
        root: u64,
    },
    /// The node's membership table ([`Reply::Members`]): every node it
    /// knows of, with its signed record.
    Members,
    /// Stage a signed release: verify it as a deploy would (trust store,
    /// anti-downgrade), fetch the chunks the node lacks from the sender and
    /// `peers`, and keep it in the chunk store, neither installed nor
    /// activated, so that a later deploy of it starts with every chunk
    /// present. Answered with [`Reply::Catalog`] holding its entry.
    Stage {
        /// The descriptor's canonical bytes.
        #[serde(with = "serde_bytes")]
        descriptor: Vec<u8>,
        /// Signatures over the descriptor.
        signatures: Vec<Signature>,
        /// Other nodes receiving or holding the release (the swarm).
        peers: Vec<PeerAddr>,
    },
    /// The node's event log after index `after` (0: from the oldest
    /// kept), streamed as [`Frame::NodeEvent`]; with `follow`, new events
    /// as they are recorded until the client goes away. Version
    /// [`EVENTS_VERSION`] on.
    Events {
        /// Send the events after this index.
        after: u64,
        /// Keep sending new events.
        follow: bool,
    },
    /// What a deploy of this release would do here, changing nothing
    /// ([`Reply::Plan`]): whether it would be refused and why, what the
    /// node holds of it already. Version [`EVENTS_VERSION`] on.
    Plan {
        /// The descriptor's canonical bytes.
        #[serde(with = "serde_bytes")]
        descriptor: Vec<u8>,
        /// Signatures over the descriptor.
        signatures: Vec<Signature>,
    },
}

impl Request {
    /// Whether the request changes the node (only operators may send it).
    ///
    /// Every request is named here, with no catch-all: a new request does
    /// not compile until someone decides whether non-operators may send it.
    pub fn is_mutating(&self) -> bool {
        match self {
            Request::Start { .. }
            | Request::Stop { .. }
            | Request::Restart { .. }
            | Request::Switch { .. }
            | Request::Rollback { .. }
            | Request::Remove { .. }
            | Request::Deploy { .. }
            | Request::DeployRef { .. }
            | Request::Fetch { .. }
            | Request::Stage { .. } => true,
            Request::Info
            | Request::List
            | Request::Status { .. }
            | Request::Logs { .. }
            | Request::Catalog
            | Request::Release { .. }
            | Request::FetchChunks { .. }
            | Request::FetchAny { .. }
            | Request::Swarm { .. }
            | Request::Gossip { .. }
            | Request::Members
            | Request::Events { .. }
            | Request::Plan { .. } => false,
        }
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
            Request::Gossip { .. } => "gossip",
            Request::Members => "members",
            Request::Stage { .. } => "stage",
            Request::Events { .. } => "events",
            Request::Plan { .. } => "plan",
        }
    }
}

/// A request with its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Milliseconds the server may spend on it.
    pub timeout_ms: u64,
    /// What is asked; the deadline is `timeout_ms`.
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
#[non_exhaustive]
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
    /// Every app it has a record of, with status and history.
    pub apps: Vec<AppInfo>,
    /// The swarm peers it has scored, with any bans.
    pub peers: Vec<PeerScore>,
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
#[non_exhaustive]
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
    /// Bytes of the release the node held before this deploy began (a
    /// staged release, a shared earlier transfer); sent once, before the
    /// transfer.
    AlreadyHeld {
        /// Bytes present.
        bytes: u64,
        /// Archive size.
        total: u64,
    },
}

/// The final answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
        #[serde(with = "serde_bytes")]
        descriptor: Vec<u8>,
        /// The signatures the node received with it.
        signatures: Vec<Signature>,
    },
    /// For [`Request::Members`]: each member's signed record, with the
    /// claim that it is unreachable if one was made (check them with
    /// [`crate::membership::open_entries`]).
    Members(Vec<crate::membership::MemberEntry>),
    /// For [`Request::Plan`].
    Plan(Box<DeployPlan>),
}

/// What a deploy of a release would do on one node ([`Request::Plan`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// The app's active version there now, if any.
    pub active: Option<semver::Version>,
    /// The release is that version, active and running: nothing to do.
    pub already_active: bool,
    /// The version is installed there already (activation only).
    pub installed: bool,
    /// Bytes of the release's chunks the node holds already.
    pub held_bytes: u64,
    /// Bytes it would fetch.
    pub missing_bytes: u64,
    /// Chunks it would fetch.
    pub missing_chunks: u32,
    /// Why the node would refuse the deploy, if it would: not an
    /// operator, untrusted signatures, a downgrade, a conflicting release
    /// of the same version.
    pub refusal: Option<RpcError>,
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
#[non_exhaustive]
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
#[non_exhaustive]
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
        #[serde(with = "serde_bytes")]
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
    /// every [`HEARTBEAT`]; [`Call`](super::Call) reads past it.
    Alive,
    /// An event of the node's log ([`Request::Events`]).
    NodeEvent(crate::events::NodeEvent),
}

/// [`Frame::Chunk`]'s variant index in postcard's encoding (its first
/// byte, as `byte_strings_keep_their_wire_form` pins).
const CHUNK_VARIANT: u32 = 2;

/// The bytes a [`Frame::Chunk`] of `len` bytes starts with, as postcard
/// encodes it (variant, index, length, each a varint); the chunk's bytes
/// follow. A chunk is sent as this header and its bytes, written one
/// after the other ([`Framed::send_parts`](p2p_core::framing::Framed::send_parts)),
/// instead of being copied into an encoded message first.
pub(crate) fn chunk_header(index: u32, len: usize) -> Vec<u8> {
    // A slice's length is a varint of the same form as a u32's.
    postcard::to_stdvec(&(CHUNK_VARIANT, index, len as u64)).unwrap_or_default()
}

/// How many bytes of a frame [`chunk_index`] needs: the variant and the
/// index, each a varint of a `u32` (5 bytes at most).
pub(crate) const CHUNK_HEAD: usize = 10;

/// The index of the chunk a frame starting with `head` carries, or `None`
/// when it is not a [`Frame::Chunk`] (or `head` is too short to say).
pub(crate) fn chunk_index(head: &[u8]) -> Option<u32> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(head).ok()?;
    if variant != CHUNK_VARIANT {
        return None;
    }
    postcard::take_from_bytes::<u32>(rest).ok().map(|(i, _)| i)
}

/// A frame as received: a chunk with its bytes left where they arrived
/// (a slice of the frame's buffer, not a copy), or any other frame.
pub(crate) enum Incoming {
    /// A [`Frame::Chunk`].
    Chunk {
        /// Its index.
        index: u32,
        /// Its bytes.
        bytes: bytes::Bytes,
    },
    /// Any other frame.
    Frame(Frame),
}

impl Incoming {
    /// Decodes a frame's body as [`decode`](p2p_core::framing::decode)
    /// decodes a [`Frame`], with the same errors.
    pub(crate) fn decode(body: Vec<u8>) -> p2p_core::Result<Incoming> {
        let chunk = |body: &[u8]| -> Option<(u32, std::ops::Range<usize>)> {
            let (variant, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
            if variant != CHUNK_VARIANT {
                return None;
            }
            let (index, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
            let (bytes, _) = postcard::take_from_bytes::<&[u8]>(rest).ok()?;
            let start = bytes.as_ptr() as usize - body.as_ptr() as usize;
            Some((index, start..start + bytes.len()))
        };
        match chunk(&body) {
            Some((index, range)) => Ok(Incoming::Chunk {
                index,
                bytes: bytes::Bytes::from(body).slice(range),
            }),
            None => p2p_core::framing::decode::<Frame>(&body).map(Incoming::Frame),
        }
    }

    /// The frame it is (a chunk's bytes copied into it).
    pub(crate) fn into_frame(self) -> Frame {
        match self {
            Incoming::Chunk { index, bytes } => Frame::Chunk {
                index,
                bytes: bytes.to_vec(),
            },
            Incoming::Frame(f) => f,
        }
    }
}

/// One peer's standing, as node info shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerScore {
    /// The peer scored, by its id.
    pub peer: PeerId,
    /// Its score: good chunks raise it, failures and bad chunks lower it.
    pub score: i32,
    /// Good chunks it served.
    pub good: u64,
    /// Requests to it that failed or timed out.
    pub failed: u64,
    /// Chunks from it that failed verification.
    pub corrupt: u64,
    /// Milliseconds left of its ban, if it is banned.
    pub banned_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte strings travel as postcard byte strings (length, then the
    /// bytes): exactly what a sequence of `u8` gives, so that peers of
    /// every version read each other, only without a call per byte.
    #[test]
    fn byte_strings_keep_their_wire_form() {
        let chunk = Frame::Chunk {
            index: 3,
            bytes: vec![7, 8, 9],
        };
        assert_eq!(postcard::to_allocvec(&chunk).unwrap(), [2, 3, 3, 7, 8, 9]);
        let back: Frame = postcard::from_bytes(&[2, 3, 3, 7, 8, 9]).unwrap();
        assert!(matches!(back, Frame::Chunk { index: 3, ref bytes } if bytes == &[7, 8, 9]));
        let release = Reply::Release {
            descriptor: vec![1, 2],
            signatures: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&release).unwrap();
        assert_eq!(&bytes[1..], [2, 1, 2, 0]);
    }

    /// A chunk sent as a header and its bytes is the frame postcard makes
    /// of it, and a received chunk frame comes out as the same chunk
    /// without being copied; every other frame, or a damaged chunk
    /// frame, decodes (or fails) exactly as a `Frame` does.
    #[test]
    fn chunks_travel_in_parts_and_arrive_in_place() {
        for (index, len) in [
            (0u32, 0usize),
            (3, 3),
            (200, 127),
            (70_000, 128),
            (1, 300_000),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let frame = Frame::Chunk {
                index,
                bytes: bytes.clone(),
            };
            let whole = postcard::to_allocvec(&frame).unwrap();
            let parts = [chunk_header(index, len), bytes.clone()].concat();
            assert_eq!(parts, whole, "chunk {index} of {len} bytes");
            // Its index, from the frame's first bytes alone.
            assert_eq!(
                chunk_index(&whole[..CHUNK_HEAD.min(whole.len())]),
                Some(index)
            );
            let at = whole.as_ptr() as usize;
            match Incoming::decode(whole).unwrap() {
                Incoming::Chunk { index: i, bytes: b } => {
                    assert_eq!((i, &b[..]), (index, &bytes[..]));
                    // In place: a slice of the frame's own buffer.
                    assert_eq!(b.as_ptr() as usize, at + (parts.len() - len));
                    assert_eq!(Incoming::Chunk { index: i, bytes: b }.into_frame(), frame);
                }
                Incoming::Frame(f) => panic!("a chunk decoded as {f:?}"),
            }
        }
        let got = postcard::to_allocvec(&Frame::Got(9)).unwrap();
        assert_eq!(chunk_index(&got), None, "not a chunk");
        assert!(matches!(
            Incoming::decode(got),
            Ok(Incoming::Frame(Frame::Got(9)))
        ));
        // A chunk frame cut short says what a Frame decode says.
        let mut cut = postcard::to_allocvec(&Frame::Chunk {
            index: 1,
            bytes: vec![5; 10],
        })
        .unwrap();
        cut.truncate(8);
        let want = p2p_core::framing::decode::<Frame>(&cut)
            .unwrap_err()
            .to_string();
        let e = Incoming::decode(cut).err().expect("cut short").to_string();
        assert_eq!(e, want);
        assert!(e.contains("malformed Frame frame"), "{e}");
    }
}
