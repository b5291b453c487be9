//! Raw streams over libp2p connections: a copy of `libp2p-stream`
//! 0.5.0-alpha (MIT, the rust-libp2p authors), changed in one place.
//!
//! Upstream opens a stream on a connection to the peer picked at random.
//! A node that reached a peer through a circuit relay and then punched a
//! direct path (DCUtR) has both connections for a while, and random picks
//! would send half of every transfer through the relay. Here
//! (`Shared::sender`) a direct connection is taken before a relayed one,
//! the newest first, so new streams move to the direct path as soon as it
//! exists, while streams already open on the relayed connection finish
//! there. Nothing else differs; the `HashMap`s became `BTreeMap`s for the
//! workspace's determinism lints, and `Shared::lock` takes the lock through
//! `p2p_core::sync::lock` (ignoring poisoning, as upstream does).
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod behaviour;
mod control;
mod handler;
mod shared;
mod upgrade;

pub use behaviour::{AlreadyRegistered, Behaviour};
pub use control::{Control, IncomingStreams, OpenStreamError};
