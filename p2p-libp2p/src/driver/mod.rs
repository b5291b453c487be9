//! The one task that owns and drives the libp2p swarm. Provider handles
//! talk to it through a bounded command channel; streams themselves go
//! through `libp2p-stream`'s control and never pass through this task.
//!
//! This file holds the task's state and its loop; the swarm's behaviours
//! are in `behaviour`, what it does for a command in `commands`, dialing
//! (and holding relayed dials for hole punching) in `dialing`, swarm
//! events in `events`, relay reservations in `relays`, and the errors it
//! hands back in `errors`.

mod behaviour;
mod commands;
mod dialing;
mod errors;
mod events;
mod incoming;
mod relays;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::{ConnectionId, Swarm, SwarmEvent};
use p2p_core::discovery::PeerBook;
use p2p_core::sync::lock;
use p2p_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::addr;
use crate::paths::PathBook;

pub(crate) use behaviour::Behaviour;
pub(crate) use incoming::IncomingPeers;

/// Where a node stands with one of its relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// The relay's id, as given in
    /// [`Libp2pConfig::relays`](crate::Libp2pConfig::relays); the reports
    /// come in that order.
    pub relay: p2p_core::PeerId,
    /// A reservation is held: peers can reach this node through it.
    pub reserved: bool,
    /// Why no reservation is held: the last failure (the relay could not
    /// be reached, refused, or the reservation was lost), kept while it is
    /// retried every `relay_retry`. `None` while the first attempt is under
    /// way, and once a reservation is accepted.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayState {
    /// Not connected; dialed again at `retry_at`.
    Idle,
    Dialing,
    /// Connected; waiting for its identify, which gives this node the
    /// address its NAT shows (hole punching needs it) before reserving.
    Identifying,
    Listening(ListenerId),
    Reserved(ListenerId),
}

/// One configured relay.
#[derive(Debug)]
struct RelaySlot {
    peer: libp2p::PeerId,
    /// Its addresses, each ending in `/p2p/<relay>`.
    addrs: Vec<Multiaddr>,
    /// The one it was last reached at (first: the first given).
    addr: Multiaddr,
    state: RelayState,
    retry_at: tokio::time::Instant,
    problem: Option<String>,
}

/// What provider handles ask of the swarm task.
pub(crate) enum Command {
    /// Make sure a connection to `peer` exists, dialing `addrs` (plus any
    /// addresses mDNS knows) if none does; answers with its id.
    Dial {
        peer: libp2p::PeerId,
        addrs: Vec<Multiaddr>,
        who: String,
        reply: oneshot::Sender<Result<ConnectionId>>,
    },
    /// Whether a connection is still open, and if not, how it ended.
    ConnState {
        conn: ConnectionId,
        reply: oneshot::Sender<ConnState>,
    },
    /// Close every connection, stop listening, and end the task.
    Shutdown { reply: oneshot::Sender<()> },
}

type DialWaiters = Vec<(String, oneshot::Sender<Result<ConnectionId>>)>;

/// A dial waiting for the relays its circuit addresses go through.
struct Parked {
    relays: BTreeSet<libp2p::PeerId>,
    addrs: Vec<Multiaddr>,
    waiters: DialWaiters,
    /// Why the first relay that could not be reached failed.
    relay_error: Option<Error>,
}

/// What became of a libp2p connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Still open.
    Open,
    /// The peer ended it (or it broke), this long after it was set up.
    ClosedByPeer { after: Duration },
    /// Closed here, or unknown.
    Closed,
}

/// How many ended connections are remembered for [`Command::ConnState`].
const REMEMBER_CLOSED: usize = 256;

