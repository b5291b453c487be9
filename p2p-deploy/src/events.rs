//! The node's event log: what happened on a node (a deploy accepted, its
//! transfer done, installed, a health gate passed or failed, a rollback,
//! an app that crashed or was restarted, a change refused and why), each
//! event with an index that only grows, kept across restarts and bounded.
//!
//! # Indexes, and resuming
//!
//! Indexes start at 1 and grow by one per event, on this node, for its
//! whole life (restarts included). A reader asks for the events *after*
//! an index (`0`: from the oldest kept) and, following, gets each new one
//! as it is recorded; one that lost its connection asks again after the
//! last index it printed and misses nothing and sees nothing twice.
//!
//! The log keeps the newest [`EVENTS_KEPT`] events (or what
//! [`AgentConfig::events_kept`](crate::AgentConfig::events_kept) says):
//! asking from an index older than that is refused, naming the events
//! that are gone, rather than answered with a silent gap. Asking from 0
//! means "whatever is kept".
//!
//! # Storage
//!
//! One key per event, `agent/events/<index, 20 digits>`, postcard; the
//! oldest are deleted as new ones come. An event is shown to readers only
//! once it is stored; one that cannot be stored (a full disk) is logged
//! and dropped. An event that cannot be read back (a damaged file) is
//! skipped with a warning, and its index is not reused.
//!
//! # Compatibility
//!
//! Events travel as postcard, which cannot skip a variant it does not
//! know: a new [`EventKind`] must only be sent to clients of a protocol
//! version that knows it (as [`crate::proto::HELD_VERSION`] does for
//! deploy progress).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use p2p_core::sync::lock;
use p2p_core::{Clock, ExitStatus, PeerId, Storage};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::package::PackageId;
use crate::proto::{ErrorKind, RpcError};

/// Events a node keeps by default.
pub const EVENTS_KEPT: usize = 10_000;

const PREFIX: &str = "agent/events/";

/// One event of a node's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// Its index on this node: 1, 2, 3... never reused.
    pub index: u64,
    /// When (wall clock, milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A deploy passed verification (signatures, anti-downgrade) and is
    /// under way.
    DeployAccepted {
        /// App name.
        app: String,
        /// Version.
        version: semver::Version,
        /// The release.
        package: PackageId,
        /// Who sent it.
        from: PeerId,
    },
    /// Every chunk of a release is held and verified.
    TransferDone {
        /// App name.
        app: String,
        /// Version.
        version: semver::Version,
        /// Bytes fetched for it.
        fetched: u64,
        /// Bytes the node held already (shared with other versions).
        held: u64,
    },
    /// A version is unpacked and ready to start.
    Installed {
        /// App name.
        app: String,
        /// Version.
        version: semver::Version,
    },
    /// A version passed its health gate and is active.
    GatePassed {
        /// App name.
        app: String,
        /// Version.
        version: semver::Version,
        /// `deploy`, `switch` or `rollback`.
        action: String,
        /// How long the gate took, in milliseconds.
        took_ms: u64,
    },
    /// A version failed its health gate.
    GateFailed {
        /// App name.
        app: String,
        /// Version.
        version: semver::Version,
        /// `deploy`, `switch` or `rollback`.
        action: String,
        /// Why.
        reason: String,
    },
    /// After a failed gate (or an activation a restart interrupted), the
    /// node went back to the version active before.
    RolledBack {
        /// App name.
        app: String,
        /// The version that failed.
        from: semver::Version,
        /// The version active again (none: the app had none).
        to: Option<semver::Version>,
        /// Why.
        reason: String,
    },
    /// An app's process exited and was restarted by its restart policy.
    AppRestarted {
        /// App name.
        app: String,
        /// Version.
        version: String,
        /// Restarts since it was started.
        restarts: u32,
        /// How the process ended.
        exit: Option<ExitStatus>,
    },
    /// An app's process ended and will not be restarted (a crash loop, a
    /// limit exceeded, a policy that does not restart).
    AppFailed {
        /// App name.
        app: String,
        /// Version.
        version: String,
        /// Why, as the runtime says.
        reason: String,
    },
    /// A change (deploy, switch, stop...) was refused or failed.
    Refused {
        /// The request (`deploy`, `stop`...).
        request: String,
        /// Who sent it.
        peer: PeerId,
        /// The error's kind (`denied`, `invalid`, `untrusted`...).
        error: String,
        /// Why.
        reason: String,
    },
}

