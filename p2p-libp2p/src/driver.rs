//! The one task that owns and drives the libp2p swarm. Provider handles
//! talk to it through a bounded command channel; streams themselves go
//! through `libp2p-stream`'s control and never pass through this task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, allow_block_list, connection_limits, mdns, ping};
use p2p_core::discovery::PeerBook;
use p2p_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::addr;
use crate::transport::classify;

/// The behaviours of a provider's swarm. The allow-list and the
/// connection limits come first, so they refuse a connection before any
/// other behaviour sets up a handler for it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) stream: crate::streams::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
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
    pending: BTreeMap<libp2p::PeerId, (ConnectionId, DialWaiters)>,
    connections: BTreeMap<ConnectionId, (libp2p::PeerId, tokio::time::Instant)>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
        book: PeerBook,
        setup: Duration,
        tcp_wait: Duration,
        close_timeout: Duration,
    ) -> Self {
        Driver {
            swarm,
            pending: BTreeMap::new(),
            connections: BTreeMap::new(),
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
        loop {
            tokio::select! {
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

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial {
                peer,
                addrs,
                who,
                reply,
            } => self.dial(peer, addrs, who, reply),
            Command::ConnState { conn, reply } => {
                let state = if self.connections.contains_key(&conn) {
                    ConnState::Open
                } else {
                    self.ended.get(&conn).copied().unwrap_or(ConnState::Closed)
                };
                let _ = reply.send(state);
            }
            Command::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    fn dial(
        &mut self,
        peer: libp2p::PeerId,
        addrs: Vec<Multiaddr>,
        who: String,
        reply: oneshot::Sender<Result<ConnectionId>>,
    ) {
        if let Some(conn) = self
            .connections
            .iter()
            .find_map(|(c, (p, _))| (*p == peer).then_some(*c))
        {
            let _ = reply.send(Ok(conn));
            return;
        }
        if let Some((_, waiters)) = self.pending.get_mut(&peer) {
            waiters.push((who, reply));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::Always)
            .build();
        let conn = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending.insert(peer, (conn, vec![(who, reply)]));
            }
            Err(e) => {
                let _ = reply.send(Err(dial_error(&who, e, self.setup, self.tcp_wait)));
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                self.connections
                    .insert(connection_id, (peer_id, tokio::time::Instant::now()));
                if let Some((_, waiters)) = self.pending.remove(&peer_id) {
                    for (_, w) in waiters {
                        let _ = w.send(Ok(connection_id));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(?connection_id, ?cause, "libp2p connection closed");
                if let Some((_, since)) = self.connections.remove(&connection_id) {
                    // An I/O error is the peer closing or the link failing;
                    // no cause means we closed it, a keep-alive timeout that
                    // it was idle.
                    let state = match cause {
                        Some(libp2p::swarm::ConnectionError::IO(_)) => ConnState::ClosedByPeer {
                            after: since.elapsed(),
                        },
                        _ => ConnState::Closed,
                    };
                    self.ended.insert(connection_id, state);
                    while self.ended.len() > REMEMBER_CLOSED {
                        self.ended.pop_first();
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error,
            } if self
                .pending
                .get(&peer)
                .is_some_and(|(c, _)| *c == connection_id) =>
            {
                if let Some((_, waiters)) = self.pending.remove(&peer) {
                    let who = waiters.first().map(|(w, _)| w.clone()).unwrap_or_default();
                    let e = dial_error(&who, error, self.setup, self.tcp_wait);
                    for (_, w) in waiters {
                        let _ = w.send(Err(same_error(&e)));
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut addrs = lock(&self.listen_addrs);
                if !addrs.contains(&address) {
                    addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.listen_addrs).retain(|a| *a != address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                tracing::debug!(%peer, %failure, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(ev)) => self.on_mdns(ev),
            _ => {}
        }
    }

    fn on_mdns(&mut self, ev: mdns::Event) {
        match ev {
            mdns::Event::Discovered(list) => {
                let mut changed = Vec::new();
                for (peer, ma) in list {
                    // Peers with other key types cannot be p2p-deploy nodes.
                    let Ok(id) = addr::from_libp2p(&peer) else {
                        continue;
                    };
                    let known = self.found.entry(id).or_default();
                    if !known.contains(&ma) {
                        known.push(ma);
                        changed.push(id);
                    }
                }
                changed.dedup();
                for id in changed {
                    if let Ok(pa) = addr::to_peer_addr(&id, self.found[&id].clone()) {
                        tracing::debug!(peer = %pa, "mDNS discovered a peer");
                        self.book.seen(pa);
                    }
                }
            }
            mdns::Event::Expired(list) => {
                for (peer, ma) in list {
                    let Ok(id) = addr::from_libp2p(&peer) else {
                        continue;
                    };
                    if let Some(known) = self.found.get_mut(&id) {
                        known.retain(|a| *a != ma);
                        if known.is_empty() {
                            self.found.remove(&id);
                            self.book.expired(&id);
                        }
                    }
                }
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

/// `Error` is not `Clone`: the waiters after the first get the same kind
/// of error with the same text.
fn same_error(e: &Error) -> Error {
    match e {
        Error::Denied { reason } => Error::denied(reason.clone()),
        Error::Closed { reason } => Error::closed(reason.clone()),
        Error::Timeout { during, after } => Error::timeout(during.clone(), *after),
        Error::Invalid { what, reason } => Error::invalid(what, reason.clone()),
        Error::Unreachable { reason } => Error::unreachable(reason.clone()),
        other => Error::unreachable(other.to_string()),
    }
}

/// Maps a failed dial into the error the caller of `connect` gets.
pub(crate) fn dial_error(who: &str, e: DialError, setup: Duration, tcp_wait: Duration) -> Error {
    match e {
        DialError::Transport(list) => classify(who, &list, setup, tcp_wait),
        DialError::NoAddresses => Error::unreachable(format!(
            "no address known for {who}: give one in its peer address, or enable mDNS"
        )),
        DialError::LocalPeerId { .. } => {
            Error::invalid("peer address", format!("{who} is this node itself"))
        }
        DialError::WrongPeerId { obtained, address } => Error::unreachable(format!(
            "{address} belongs to peer {obtained}, not to {who}"
        )),
        DialError::Denied { cause } => Error::denied(format!(
            "admission denied: this node refuses to dial {who}: {cause}"
        )),
        DialError::Aborted => Error::closed(format!("dial to {who} aborted")),
        DialError::DialPeerConditionFalse(_) => {
            Error::unreachable(format!("dial to {who} was not started"))
        }
    }
}
