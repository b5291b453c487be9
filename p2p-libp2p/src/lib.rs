//! # p2p-libp2p
//!
//! The libp2p transport of the p2p deployment SDK.

pub mod addr;
mod config;
mod driver;
mod provider;
mod session;
mod transport;

pub use config::Libp2pConfig;
pub use provider::{Libp2pListener, Libp2pProvider};
pub use session::{Libp2pConnection, PROTOCOL};
pub use transport::build_transport;
