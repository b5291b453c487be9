//! [`RuntimeConfig`]: where a [`ProcessRuntime`](crate::ProcessRuntime)
//! keeps its files, how it rotates logs, seeds backoff jitter and names
//! its cgroup.

use std::path::PathBuf;

use crate::logs::LogRotation;

/// Configuration of a [`ProcessRuntime`](crate::ProcessRuntime).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Directory for the runtime's files, made if missing: app logs go to
    /// `<root>/logs/<app>/{stdout,stderr,combined}.log`, the records of
    /// running processes to `<root>/pids/<app>`.
    pub root: PathBuf,
    /// When each app's log files rotate and how many are kept per stream;
    /// default 10 MiB x 5. A runtime refuses files under 1 KiB or no file
    /// kept.
    pub log_rotation: LogRotation,
    /// Seed of the random numbers that jitter restart backoff (±20%);
    /// default 0.
    pub seed: u64,
    /// Name of the cgroup this runtime makes under its own, one child per
    /// app. Two runtimes in one process need different names; the default
    /// (`p2p-runtime-<pid>-<n>`) is unique per runtime.
    pub cgroup_name: String,
}

impl RuntimeConfig {
    /// Files under `root`, default rotation (10 MiB x 5), seed 0, cgroup
    /// `p2p-runtime-<pid>-<n>` (one per runtime).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            root: root.into(),
            log_rotation: LogRotation::default(),
            seed: 0,
            cgroup_name: {
                // Unique per runtime: several runtimes in one process (a
                // local fleet) must not share, and so tear down, a cgroup.
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("p2p-runtime-{}-{n}", std::process::id())
            },
        }
    }

    /// Sets the log rotation.
    pub fn log_rotation(mut self, r: LogRotation) -> Self {
        self.log_rotation = r;
        self
    }

    /// Sets the backoff jitter seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the cgroup name.
    pub fn cgroup_name(mut self, name: impl Into<String>) -> Self {
        self.cgroup_name = name.into();
        self
    }
}