impl EventKind {
    /// The event's type, as `p2pctl events --json` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::DeployAccepted { .. } => "deploy_accepted",
            EventKind::TransferDone { .. } => "transfer_done",
            EventKind::Installed { .. } => "installed",
            EventKind::GatePassed { .. } => "gate_passed",
            EventKind::GateFailed { .. } => "gate_failed",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::AppRestarted { .. } => "app_restarted",
            EventKind::AppFailed { .. } => "app_failed",
            EventKind::Refused { .. } => "refused",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::DeployAccepted {
                app, version, from, ..
            } => write!(
                f,
                "deploy of {app} {version} accepted from {}",
                from.short()
            ),
            EventKind::TransferDone {
                app,
                version,
                fetched,
                held,
            } => write!(
                f,
                "{app} {version}: every chunk held ({fetched} bytes fetched, {held} held already)"
            ),
            EventKind::Installed { app, version } => write!(f, "{app} {version} installed"),
            EventKind::GatePassed {
                app,
                version,
                action,
                took_ms,
            } => write!(
                f,
                "{app} {version} passed its health gate in {:.1} s ({action}): active",
                *took_ms as f64 / 1000.0
            ),
            EventKind::GateFailed {
                app,
                version,
                action,
                reason,
            } => write!(
                f,
                "{app} {version} failed its health gate ({action}): {reason}"
            ),
            EventKind::RolledBack {
                app,
                from,
                to,
                reason,
            } => match to {
                Some(to) => write!(f, "{app} rolled back from {from} to {to}: {reason}"),
                None => write!(
                    f,
                    "{app} {from} removed from service (no earlier version): {reason}"
                ),
            },
            EventKind::AppRestarted {
                app,
                version,
                restarts,
                exit,
            } => {
                write!(f, "{app} {version} restarted (restart {restarts}")?;
                match exit {
                    Some(ExitStatus::Code(c)) => write!(f, ", exited with {c})"),
                    Some(ExitStatus::Signal(s)) => write!(f, ", killed by signal {s})"),
                    None => write!(f, ")"),
                }
            }
            EventKind::AppFailed {
                app,
                version,
                reason,
            } => write!(f, "{app} {version} failed and is not restarted: {reason}"),
            EventKind::Refused {
                request,
                peer,
                reason,
                ..
            } => write!(f, "{request} from {} refused: {reason}", peer.short()),
        }
    }
}

/// Where a reader stands against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest index kept (`last + 1` while the log is empty).
    pub first: u64,
    /// The newest index (0 before the first event).
    pub last: u64,
}

struct State {
    kept: VecDeque<NodeEvent>,
    next: u64,
}

/// A node's event log (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    capacity: usize,
    state: Mutex<State>,
    /// Serializes writes: indexes reach storage in order.
    write: tokio::sync::Mutex<()>,
    /// The newest index, for followers.
    newest: watch::Sender<u64>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLog({:?})", self.bounds())
    }
}

fn key(index: u64) -> String {
    format!("{PREFIX}{index:020}")
}

