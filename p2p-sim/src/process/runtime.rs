//! [`SimRuntime`]: the [`Runtime`] of simulated processes: starting,
//! stopping and removing apps, their status, and their logs (tail and
//! follow).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Stream, StreamExt, stream};
use p2p_core::{
    AppSpec, AppStatus, Clock, LogLine, LogLines, LogSelection, LogStream, Result, Runtime,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::health::SimHealthChecker;
use super::script::ScriptBook;
use super::supervisor::start_locked;
use super::table::{PID_FIRST, Shared, Table, halt, not_found};

/// A [`Runtime`] of simulated processes that follow the [`ScriptBook`]'s
/// scripts in tokio time (run it with paused time for fast, reproducible
/// simulations).
///
/// Each app is supervised by a tokio task; dropping the runtime or calling
/// [`SimRuntime::shutdown`] aborts them all.
pub struct SimRuntime {
    shared: Arc<Shared>,
}

impl SimRuntime {
    /// A runtime that runs the scripts of `book`, stamps `started_at` with
    /// `clock`, and draws pids and backoff jitter from an RNG seeded with
    /// `seed`.
    pub fn new(book: ScriptBook, clock: Arc<dyn Clock>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_pid = rng.random_range(PID_FIRST..32_768);
        SimRuntime {
            shared: Arc::new(Shared {
                table: Mutex::new(Table {
                    apps: BTreeMap::new(),
                    rng,
                    next_pid,
                    next_epoch: 0,
                }),
                clock,
                book,
            }),
        }
    }

    /// The book this runtime reads scripts from.
    pub fn book(&self) -> &ScriptBook {
        &self.shared.book
    }

    /// A health checker that probes this runtime's instances.
    pub fn health_checker(&self) -> SimHealthChecker {
        SimHealthChecker {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Kills every instance at once, as a machine crash does: supervisors
    /// are aborted, so nothing restarts or writes again; every app is left
    /// [`AppState::Stopped`](p2p_core::AppState::Stopped) with exit `Signal(9)` (when it was live) and a
    /// reason; log followers end. Apps can be started again afterwards, as
    /// on a rebooted machine.
    pub fn shutdown(&self) {
        let mut table = self.shared.lock();
        let names: Vec<String> = table.apps.keys().cloned().collect();
        for name in names {
            let epoch = table.new_epoch();
            if let Some(entry) = table.apps.get_mut(&name) {
                halt(entry, epoch, 9, "killed (SIGKILL): runtime shut down");
                entry.status.reason = Some("killed: runtime shut down".to_string());
                entry.log.followers = None;
            }
        }
    }
}

impl fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.shared.lock();
        f.debug_struct("SimRuntime")
            .field("apps", &table.apps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for SimRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn selects(wanted: LogStream, line: LogStream) -> bool {
    wanted == LogStream::Both || wanted == line
}

fn follow(
    followers: broadcast::Receiver<LogLine>,
    wanted: LogStream,
) -> impl Stream<Item = Result<LogLine>> + Send + 'static {
    stream::unfold(followers, move |mut followers| async move {
        loop {
            match followers.recv().await {
                Ok(line) if selects(wanted, line.stream) => return Some((Ok(line), followers)),
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "log follower fell behind and lost lines");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[async_trait]
impl Runtime for SimRuntime {
    async fn start(&self, spec: AppSpec) -> Result<AppStatus> {
        let mut table = self.shared.lock();
        start_locked(&self.shared, &mut table, spec)
    }

    async fn stop(&self, name: &str) -> Result<AppStatus> {
        let signal = self.term(name).await?;
        let mut table = self.shared.lock();
        let epoch = table.new_epoch();
        let entry = table.apps.get_mut(name).ok_or_else(|| not_found(name))?;
        halt(entry, epoch, signal, last_words(signal));
        Ok(entry.status.clone())
    }

    async fn restart(&self, name: &str) -> Result<AppStatus> {
        let signal = self.term(name).await?;
        let mut table = self.shared.lock();
        let epoch = table.new_epoch();
        let entry = table.apps.get_mut(name).ok_or_else(|| not_found(name))?;
        halt(entry, epoch, signal, last_words(signal));
        let spec = entry.spec.clone();
        start_locked(&self.shared, &mut table, spec)
    }

    async fn status(&self, name: &str) -> Result<AppStatus> {
        let table = self.shared.lock();
        let entry = table.apps.get(name).ok_or_else(|| not_found(name))?;
        Ok(entry.status.clone())
    }

    async fn list(&self) -> Result<Vec<AppStatus>> {
        let table = self.shared.lock();
        Ok(table.apps.values().map(|e| e.status.clone()).collect())
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let mut table = self.shared.lock();
        let mut entry = table.apps.remove(name).ok_or_else(|| not_found(name))?;
        if let Some(task) = entry.task.take() {
            task.abort();
        }
        tracing::debug!(app = name, "simulated app removed");
        // Dropping the entry drops its log channel, which ends its followers.
        Ok(())
    }

    async fn logs(&self, name: &str, selection: LogSelection) -> Result<LogLines> {
        let table = self.shared.lock();
        let entry = table.apps.get(name).ok_or_else(|| not_found(name))?;
        let wanted = selection.stream;
        let mut kept: Vec<LogLine> = entry
            .log
            .lines
            .iter()
            .filter(|l| selects(wanted, l.stream))
            .cloned()
            .collect();
        if let Some(tail) = selection.tail {
            kept.drain(..kept.len().saturating_sub(tail));
        }
        let backlog = stream::iter(kept.into_iter().map(Ok));
        // Subscribing under the same lock as the snapshot means no line is
        // missed or delivered twice between backlog and live lines.
        match entry.log.followers.as_ref().filter(|_| selection.follow) {
            Some(followers) => Ok(backlog.chain(follow(followers.subscribe(), wanted)).boxed()),
            None => Ok(backlog.boxed()),
        }
    }
}

impl SimRuntime {
    /// The graceful signal to `name`: 15 when its instance ends on it (or
    /// there is none); 9 when its script ignores it, after waiting the
    /// app's `stop_grace` (the instance runs on meanwhile).
    async fn term(&self, name: &str) -> Result<i32> {
        let grace = {
            let table = self.shared.lock();
            let entry = table.apps.get(name).ok_or_else(|| not_found(name))?;
            entry
                .instance
                .as_ref()
                .filter(|i| i.script.ignores_term)
                .map(|_| entry.spec.stop_grace)
        };
        match grace {
            Some(grace) => {
                tokio::time::sleep(grace).await;
                Ok(9)
            }
            None => Ok(15),
        }
    }
}

fn last_words(signal: i32) -> &'static str {
    if signal == 9 {
        "ignored SIGTERM; killed after its stop grace"
    } else {
        "received SIGTERM, exiting"
    }
}
