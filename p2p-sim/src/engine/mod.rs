//! The event engine behind [`crate::SimNet`].
//!
//! One mutex-protected `State` holds every node, connection and stream
//! direction ("flow"), and a queue of timed events ordered by (virtual time,
//! sequence number). A single driver task pops due events and sleeps on
//! tokio's (paused) clock until the next one, so idle time costs nothing.
//!
//! Data path of one segment (at most `mss` bytes of one flow):
//!
//! ```text
//! writer -> flow send buffer -> sender uplink (fair round robin over flows,
//!   serialization time = size / upload) -> link (latency + jitter; loss
//!   schedules a retransmission; a partition parks it until heal)
//!   -> receiver downlink (fair round robin, size / download)
//!   -> reorder buffer -> reader
//! ```
//!
//! A writer may have at most `window` bytes not yet consumed by the reader;
//! consumed bytes return as credit one link latency later.
//!
//! Every event is processed at its own virtual timestamp (nanoseconds), even
//! though tokio's timer wakes the driver on millisecond ticks, so bandwidth
//! figures are exact rather than rounded to the tick.
//!
//! # Files, lowest first
//!
//! Each file uses only the ones listed before it. Everything but the
//! driver is the pure model: state changes at a virtual time the caller
//! sets, with no tokio timers, tasks or locks.
//!
//! - `stats`: [`NetStats`] and [`NodeTraffic`].
//! - `state`: the model's data (nodes, connections, flows, segments,
//!   events, effects) and its primitives (ids, scheduling, the trace).
//! - `links`: latency, jitter, loss and retransmission timeouts of a link,
//!   and whether a partition cuts it.
//! - `bandwidth`: each node's uplink and downlink, shared fairly between
//!   flows.
//! - `stream`: what stream readers and writers do to their flow.
//! - `delivery`: a segment's trip from the uplink to the reader.
//! - `connection`: connection ends, closing, opening and accepting streams.
//! - `dial`: listening, route planning through NAT and relays, dialing.
//! - `discovery`: LAN announcements.
//! - `nodes`: adding nodes, bringing them up, crashes and closes.
//! - `partition`: cutting paths, idle timeouts, healing.
//! - `events`: running due events and dispatching each to the above.
//! - `driver`: the lock, the effects performed outside it, the tokio task
//!   that advances the model, and the check that tokio time is paused.

mod bandwidth;
mod connection;
mod delivery;
mod dial;
mod discovery;
mod driver;
mod events;
mod links;
mod nodes;
mod partition;
mod state;
mod stats;
mod stream;

pub(crate) use driver::{Shared, drive, runtime_problem};
pub(crate) use state::{Config, ConnId, FlowId, NodeIdx, State};
pub use stats::{NetStats, NodeTraffic};
