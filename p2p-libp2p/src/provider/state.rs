//! What the handles of one node share with its listener and tasks
//! ([`Core`]): the channel to the swarm task, the session registry, the
//! listener's queue, the close reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::Multiaddr;
use libp2p::swarm::ConnectionId;
use p2p_core::discovery::PeerBook;
use p2p_core::sync::lock;
use p2p_core::{Error, PeerId, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Libp2pConfig;
use crate::driver::{Command, ConnState, RelayReport};
use crate::paths::PathBook;
use crate::session::{Gates, Libp2pConnection, Registry, SessionEnv, truncate};

/// State shared by provider handles, the listener and the tasks.
pub(super) struct Core {
    pub(super) local: PeerId,
    pub(super) config: Libp2pConfig,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) control: crate::streams::Control,
    pub(super) gates: Arc<Gates>,
    pub(super) registry: Arc<Registry>,
    /// The live listener's id and queue.
    pub(super) listener: Mutex<Option<(u64, mpsc::Sender<Libp2pConnection>)>>,
    /// Inbound streams in their hand-over (header, routing) at once.
    pub(super) inbound: Arc<tokio::sync::Semaphore>,
    /// Inbound hand-overs in progress per peer.
    pub(super) handovers: Mutex<std::collections::BTreeMap<libp2p::PeerId, usize>>,
    /// The close reason, once closed.
    pub(super) closed: Mutex<Option<String>>,
    pub(super) stop: CancellationToken,
    pub(super) listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    pub(super) book: PeerBook,
    pub(super) paths: PathBook,
    pub(super) relay_reports: Arc<Mutex<Vec<RelayReport>>>,
    pub(super) epoch: u64,
    pub(super) next_session: AtomicU64,
}

impl Core {
    pub(super) fn closed_error(&self) -> Error {
        let reason = lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "closed".into());
        Error::closed(format!("the provider is closed: {reason}"))
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.stop.is_cancelled() {
            Err(self.closed_error())
        } else {
            Ok(())
        }
    }

    pub(super) fn env(&self) -> SessionEnv {
        SessionEnv {
            control: self.control.clone(),
            gates: self.gates.clone(),
            registry: Arc::downgrade(&self.registry),
            open_timeout: self.config.connect_timeout,
            close_timeout: self.config.close_timeout,
            max_streams: self.config.max_concurrent_streams,
            paths: self.paths.clone(),
        }
    }

    pub(super) fn allowed(&self, peer: &PeerId) -> bool {
        self.config
            .allow_list
            .as_ref()
            .is_none_or(|l| l.contains(peer))
    }

    pub(super) fn new_session_id(&self) -> u128 {
        (u128::from(self.epoch) << 64)
            | u128::from(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())
    }

    pub(super) async fn conn_state(&self, conn: ConnectionId) -> ConnState {
        self.command(|reply| Command::ConnState { conn, reply })
            .await
            .unwrap_or(ConnState::Closed)
    }

    /// Closes everything; idempotent.
    pub(super) async fn close(&self, reason: &str) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_some() {
                return;
            }
            *closed = Some(truncate(reason).to_string());
        }
        self.stop.cancel();
        lock(&self.listener).take();
        let sessions = self.registry.drain();
        let local = format!(
            "connection closed: the provider closed: {}",
            truncate(reason)
        );
        futures::future::join_all(sessions.iter().map(|s| s.close(reason, local.clone()))).await;
        let _ = tokio::time::timeout(
            self.config.close_timeout,
            self.command(|reply| Command::Shutdown { reply }),
        )
        .await;
        self.book.close();
    }
}