/// The swarm task's state.
pub(crate) struct Driver {
    pub(crate) swarm: Swarm<Behaviour>,
    /// Inbound connections refused (a different pre-shared key, not on
    /// the allow-list, over a limit): logged once per address per period.
    refusals: p2p_core::ratelog::LogLimiter,
    pending: BTreeMap<libp2p::PeerId, (ConnectionId, DialWaiters)>,
    parked: BTreeMap<libp2p::PeerId, Parked>,
    /// Dials that ended on a relayed connection, held back a little for
    /// hole punching: their SDK connection then starts on the direct path
    /// and does not die with the relay.
    holding: BTreeMap<libp2p::PeerId, (tokio::time::Instant, DialWaiters)>,
    hole_punch_wait: Duration,
    connections: BTreeMap<ConnectionId, (libp2p::PeerId, tokio::time::Instant)>,
    paths: PathBook,
    relays: Vec<RelaySlot>,
    relay_reports: Arc<Mutex<Vec<RelayReport>>>,
    relay_retry: Duration,
    /// Serving as a relay: its listen addresses are announced as external.
    relay_server: bool,
    /// Every bind address is loopback (a test): loopback is announced too.
    loopback_only: bool,
    /// Recently ended connections and how they ended.
    ended: BTreeMap<ConnectionId, ConnState>,
    listeners: Vec<libp2p::core::transport::ListenerId>,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    found: BTreeMap<p2p_core::PeerId, Vec<Multiaddr>>,
    book: PeerBook,
    setup: Duration,
    tcp_wait: Duration,
    close_timeout: Duration,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
        book: PeerBook,
        paths: PathBook,
        relay_reports: Arc<Mutex<Vec<RelayReport>>>,
        config: &crate::Libp2pConfig,
    ) -> Self {
        let setup = config.setup_timeout();
        let tcp_wait = config.tcp_timeout();
        let close_timeout = config.close_timeout;
        let now = tokio::time::Instant::now();
        let relays = config
            .relays
            .iter()
            .filter_map(|r| {
                let lp = addr::to_libp2p(&r.id);
                let addrs = addr::to_multiaddrs(r).ok()?;
                Some(RelaySlot {
                    peer: lp,
                    addr: addrs.first()?.clone(),
                    addrs,
                    state: RelayState::Idle,
                    retry_at: now,
                    problem: None,
                })
            })
            .collect();
        Driver {
            swarm,
            pending: BTreeMap::new(),
            parked: BTreeMap::new(),
            holding: BTreeMap::new(),
            refusals: p2p_core::ratelog::LogLimiter::new(Duration::from_secs(10)),
            hole_punch_wait: config.hole_punch_wait.min(config.connect_timeout / 2),
            connections: BTreeMap::new(),
            paths,
            relays,
            relay_reports,
            relay_retry: config.relay_retry,
            relay_server: config.relay_server,
            loopback_only: !config.bind_addrs.is_empty()
                && config.bind_addrs.iter().all(|a| a.ip().is_loopback()),
            ended: BTreeMap::new(),
            listeners: Vec::new(),
            listen_addrs,
            found: BTreeMap::new(),
            book,
            setup,
            tcp_wait,
            close_timeout,
        }
    }

    /// Starts listening on `addrs` and waits until each listener reports
    /// an address, so that `local_addr` is complete when `bind` returns.
    pub(crate) async fn listen(&mut self, addrs: &[Multiaddr]) -> Result<()> {
        let mut waiting = Vec::new();
        for a in addrs {
            let id = self
                .swarm
                .listen_on(a.clone())
                .map_err(|e| Error::invalid("bind_addrs", format!("cannot listen on {a}: {e}")))?;
            waiting.push((id, a.clone()));
            self.listeners.push(id);
        }
        let find = |w: &[(libp2p::core::transport::ListenerId, Multiaddr)], id| {
            w.iter().find(|(l, _)| *l == id).map(|(_, a)| a.clone())
        };
        let deadline = tokio::time::Instant::now() + self.setup;
        while !waiting.is_empty() {
            let ev = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| Error::timeout("starting to listen", self.setup))?;
            match &ev {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.retain(|(l, _)| l != listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some(a) = find(&waiting, *listener_id) {
                        return Err(Error::invalid(
                            "bind_addrs",
                            format!("cannot listen on {a}: {reason:?}"),
                        ));
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(a) = find(&waiting, *listener_id) {
                        return Err(Error::invalid(
                            "bind_addrs",
                            format!("cannot listen on {a}: {error}"),
                        ));
                    }
                }
                _ => {}
            }
            self.on_event(ev);
        }
        Ok(())
    }

    /// Runs until a shutdown command, or until every provider handle is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.report_relays();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick(), if !self.relays.is_empty() || !self.holding.is_empty() => {
                    self.dial_relays();
                    self.release_held(None);
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                ev = self.swarm.select_next_some() => self.on_event(ev),
            }
        }
    }

    /// Fails pending dials, stops listening, closes every connection and
    /// waits (bounded) for them to go.
    async fn shutdown(&mut self) {
        for (_, (_, waiters)) in std::mem::take(&mut self.pending) {
            for (who, w) in waiters {
                let _ = w.send(Err(Error::closed(format!(
                    "dial to {who} abandoned: the provider is closing"
                ))));
            }
        }
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
        let peers: Vec<libp2p::PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let _ = tokio::time::timeout(self.close_timeout, async {
            while !self.connections.is_empty() {
                let ev = self.swarm.select_next_some().await;
                // One that was in its handshake when we stopped listening.
                if let SwarmEvent::ConnectionEstablished { connection_id, .. } = &ev {
                    self.swarm.close_connection(*connection_id);
                }
                self.on_event(ev);
            }
        })
        .await;
        lock(&self.listen_addrs).clear();
        self.book.close();
    }
}

/// The first 10 hex characters of a peer's SDK id, as the rest of the SDK
/// names peers in logs (its libp2p form when it has none).
fn short(peer: &libp2p::PeerId) -> String {
    addr::from_libp2p(peer).map_or_else(|_| peer.to_string(), |id| id.short())
}
