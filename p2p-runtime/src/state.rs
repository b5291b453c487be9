//! What a [`ProcessRuntime`](crate::ProcessRuntime) shares with its
//! supervisor tasks: the runtime's state ([`Inner`]) and each app's
//! ([`App`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use p2p_core::Clock;
use p2p_core::runtime::{AppSpec, AppStatus, HealthChecker};
use p2p_core::sync::lock;
use rand_chacha::ChaCha8Rng;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::limits::Cgroups;
use crate::logs::AppLogs;

/// The state of a runtime, shared by its handles and its supervisors.
pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) checker: Arc<dyn HealthChecker>,
    pub(crate) cgroups: Cgroups,
    /// Jitter for restart backoff, seeded from [`RuntimeConfig::seed`].
    pub(crate) rng: Mutex<ChaCha8Rng>,
    pub(crate) apps: Mutex<BTreeMap<String, Arc<App>>>,
    /// Numbers unique within this runtime (for tombstone names).
    pub(crate) unique: std::sync::atomic::AtomicU64,
}

/// One app: its spec, status, logs and supervisor task.
pub(crate) struct App {
    pub(crate) spec: AppSpec,
    pub(crate) status: Mutex<AppStatus>,
    pub(crate) logs: Arc<AppLogs>,
    /// Cancelled to stop the app: its supervisor stops the process and ends.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the supervisor task has ended, however it ended.
    pub(crate) done: CancellationToken,
}

/// Marks an app's supervisor as ended when dropped: also on a panic.
pub(crate) struct DoneGuard(pub(crate) CancellationToken);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl App {
    pub(crate) fn set(&self, f: impl FnOnce(&mut AppStatus)) {
        f(&mut lock(&self.status));
    }

    pub(crate) fn status(&self) -> AppStatus {
        lock(&self.status).clone()
    }

    /// Waits for the supervisor task to end.
    pub(crate) async fn finished(&self) {
        self.done.cancelled().await;
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.is_cancelled()
    }
}
