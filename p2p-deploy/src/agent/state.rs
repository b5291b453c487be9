//! Reading and writing the agent's records on its storage, and the
//! per-app locks that keep two operations on one app apart.

use std::sync::Arc;
use std::time::Duration;

use p2p_core::sync::lock;
use p2p_core::{Error, Result};

use super::records::{AppRecord, record_key};
use super::{Agent, Res, not_found, rpc};
use crate::proto::{ErrorKind, RpcError};

/// How long a request waits for another operation on the same app.
const BUSY_WAIT: Duration = Duration::from_secs(5);

impl Agent {
    pub(super) fn lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.inner.locks);
        locks.entry(app.to_string()).or_default().clone()
    }

    /// The app's lock, waited for up to [`BUSY_WAIT`] (a reconcile pass
    /// holds it briefly); after that the app is busy with an operation.
    pub(super) async fn busy(&self, app: &str) -> Res<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(BUSY_WAIT, self.lock(app).lock_owned())
            .await
            .map_err(|_| {
                RpcError::new(
                    ErrorKind::Busy,
                    format!("another operation on {app} is in progress; try again when it ends"),
                )
            })
    }

    pub(super) async fn app_names(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .parts
            .storage
            .list("agent/apps/")
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix("agent/apps/").map(str::to_string))
            .collect())
    }

    pub(super) async fn load(&self, app: &str) -> Result<Option<AppRecord>> {
        if p2p_core::runtime::check_app_name(app).is_err() {
            return Ok(None);
        }
        match self.inner.parts.storage.get(&record_key(app)).await? {
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                Error::protocol(format!(
                    "the stored state of {app} is corrupt ({e}); remove the app to start over"
                ))
            }),
            None => Ok(None),
        }
    }

    /// The record of `app`; an unreadable one is logged and skipped, so
    /// that one damaged app does not take the others down with it.
    pub(super) async fn load_readable(&self, app: &str) -> Option<AppRecord> {
        match self.load(app).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(app, error = %e, "skipping an app whose state cannot be read");
                None
            }
        }
    }

    pub(super) async fn need(&self, app: &str) -> Res<AppRecord> {
        self.load(app)
            .await
            .map_err(rpc)?
            .ok_or_else(|| not_found(format!("no app named {app:?} on this node")))
    }

    pub(super) async fn save(&self, rec: &AppRecord) -> Result<()> {
        let bytes = postcard::to_allocvec(rec)
            .map_err(|e| Error::protocol(format!("encoding the state of {}: {e}", rec.name)))?;
        self.inner
            .parts
            .storage
            .put(&record_key(&rec.name), &bytes)
            .await
    }
}
