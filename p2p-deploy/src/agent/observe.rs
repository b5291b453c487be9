//! What an operator watches a node by: the event log (recorded here,
//! served as a stream), the apps' restarts and failures (seen by a
//! periodic look at the runtime), the chunk store's size, and a deploy's
//! plan (what a deploy would do, changing nothing).

use std::sync::atomic::Ordering;

use p2p_core::framing::Framed;
use p2p_core::sync::lock;
use p2p_core::{AppState, PeerId, Result};

use super::error::DeployError;
use super::serve::authorize::authorize_plan;
use super::{Agent, Res, rpc};
use crate::events::{EventKind, EventLog};
use crate::package::Descriptor;
use crate::proto::{DeployPlan, Frame, Reply};

/// Events sent per frame batch when a reader catches up.
const EVENT_BATCH: usize = 256;

/// How often a follower with nothing new hears that the node is there
/// ([`Frame::Alive`]): it tells a quiet node from a dead one by them.
pub(crate) const EVENTS_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

impl Agent {
    /// The node's event log, opened from storage on first use.
    ///
    /// # Errors
    /// The storage cannot be read.
    pub async fn event_log(&self) -> Result<&EventLog> {
        self.inner
            .events
            .get_or_try_init(|| {
                EventLog::open(
                    self.inner.parts.storage.clone(),
                    self.inner.parts.clock.clone(),
                    self.inner.cfg.events_kept,
                )
            })
            .await
    }

    /// Records an event (and counts it); a log that cannot be opened is
    /// logged, never an error of the operation that had the event.
    pub(crate) async fn record(&self, kind: EventKind) {
        self.inner
            .metrics
            .events
            .get_or_create(&p2p_core::metrics::label("type", kind.name()))
            .inc();
        match self.event_log().await {
            Ok(log) => {
                log.record(kind).await;
            }
            Err(e) => tracing::warn!(error = %e, event = %kind, "cannot open the event log"),
        }
    }

    /// Streams the events after `after`, and with `follow` new ones as
    /// they come, until the reader goes away.
    pub(super) async fn serve_events(
        &self,
        framed: &mut Framed,
        mut after: u64,
        follow: bool,
    ) -> Frame {
        let log = match self.event_log().await {
            Ok(l) => l.clone(),
            Err(e) => return Frame::Error(rpc(e)),
        };
        loop {
            let batch = match log.after(after, EVENT_BATCH) {
                Ok(b) => b,
                Err(e) => return Frame::Error(e),
            };
            if batch.is_empty() {
                if !follow {
                    return Frame::Done(Reply::Ok);
                }
                // Wait for the next event, or for the reader to go (its
                // side closing ends the read with an error or end of
                // stream).
                tokio::select! {
                    () = log.wait_past(after) => continue,
                    r = framed.recv_opt::<Frame>() => {
                        let _ = r;
                        return Frame::Done(Reply::Ok);
                    }
                    () = tokio::time::sleep(EVENTS_HEARTBEAT) => {
                        if framed.send(&Frame::Alive).await.is_err() {
                            return Frame::Done(Reply::Ok);
                        }
                    }
                }
            }
            for e in batch {
                after = e.index;
                if framed.send(&Frame::NodeEvent(e)).await.is_err() {
                    return Frame::Done(Reply::Ok); // the reader left
                }
            }
        }
    }

