//! The transport traits: [`Provider`], [`Listener`] and [`Connection`].
//!
//! The deploy layer holds an `Arc<dyn Provider>` and never learns which
//! backend is underneath. Control-plane calls (connect, accept, open a
//! stream) are async trait methods; data moves through plain tokio
//! `AsyncRead`/`AsyncWrite` streams so that reads and writes stay poll-based
//! and allocation-free.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::addr::PeerAddr;
use crate::error::Result;
use crate::id::PeerId;

/// The sending half of a bidirectional stream.
///
/// Shutting it down (`AsyncWriteExt::shutdown`) finishes the stream: the
/// peer's reader sees end of stream after every byte written before it.
pub type SendStream = Box<dyn AsyncWrite + Send + Unpin>;

/// The receiving half of a bidirectional stream. A read of zero bytes means
/// the peer finished its sending half.
pub type RecvStream = Box<dyn AsyncRead + Send + Unpin>;

/// A stream of peers found by local discovery (mDNS, simulated LAN) or
/// bootstrap. The same peer may appear more than once, for example when its
/// addresses change.
pub type Discovered = BoxStream<'static, PeerAddr>;

/// How a connection reaches its peer: straight to one of its addresses, or
/// through a relay that forwards every byte.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Packets go between the two nodes' own addresses (on a LAN, across
    /// the internet, or through NAT after hole punching).
    Direct,
    /// Packets go through a relay server or relay node.
    Relayed,
    /// The backend cannot tell (or the connection is not set up yet).
    Unknown,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
            PathKind::Unknown => "unknown",
        })
    }
}

/// The path a connection uses right now, as its transport sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathInfo {
    /// Direct or relayed.
    pub kind: PathKind,
    /// The address the packets go to, in the backend's notation: the
    /// peer's socket address or multiaddr when direct, the relay's URL or
    /// address when relayed.
    pub remote: Option<String>,
    /// The transport's current round-trip estimate.
    pub rtt: Option<Duration>,
}

impl PathInfo {
    /// A path the backend knows nothing about.
    pub fn unknown() -> Self {
        PathInfo {
            kind: PathKind::Unknown,
            remote: None,
            rtt: None,
        }
    }
}

impl std::fmt::Display for PathInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(r) = &self.remote {
            write!(f, " via {r}")?;
        }
        if let Some(rtt) = self.rtt {
            write!(f, " rtt {:.1} ms", rtt.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

/// A transport backend: dials peers and accepts connections from them.
///
/// # Contract
///
/// - [`local_id`](Provider::local_id) is derived from the node key the
///   provider was built with: the same key gives the same id on every
///   backend and across restarts.
/// - [`connect`](Provider::connect) returns only after the remote has proven
///   the identity in [`PeerAddr::id`]; a different identity at that address
///   is an error, never a connection. An unreachable peer yields
///   [`Error::Unreachable`](crate::Error::Unreachable) or
///   [`Error::Timeout`](crate::Error::Timeout) within a bounded time (the
///   backend documents the bound).
/// - Inbound connections are delivered to the [`Listener`] returned by
///   [`listen`](Provider::listen); while no listener exists they are refused
///   or closed. At most one listener is live at a time; a second call while
///   one is live fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists).
/// - After [`close`](Provider::close), every connection of this provider is
///   closed with a reason the peers see, `accept` returns
///   [`Error::Closed`](crate::Error::Closed), and `connect` fails. `close`
///   returns within a bounded time and is idempotent.
/// - Implementations are `Send + Sync`; all methods take `&self` and may be
///   called concurrently.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name of the backend, used in errors and logs (`iroh`, `libp2p`, `sim`).
    fn backend(&self) -> &'static str;

    /// This node's identity.
    fn local_id(&self) -> PeerId;

    /// This node's identity and the addresses peers can dial it at.
    fn local_addr(&self) -> PeerAddr;

    /// Opens a connection to `peer`, verifying its identity.
    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>>;

    /// Starts delivering inbound connections to the returned listener.
    async fn listen(&self) -> Result<Box<dyn Listener>>;

    /// Peers found by local discovery or bootstrap. Each call returns a new
    /// subscription that first yields the peers already known. Backends with
    /// discovery switched off return a stream that stays pending until the
    /// provider closes.
    fn discovered(&self) -> Discovered;

    /// Closes every connection with `reason` and stops accepting.
    async fn close(&self, reason: &str);

    /// Counters the backend keeps about its paths (hole punching), for
    /// metrics. Backends that do not punch holes keep the default: zeros.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
}

/// Counters a backend keeps about its paths, read by
/// [`metrics`](crate::metrics) at every scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Hole punches tried: each move of a connection onto a relay, from
    /// where it sets out to find a direct path (iroh), or DCUtR attempts
    /// (libp2p).
    pub hole_punches_tried: u64,
    /// Of those, how many ended on a direct path.
    pub hole_punches_succeeded: u64,
}

