//! # p2p-examples
//!
//! The SDK as tools a person runs:
//!
//! - `p2pd`, the node agent as a daemon: `init` writes a commented config
//!   and a node key, `run` serves until SIGTERM, `id` prints the address.
//! - `p2pctl`, the controller's command line; offline, it makes keys and
//!   packages, signs and verifies them.
//! - `p2pd relay`, a relay for nodes behind NAT.
//!
//! ```text
//! cargo run -p p2p-examples --bin p2pd -- init --data-dir ./node1 --listen 127.0.0.1:7401
//! cargo run -p p2p-examples --bin p2pd -- run --data-dir ./node1
//! cargo run -p p2p-examples --bin p2pctl -- keygen --out alice
//! cargo run -p p2p-examples --bin p2pctl -- package ./web
//! cargo run -p p2p-examples --bin p2pctl -- sign web-1.0.0.p2p --signing-key alice.key
//! ```
//!
//! The library half is what the binaries and the `fleet` example share:
//! [`net`] binds a node to iroh or libp2p with a pre-shared key,
//! allow-list and relays, [`daemon`] is `p2pd`'s configuration, [`node`]
//! composes an agent from a data directory, [`relay`] is `p2pd relay`,
//! [`show`] prints tables and rollout progress, and [`fleet`] is the story
//! `cargo run --release --example fleet` tells. [`netlab`] builds networks
//! of namespaces, bridges and NAT routers for the tests and benchmarks
//! that run these between hosts.

pub mod daemon;
pub mod fleet;
pub mod metrics;
pub mod net;
pub mod netlab;
pub mod node;
pub mod relay;
pub mod show;
