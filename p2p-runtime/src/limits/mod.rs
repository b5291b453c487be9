//! Resource limits: cgroup v2 where the host has the controllers there,
//! cgroup v1 otherwise, else rlimits; and whether an app was killed for
//! exceeding its memory limit.
//!
//! A process joins its cgroup before it runs any of the app's code: it is
//! started through `/bin/sh`, which writes its own pid into each
//! `cgroup.procs` file, applies the rlimit if that is the mechanism, and
//! then `exec`s the app (same pid). So nothing the app forks can escape
//! the limit, and no `unsafe` `pre_exec` hook is needed.

mod app;
mod host;

pub(crate) use app::{Applied, WRAPPER};
pub use host::{Cgroups, LimitSupport};
