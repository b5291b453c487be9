//! # p2p-runtime
//!
//! Process supervision for the p2p deployment SDK.

mod health;
mod limits;
mod logs;
mod runtime;

pub use health::ProcessHealthChecker;
pub use limits::{Cgroups, LimitSupport};
pub use logs::LogRotation;
pub use runtime::{ProcessRuntime, RuntimeConfig};
