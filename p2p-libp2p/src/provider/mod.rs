//! [`Libp2pProvider`]: the p2p-core [`Provider`] over a libp2p swarm.
//!
//! Here: the handle and the `Provider` methods; starting a node in
//! `bind`, what its handles share in `state`, connecting in `outbound`,
//! inbound streams and hand-overs in `inbound`, and [`Libp2pListener`] in
//! `listener`.

mod bind;
mod inbound;
mod listener;
mod outbound;
mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use libp2p::Multiaddr;
use p2p_core::sync::lock;
use p2p_core::{Connection, Discovered, Error, Listener, PeerAddr, PeerId, Provider, Result};
use tokio::sync::mpsc;

pub use listener::Libp2pListener;
use state::Core;

use crate::addr;
use crate::config::Libp2pConfig;
use crate::driver::RelayReport;

/// A p2p-core [`Provider`] over libp2p: TCP + noise + yamux, QUIC when no
/// pre-shared key is set, pnet with one, mDNS, an allow-list and
/// connection limits. See the [crate docs](crate) for the whole picture.
///
/// Cloning gives another handle to the same node. When the last handle is
/// dropped the node closes as if [`Provider::close`] had been called.
#[derive(Clone)]
pub struct Libp2pProvider {
    core: Arc<Core>,
    _handle: Arc<Handle>,
}

/// Closes the node when the last provider handle goes.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.core.stop.is_cancelled() {
            return;
        }
        let core = self.core.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { core.close("the provider was dropped").await });
            }
            Err(_) => {
                core.stop.cancel();
                lock(&core.listener).take();
            }
        }
    }
}

impl std::fmt::Debug for Libp2pProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pProvider")
            .field("id", &self.core.local.short())
            .field("addrs", &*lock(&self.core.listen_addrs))
            .finish()
    }
}

impl Libp2pProvider {
    /// The configuration this provider runs with.
    pub fn config(&self) -> &Libp2pConfig {
        &self.core.config
    }

    /// Where the node stands with each of its relays: whether it holds a
    /// reservation, and if not, why (also logged as it changes).
    pub fn relay_reports(&self) -> Vec<RelayReport> {
        lock(&self.core.relay_reports).clone()
    }

    /// Waits up to `limit` until the node holds a reservation on at least
    /// one relay; true if it does. False at once without relays.
    pub async fn wait_for_relay(&self, limit: Duration) -> bool {
        if self.core.config.relays.is_empty() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.relay_reports().iter().any(|r| r.reserved) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline || self.core.stop.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The multiaddrs the node listens on, without the `/p2p/` suffix.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.core.listen_addrs).clone()
    }
}

#[async_trait]
impl Provider for Libp2pProvider {
    fn backend(&self) -> &'static str {
        "libp2p"
    }

    fn local_id(&self) -> PeerId {
        self.core.local
    }

    fn local_addr(&self) -> PeerAddr {
        let mut addrs = lock(&self.core.listen_addrs).clone();
        // Listening on every interface lists loopback too, which no other
        // host can dial: leave it out when there is anything else, as iroh
        // does.
        if addrs.iter().any(|a| !addr::is_loopback(a)) {
            addrs.retain(|a| !addr::is_loopback(a));
        }
        addr::to_peer_addr(&self.core.local, addrs)
            .unwrap_or_else(|_| PeerAddr::id_only(self.core.local))
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        Ok(Arc::new(self.dial(peer).await?))
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        self.core.check_open()?;
        let mut slot = lock(&self.core.listener);
        if slot.as_ref().is_some_and(|(_, tx)| !tx.is_closed()) {
            return Err(Error::AlreadyExists {
                what: "listener".into(),
            });
        }
        let (tx, rx) = mpsc::channel(self.core.config.accept_backlog);
        let id = self.core.next_session.fetch_add(1, Ordering::Relaxed);
        *slot = Some((id, tx));
        Ok(Box::new(Libp2pListener {
            rx,
            core: self.core.clone(),
            id,
        }))
    }

    fn stats(&self) -> p2p_core::TransportStats {
        self.core.paths.stats()
    }

    fn discovered(&self) -> Discovered {
        self.core.book.subscribe()
    }

    async fn close(&self, reason: &str) {
        self.core.close(reason).await;
    }
}
