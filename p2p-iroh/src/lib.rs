//! # p2p-iroh
//!
//! The iroh (QUIC) transport of the p2p deployment SDK.
#![doc = "(full docs below)"]

pub mod addr;
mod config;
mod conn;
mod discovery;
mod hooks;
mod provider;

pub use config::{Connectivity, IrohConfig};
pub use conn::IrohConnection;
pub use provider::{ALPN, IrohListener, IrohProvider};
