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
//! [`OpenReply`], and a data stream with one more byte:
//! [`ACK_OK`](wire::ACK_OK) once the stream is queued for `accept_bi`,
//! [`ACK_NO_SESSION`](wire::ACK_NO_SESSION) when the session is gone.
//!
//! `libp2p-stream` hands inbound streams over through a channel with room
//! for one and drops a stream that arrives while it is full. So an opener
//! opens at most one stream to a peer at a time until that stream is
//! [`RECEIVED`] (see [`Gates`]); a stream dropped anyway (by a burst from
//! several peers) ends before `RECEIVED` and is opened again. The second
//! answer gives `open_bi` its backpressure: it returns once the peer has
//! room for the stream.
//!
//! After the welcome the control stream carries one
//! [`ControlMsg::Close`](wire::ControlMsg::Close) with the reason, from
//! whichever side closes first. The end of the
//! control stream without one, or its failure, means the peer or the
//! libp2p connection is gone.
//!
//! Here: the wire format in `wire`, opening a stream to a peer (its gate,
//! budget and retries) in `opening`, a session's shared state, control
//! stream and registry in `state`, its stream halves in `stream`, and
//! [`Libp2pConnection`], the handle, in `connection`.

mod connection;
mod opening;
mod state;
mod stream;
mod wire;

pub use connection::Libp2pConnection;
pub(crate) use opening::{Gates, OPEN_ATTEMPTS, backoff, open_raw};
pub(crate) use state::{Registry, SessionEnv, SessionKey, route_data};
pub use wire::PROTOCOL;
pub(crate) use wire::{
    HEADER_LEN, Header, Io, Kind, MAX_CONTROL_FRAME, OpenReply, RECEIVED, Refusal, truncate,
};
