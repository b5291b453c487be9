//! The deploy RPC protocol: what controllers and agents say to each other.
//!
//! Every request is one bidirectional stream on a p2p-core
//! [`Connection`](p2p_core::Connection), framed with
//! [`p2p_core::framing`] (u32 length + postcard):
//!
//! 1. The client sends its [`Hello`](p2p_core::framing::Hello) for
//!    [`PROTOCOL`] and, without waiting, one [`Request`]; the server
//!    answers with its hello (a version mismatch fails both sides with
//!    [`Error::VersionMismatch`](p2p_core::Error::VersionMismatch)).
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
//! Version 3 adds membership ([`Request::Gossip`], [`Request::Members`]),
//! staging ([`Request::Stage`]) and the [`DeployEvent::AlreadyHeld`]
//! progress event, which a server sends only to version 3 clients.
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

mod bitfield;
mod call;
mod error;
mod serve;
mod wire;

pub use bitfield::Bitfield;
pub use call::{Call, call, call_watched};
pub use error::{ErrorKind, RpcError};
pub use serve::MAX_FETCH_INDEXES;
pub(crate) use serve::{accept_request, end_with, send_chunk, send_chunks, unexpected};
pub use wire::*;