    /// Looks at every app the runtime has: records a restart or a
    /// failure since the last look as an event (apps in an operation are
    /// left alone: the operation reports on them), counts restarts, and
    /// keeps the app states for the metrics.
    pub(super) async fn watch_apps(&self) {
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return; // the last look is still going
        }
        // Cleared however the look ends (a task aborted at shutdown too).
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.inner.watching);
        // A runtime that cannot list its apps now changes nothing: what
        // was seen stays, for the next look to compare with.
        let statuses = match self.inner.parts.runtime.list().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the apps");
                return;
            }
        };
        let mut events = Vec::new();
        {
            let mut seen = lock(&self.inner.apps_seen);
            let mut now = std::collections::BTreeMap::new();
            for s in &statuses {
                // The app's restart counter exists from when it is first
                // seen, at zero.
                let _ = self
                    .inner
                    .metrics
                    .app_restarts
                    .get_or_create(&p2p_core::metrics::label("app", s.name.clone()));
                let before = seen.get(&s.name).cloned();
                let busy = self.lock(&s.name).try_lock().is_err();
                if let Some((version, restarts, state)) = before
                    && version == s.version
                    && !busy
                {
                    if s.restarts > restarts {
                        self.inner
                            .metrics
                            .app_restarts
                            .get_or_create(&p2p_core::metrics::label("app", s.name.clone()))
                            .inc_by(u64::from(s.restarts - restarts));
                        events.push(EventKind::AppRestarted {
                            app: s.name.clone(),
                            version: s.version.clone(),
                            restarts: s.restarts,
                            exit: s.exit,
                        });
                    }
                    if s.state == AppState::Failed && state != AppState::Failed {
                        events.push(EventKind::AppFailed {
                            app: s.name.clone(),
                            version: s.version.clone(),
                            reason: s
                                .reason
                                .clone()
                                .unwrap_or_else(|| "the process ended".into()),
                        });
                    }
                }
                now.insert(s.name.clone(), (s.version.clone(), s.restarts, s.state));
            }
            *seen = now;
            *lock(&self.inner.metrics.apps) = statuses
                .iter()
                .map(|s| (s.name.clone(), s.version.clone(), s.state))
                .collect();
        }
        for e in events {
            self.record(e).await;
        }
    }

    /// Sets the chunk store size gauge.
    pub(super) async fn measure_store(&self) {
        match self.inner.chunks.stored_bytes().await {
            Ok(b) => {
                self.inner
                    .metrics
                    .store_bytes
                    .set(i64::try_from(b).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "cannot measure the chunk store"),
        }
    }

    /// Answers [`Request::Plan`](crate::proto::Request::Plan): what a
    /// deploy of the release from `from` would do, checked as a deploy
    /// checks it (operator, signatures, anti-downgrade, a conflicting
    /// release of the same version), changing nothing.
    pub(super) async fn plan(
        &self,
        from: PeerId,
        descriptor: &[u8],
        signatures: &[p2p_core::Signature],
    ) -> Res<Reply> {
        let d = Descriptor::from_bytes(descriptor).map_err(|e| {
            crate::proto::RpcError::new(crate::proto::ErrorKind::Invalid, e.to_string())
        })?;
        let m = &d.manifest;
        let id = d.id();
        let rec = self.load(&m.name).await.map_err(rpc)?;
        let local = self.inner.parts.provider.local_id();
        let refusal = authorize_plan(from, self.inner.cfg.operators.as_ref(), local)
            .err()
            .or_else(|| {
                self.trusted(&d, signatures).err().map(|source| {
                    DeployError::Untrusted {
                        release: format!("{} {}", m.name, m.version),
                        source,
                    }
                    .into()
                })
            })
            .or_else(|| {
                let rec = rec.as_ref()?;
                match rec.installed.get(&m.version) {
                    Some(other) if *other != id => Some(
                        DeployError::Conflict {
                            release: format!("{} {}", m.name, m.version),
                            other: *other,
                        }
                        .into(),
                    ),
                    Some(_) => None,
                    None => rec.check_not_below(m).err().map(Into::into),
                }
            });
        let installed = rec
            .as_ref()
            .is_some_and(|r| r.installed.get(&m.version) == Some(&id));
        let active = rec.as_ref().and_then(|r| r.active.clone());
        let already_active = installed
            && active.as_ref() == Some(&m.version)
            && rec.as_ref().is_some_and(|r| r.running)
            && self.runs(&m.name, &m.version).await;
        let (missing_bytes, missing_chunks) = if installed {
            (0, 0)
        } else {
            let missing = self.inner.chunks.missing(&d).await.map_err(rpc)?;
            let bytes = missing
                .iter()
                .map(|i| crate::chunks::chunk_len(&d, *i))
                .sum();
            (bytes, missing.len() as u32)
        };
        Ok(Reply::Plan(Box::new(DeployPlan {
            active,
            already_active,
            installed,
            held_bytes: d.archive_size - missing_bytes,
            missing_bytes,
            missing_chunks,
            refusal,
        })))
    }
}