/// Inbound connections of a [`Provider`].
///
/// # Contract
///
/// - [`accept`](Listener::accept) yields connections whose remote identity
///   has been verified by the transport (and, through an admission wrapper,
///   admitted). A connection refused by admission is never yielded.
/// - Once the provider is closed, `accept` returns
///   [`Error::Closed`](crate::Error::Closed).
/// - [`accept`](Listener::accept) is cancel-safe: dropping its future (in a
///   `select!`, under a timeout) loses no connection.
/// - Dropping the listener stops accepting at once, so `listen` may be
///   called again; connections already yielded stay open.
#[async_trait]
pub trait Listener: Send {
    /// Waits for the next inbound connection.
    async fn accept(&mut self) -> Result<Arc<dyn Connection>>;
}

/// An authenticated connection to one peer, carrying many bidirectional
/// streams.
///
/// # Contract
///
/// - [`remote_id`](Connection::remote_id) is the identity the transport
///   verified.
/// - [`open_bi`](Connection::open_bi) returns a stream at once or after
///   stream credit frees up; the peer's [`accept_bi`](Connection::accept_bi)
///   yields it no later than when the first byte arrives, or when the
///   opener finishes it. Streams are independent: a slow reader on one does
///   not stall the others beyond the connection's shared bandwidth.
/// - Data on a stream arrives in order, intact, or not at all (then the
///   reader gets an error). Shutting down the send half delivers end of
///   stream after all prior bytes, and the other direction keeps working
///   (half-close). Dropping a send half without shutting it down finishes
///   or resets it; callers that need a clean end call `shutdown`.
/// - [`close`](Connection::close) ends the connection for both sides: local
///   streams fail at once, the peer's `accept_bi` returns
///   [`Error::Closed`](crate::Error::Closed) carrying `reason` and
///   [`is_connected`](Connection::is_connected) turns false within a
///   bounded time (the backend documents the bound). When the last handle
///   to a connection and the last of its streams are dropped, it is closed.
#[async_trait]
pub trait Connection: Send + Sync {
    /// The verified identity of the peer.
    fn remote_id(&self) -> PeerId;

    /// Opens a new bidirectional stream.
    async fn open_bi(&self) -> Result<(SendStream, RecvStream)>;

    /// Waits for the peer to open a bidirectional stream.
    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)>;

    /// False once either side closed the connection or it was lost.
    fn is_connected(&self) -> bool;

    /// Closes the connection; the peer sees `reason`.
    async fn close(&self, reason: &str);

    /// The path the connection uses now: direct or relayed, to which
    /// address, and the round-trip estimate. It can change over the life of
    /// a connection (a relayed connection becomes direct once hole punching
    /// succeeds). Backends that cannot tell return [`PathInfo::unknown`].
    fn path(&self) -> PathInfo {
        PathInfo::unknown()
    }
}

/// `Arc<P>` is a provider whenever `P` is, so `Arc<dyn Provider>` can be
/// passed wherever a provider is expected (admission wrappers, generic code).
#[async_trait]
impl<P: Provider + ?Sized> Provider for Arc<P> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn local_id(&self) -> PeerId {
        (**self).local_id()
    }
    fn local_addr(&self) -> PeerAddr {
        (**self).local_addr()
    }
    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        (**self).connect(peer).await
    }
    async fn listen(&self) -> Result<Box<dyn Listener>> {
        (**self).listen().await
    }
    fn discovered(&self) -> Discovered {
        (**self).discovered()
    }
    async fn close(&self, reason: &str) {
        (**self).close(reason).await
    }
    fn stats(&self) -> TransportStats {
        (**self).stats()
    }
}

impl std::fmt::Debug for dyn Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection(to {})", self.remote_id().short())
    }
}

impl std::fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Provider({} {})",
            self.backend(),
            self.local_id().short()
        )
    }
}

impl std::fmt::Debug for dyn Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}