impl EventLog {
    /// Opens the log kept in `storage`, keeping at most `capacity` events
    /// (at least 1).
    ///
    /// # Errors
    /// The storage cannot be listed.
    pub async fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        capacity: usize,
    ) -> p2p_core::Result<Self> {
        let capacity = capacity.max(1);
        let mut indexes: Vec<u64> = storage
            .list(PREFIX)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(PREFIX)?.parse().ok())
            .collect();
        indexes.sort_unstable();
        let next = indexes.last().map_or(1, |l| l + 1);
        let cut = indexes.len().saturating_sub(capacity);
        for old in &indexes[..cut] {
            let _ = storage.delete(&key(*old)).await;
        }
        let mut kept = VecDeque::new();
        for i in &indexes[cut..] {
            match storage.get(&key(*i)).await {
                Ok(Some(bytes)) => match postcard::from_bytes::<NodeEvent>(&bytes) {
                    Ok(e) if e.index == *i => kept.push_back(e),
                    Ok(_) | Err(_) => {
                        tracing::warn!(index = i, "a damaged event in the log; skipped")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(index = i, error = %e, "cannot read an event; skipped"),
            }
        }
        let (newest, _) = watch::channel(next - 1);
        Ok(EventLog {
            inner: Arc::new(Inner {
                storage,
                clock,
                capacity,
                state: Mutex::new(State { kept, next }),
                write: tokio::sync::Mutex::new(()),
                newest,
            }),
        })
    }

    /// Records an event: kept in storage, then shown to readers, and
    /// returns its index. An event that cannot be kept (a full disk) is
    /// logged and dropped, and its index is given to the next event: a
    /// reader never sees an index that a restart would hand out again.
    pub async fn record(&self, kind: EventKind) -> Option<u64> {
        let _w = self.inner.write.lock().await;
        let index = lock(&self.inner.state).next;
        let event = NodeEvent {
            index,
            at_ms: self.inner.clock.now().as_millis(),
            kind,
        };
        let kept = match postcard::to_stdvec(&event) {
            Ok(bytes) => self.inner.storage.put(&key(index), &bytes).await,
            Err(e) => Err(p2p_core::Error::invalid("event", e.to_string())),
        };
        if let Err(e) = kept {
            tracing::warn!(index, event = %event.kind, error = %e, "cannot keep an event; it is dropped");
            return None;
        }
        let dropped = {
            let mut st = lock(&self.inner.state);
            st.next = index + 1;
            st.kept.push_back(event);
            let mut dropped = Vec::new();
            while st.kept.len() > self.inner.capacity {
                if let Some(e) = st.kept.pop_front() {
                    dropped.push(e.index);
                }
            }
            dropped
        };
        for old in dropped {
            let _ = self.inner.storage.delete(&key(old)).await;
        }
        self.inner.newest.send_replace(index);
        Some(index)
    }

    /// The oldest and newest index.
    pub fn bounds(&self) -> LogBounds {
        let st = lock(&self.inner.state);
        LogBounds {
            first: st.kept.front().map_or(st.next, |e| e.index),
            last: st.next - 1,
        }
    }

    /// The events after index `after`, at most `max`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when events after `after` were dropped from
    /// the bounded log (naming them), [`ErrorKind::Invalid`] when `after`
    /// is beyond the newest index.
    pub fn after(&self, after: u64, max: usize) -> Result<Vec<NodeEvent>, RpcError> {
        let st = lock(&self.inner.state);
        let last = st.next - 1;
        if after > last {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "index {after} is beyond this node's event log, which ends at {last} \
                     (ask from {last} or lower)"
                ),
            ));
        }
        let first = st.kept.front().map_or(st.next, |e| e.index);
        // Events after `after` that are gone: after+1 .. first-1. Asked
        // from 0, the reader wants whatever is kept.
        if after > 0 && after + 1 < first {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!(
                    "events {}..{} are gone from this node's log (it keeps the newest {}); \
                     the oldest kept is {first}: ask from {} to read on from there",
                    after + 1,
                    first - 1,
                    self.inner.capacity,
                    first - 1
                ),
            ));
        }
        Ok(st
            .kept
            .iter()
            .filter(|e| e.index > after)
            .take(max)
            .cloned()
            .collect())
    }

    /// Waits until an event newer than `index` is recorded.
    pub async fn wait_past(&self, index: u64) {
        let mut rx = self.inner.newest.subscribe();
        // The sender lives as long as `self`: an error cannot happen.
        let _ = rx.wait_for(|n| *n > index).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p2p_core::{MemStorage, SystemClock};

    fn kind(i: u64) -> EventKind {
        EventKind::Installed {
            app: format!("app{i}"),
            version: semver::Version::new(1, 0, i),
        }
    }

    #[tokio::test]
    async fn indexes_grow_across_reopening_and_the_bound_names_what_is_gone() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let log = EventLog::open(storage.clone(), Arc::new(SystemClock), 3)
            .await
            .unwrap();
        assert_eq!(log.bounds(), LogBounds { first: 1, last: 0 });
        assert!(log.after(0, 10).unwrap().is_empty());
        for i in 1..=5 {
            assert_eq!(log.record(kind(i)).await, Some(i));
        }
        // Kept: 3, 4, 5.
        assert_eq!(log.bounds(), LogBounds { first: 3, last: 5 });
        let got: Vec<u64> = log.after(2, 10).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, [3, 4, 5]);
        let gone = log.after(1, 10).unwrap_err();
        assert_eq!(gone.kind, ErrorKind::NotFound);
        assert!(gone.message.contains("events 2..2 are gone"), "{gone}");
        // From 0: whatever is kept.
        assert_eq!(log.after(0, 10).unwrap().len(), 3);
        let beyond = log.after(9, 10).unwrap_err();
        assert_eq!(beyond.kind, ErrorKind::Invalid);
        assert!(beyond.message.contains("ends at 5"), "{beyond}");
        assert!(log.after(5, 10).unwrap().is_empty());
        assert_eq!(storage.list(PREFIX).await.unwrap().len(), 3);

        // Reopened (a restart): the same events, and the next index.
        let log = EventLog::open(storage.clone(), Arc::new(SystemClock), 3)
            .await
            .unwrap();
        assert_eq!(log.bounds(), LogBounds { first: 3, last: 5 });
        assert_eq!(log.after(4, 10).unwrap()[0].kind, kind(5));
        assert_eq!(log.record(kind(6)).await, Some(6));
        // Reopened with a smaller bound: the oldest go.
        let log = EventLog::open(storage.clone(), Arc::new(SystemClock), 2)
            .await
            .unwrap();
        assert_eq!(log.bounds(), LogBounds { first: 5, last: 6 });
        assert_eq!(storage.list(PREFIX).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_damaged_event_is_skipped_and_its_index_not_reused() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let log = EventLog::open(storage.clone(), Arc::new(SystemClock), 10)
            .await
            .unwrap();
        for i in 1..=3 {
            log.record(kind(i)).await;
        }
        storage.put(&key(2), b"\xff\xff").await.unwrap();
        let log = EventLog::open(storage, Arc::new(SystemClock), 10)
            .await
            .unwrap();
        let got: Vec<u64> = log.after(0, 10).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, [1, 3]);
        assert_eq!(log.record(kind(4)).await, Some(4));
    }

    #[tokio::test]
    async fn a_follower_wakes_for_each_new_event() {
        let log = EventLog::open(Arc::new(MemStorage::new()), Arc::new(SystemClock), 10)
            .await
            .unwrap();
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                log.wait_past(0).await;
                log.after(0, 10).unwrap()
            })
        };
        tokio::task::yield_now().await;
        log.record(kind(1)).await;
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].index, 1);
    }
}
