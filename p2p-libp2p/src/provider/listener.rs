//! [`Libp2pListener`]: the inbound connections of a provider, as the
//! accepting side's hand-over queued them.

use std::sync::Arc;

use async_trait::async_trait;
use p2p_core::sync::lock;
use p2p_core::{Connection, Listener, Result};
use tokio::sync::mpsc;

use super::state::Core;
use crate::session::Libp2pConnection;

/// Inbound connections of a [`Libp2pProvider`](crate::Libp2pProvider).
pub struct Libp2pListener {
    pub(super) rx: mpsc::Receiver<Libp2pConnection>,
    pub(super) core: Arc<Core>,
    pub(super) id: u64,
}

impl Drop for Libp2pListener {
    /// Stops accepting at once: connections already queued are dropped,
    /// which closes them and tells their dialers.
    fn drop(&mut self) {
        let mut slot = lock(&self.core.listener);
        if slot.as_ref().is_some_and(|(id, _)| *id == self.id) {
            slot.take();
        }
    }
}

impl std::fmt::Debug for Libp2pListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pListener")
            .field("node", &self.core.local.short())
            .finish()
    }
}

impl Libp2pListener {
    /// Waits for the next inbound connection, with its concrete type.
    pub async fn accept_connection(&mut self) -> Result<Libp2pConnection> {
        tokio::select! {
            biased;
            _ = self.core.stop.cancelled() => Err(self.core.closed_error()),
            c = self.rx.recv() => c.ok_or_else(|| self.core.closed_error()),
        }
    }
}

#[async_trait]
impl Listener for Libp2pListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        Ok(Arc::new(self.accept_connection().await?))
    }
}
