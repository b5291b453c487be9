//! The one task that owns and drives the libp2p swarm. Provider handles
//! talk to it through a bounded command channel; streams themselves go
//! through `libp2p-stream`'s control and never pass through this task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, allow_block_list, connection_limits, dcutr, identify, mdns, ping, relay};
use p2p_core::discovery::PeerBook;
use p2p_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::addr;
use crate::paths::PathBook;
use crate::transport::{classify, is_relayed};

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
    /// Tells peers the address it sees them at (their NAT's), which hole
    /// punching needs, and learns its own the same way.
    pub(crate) identify: identify::Behaviour,
    /// Circuits through relays: reservations on them, dials through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Direct connection upgrade through relay: hole punching.
    pub(crate) dcutr: dcutr::Behaviour,
    /// Serving as a relay for others, when configured.
    pub(crate) relay: Toggle<relay::Behaviour>,
}

/// Where a node stands with one of its relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// The relay.
    pub relay: p2p_core::PeerId,
    /// A reservation is held: peers can reach this node through it.
    pub reserved: bool,
    /// Why not, when not.
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

/// The relay a circuit address goes through: its id and address.
fn relay_of(a: &Multiaddr) -> Option<(libp2p::PeerId, Multiaddr)> {
    let mut prefix = Multiaddr::empty();
    let mut last_peer = None;
    for p in a.iter() {
        if p == Protocol::P2pCircuit {
            return last_peer.map(|relay| (relay, prefix));
        }
        if let Protocol::P2p(id) = p {
            last_peer = Some(id);
        }
        prefix.push(p);
    }
    None
}

/// The relays that `addrs` go through: each relay's id and address.
fn circuit_relays(addrs: &[Multiaddr]) -> BTreeMap<libp2p::PeerId, Multiaddr> {
    let mut out = BTreeMap::new();
    for (relay, addr) in addrs.iter().filter_map(relay_of) {
        out.entry(relay).or_insert(addr);
    }
    out
}

/// The error of a dial whose every address went through relays this node
/// could not reach: the relay's own failure, with the peer named.
fn through_failed_relays(who: &str, relay: &Error) -> Error {
    let say =
        |m: &str| format!("{who} is reached only through relays this node could not reach: {m}");
    match relay {
        Error::Denied { reason } => Error::denied(say(reason)),
        Error::Timeout { during, after } => Error::timeout(say(during), *after),
        other => Error::unreachable(say(&other.to_string())),
    }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        if let Some(conn) = self.paths.best_connection(&peer) {
            let _ = reply.send(Ok(conn));
            return;
        }
        if let Some((_, waiters)) = self.pending.get_mut(&peer) {
            waiters.push((who, reply));
            return;
        }
        if let Some(p) = self.parked.get_mut(&peer) {
            p.waiters.push((who, reply));
            return;
        }
        let addrs = if addrs.is_empty() {
            // Known by id alone: try it through every relay, besides what
            // mDNS may know.
            self.relays
                .iter()
                .map(|r| r.addr.clone().with(Protocol::P2pCircuit))
                .collect()
        } else {
            addrs
        };
        // The relay client fails concurrent circuits through a relay it is
        // still dialing ("oneshot canceled"): reach the relays first.
        let mut relays = BTreeSet::new();
        for (relay, relay_addr) in circuit_relays(&addrs) {
            if self.swarm.is_connected(&relay) {
                continue;
            }
            let opts = DialOpts::peer_id(relay)
                .addresses(vec![relay_addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                    relays.insert(relay);
                }
                // Not reachable: the circuit dial below reports it.
                Err(_) => {}
            }
        }
        if !relays.is_empty() {
            self.parked.insert(
                peer,
                Parked {
                    relays,
                    addrs,
                    waiters: vec![(who, reply)],
                    relay_error: None,
                },
            );
            return;
        }
        self.dial_now(peer, addrs, vec![(who, reply)]);
    }

    fn dial_now(&mut self, peer: libp2p::PeerId, addrs: Vec<Multiaddr>, waiters: DialWaiters) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::Always)
            .build();
        let conn = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending.insert(peer, (conn, waiters));
            }
            Err(e) => {
                let who = waiters.first().map(|(w, _)| w.clone()).unwrap_or_default();
                let e = dial_error(&who, e, self.setup, self.tcp_wait);
                for (_, w) in waiters {
                    let _ = w.send(Err(same_error(&e)));
                }
            }
        }
    }

    /// `relay` is connected, or could not be (`failed` says why): the dials
    /// that waited for it (and for no other relay) go ahead. Circuits
    /// through a relay that failed are not tried again (it would cost
    /// another set-up timeout); a dial left with no address fails with the
    /// relay's error.
    fn relay_settled(&mut self, relay: &libp2p::PeerId, failed: Option<&Error>) {
        let ready: Vec<libp2p::PeerId> = self
            .parked
            .iter_mut()
            .filter_map(|(peer, p)| {
                if !p.relays.remove(relay) {
                    return None;
                }
                if let Some(e) = failed {
                    p.addrs
                        .retain(|a| relay_of(a).is_none_or(|(r, _)| r != *relay));
                    p.relay_error.get_or_insert_with(|| same_error(e));
                }
                p.relays.is_empty().then_some(*peer)
            })
            .collect();
        for peer in ready {
            let Some(p) = self.parked.remove(&peer) else {
                continue;
            };
            match p.relay_error {
                Some(e) if p.addrs.is_empty() => {
                    for (who, w) in p.waiters {
                        let _ = w.send(Err(through_failed_relays(&who, &e)));
                    }
                }
                _ => self.dial_now(peer, p.addrs, p.waiters),
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let remote = match &endpoint {
                    libp2p::core::ConnectedPoint::Dialer { address, .. } => address.clone(),
                    libp2p::core::ConnectedPoint::Listener {
                        local_addr,
                        send_back_addr,
                    } => {
                        if relayed {
                            local_addr.clone()
                        } else {
                            send_back_addr.clone()
                        }
                    }
                };
                tracing::debug!(
                    peer = %short(&peer_id),
                    path = if relayed { "relayed" } else { "direct" },
                    %remote,
                    "libp2p connection established"
                );
                self.paths
                    .established(peer_id, connection_id, remote, relayed);
                self.connections
                    .insert(connection_id, (peer_id, tokio::time::Instant::now()));
                if let Some(slot) = self.relays.iter_mut().find(|r| r.peer == peer_id)
                    && slot.state == RelayState::Dialing
                {
                    slot.state = RelayState::Identifying;
                    if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint
                        && !relayed
                    {
                        // Reserve at the address that answered.
                        let mut a = address.clone();
                        if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                            a.push(Protocol::P2p(peer_id));
                        }
                        slot.addr = a;
                    }
                }
                if let Some((_, waiters)) = self.pending.remove(&peer_id) {
                    if relayed && !self.hole_punch_wait.is_zero() {
                        let until = tokio::time::Instant::now() + self.hole_punch_wait;
                        self.holding.insert(peer_id, (until, waiters));
                    } else {
                        for (_, w) in waiters {
                            let _ = w.send(Ok(connection_id));
                        }
                    }
                }
                if !relayed && self.holding.contains_key(&peer_id) {
                    self.release_held(Some(peer_id));
                }
                self.relay_settled(&peer_id, None);
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(?connection_id, ?cause, "libp2p connection closed");
                if let Some((peer, since)) = self.connections.remove(&connection_id) {
                    self.paths.closed(&peer, connection_id);
                    let still = self.connections.values().any(|(p, _)| *p == peer);
                    if !still {
                        self.relay_lost(&peer, "the connection to it closed");
                    }
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
            } => {
                // A dial a caller waits for, a relay this node reserves
                // on, or both; the dials parked for that relay go on.
                let waiters = match self.pending.get(&peer) {
                    Some((c, _)) if *c == connection_id => self.pending.remove(&peer),
                    _ => None,
                };
                let relay = self
                    .relays
                    .iter()
                    .any(|r| r.peer == peer && r.state == RelayState::Dialing);
                let parked = self.parked.values().any(|p| p.relays.contains(&peer));
                if waiters.is_some() || relay || parked {
                    let who = waiters
                        .as_ref()
                        .and_then(|(_, w)| w.first())
                        .map_or_else(|| "the relay".to_string(), |(w, _)| w.clone());
                    let e = dial_error(&who, error, self.setup, self.tcp_wait);
                    if relay {
                        self.relay_failed(&peer, format!("unreachable: {e}"));
                    }
                    for (_, w) in waiters.map(|(_, w)| w).unwrap_or_default() {
                        let _ = w.send(Err(same_error(&e)));
                    }
                    self.relay_settled(&peer, Some(&e));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let announce = self.relay_server
                    && !is_relayed(&address)
                    && (self.loopback_only || !addr::is_loopback(&address));
                {
                    let mut addrs = lock(&self.listen_addrs);
                    if !addrs.contains(&address) {
                        addrs.push(address.clone());
                    }
                }
                if announce {
                    // A relay hands these to the nodes that reserve on it.
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(i) = self.relays.iter().position(|r| {
                    matches!(r.state, RelayState::Listening(l) | RelayState::Reserved(l) if l == listener_id)
                }) {
                    let why = match reason {
                        Ok(()) => "its reservation ended".to_string(),
                        Err(e) => format!("reservation refused or lost: {}", error_chain(&e)),
                    };
                    let peer = self.relays[i].peer;
                    self.relay_failed(&peer, why);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            })) => self.paths.rtt(&peer, connection, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) => self.identified(peer_id),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => self.reserved(relay_peer_id, renewal),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(conn) => {
                    let remote = self
                        .paths
                        .remote_of(&remote_peer_id, conn)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    tracing::info!(
                        peer = %short(&remote_peer_id),
                        path = "direct",
                        was = "relayed",
                        %remote,
                        "path changed: hole punched"
                    );
                }
                Err(e) => {
                    tracing::info!(
                        peer = %short(&remote_peer_id),
                        error = %error_chain(&e),
                        "hole punching failed; traffic stays on the relay"
                    );
                    self.release_held(Some(remote_peer_id));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => {
                tracing::debug!(event = ?ev, "serving as a relay");
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
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // The host, not the port: a peer retrying comes from new
                // ports.
                let host = send_back_addr
                    .iter()
                    .next()
                    .map_or_else(|| send_back_addr.to_string(), |p| p.to_string());
                if let Some(held) = self.refusals.allow(&host) {
                    tracing::warn!(
                        address = %send_back_addr,
                        "refused an inbound connection: {}{}",
                        error_chain(&error),
                        p2p_core::ratelog::held_back(held)
                    );
                }
            }
            _ => {}
        }
    }

    /// Answers held dials: those of `peer` (it has a direct connection now,
    /// or hole punching failed), or with `None` those whose wait is over;
    /// each gets the best connection there is (direct first).
    fn release_held(&mut self, peer: Option<libp2p::PeerId>) {
        let now = tokio::time::Instant::now();
        let due: Vec<libp2p::PeerId> = self
            .holding
            .iter()
            .filter(|(p, (until, _))| Some(**p) == peer || *until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let Some((_, waiters)) = self.holding.remove(&p) else {
                continue;
            };
            let best = self.paths.best_connection(&p);
            for (who, w) in waiters {
                let _ = w.send(best.ok_or_else(|| {
                    Error::unreachable(format!(
                        "the relayed connection to {who} was lost before it could be used"
                    ))
                }));
            }
        }
    }

    /// Dials the relays that are due.
    fn dial_relays(&mut self) {
        let now = tokio::time::Instant::now();
        for i in 0..self.relays.len() {
            let slot = &self.relays[i];
            if slot.state != RelayState::Idle || slot.retry_at > now {
                continue;
            }
            if self.swarm.is_connected(&slot.peer) {
                self.relays[i].state = RelayState::Identifying;
                // Its identify came long ago: reserve now.
                let peer = self.relays[i].peer;
                self.identified(peer);
                continue;
            }
            let opts = DialOpts::peer_id(slot.peer)
                .addresses(slot.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let peer = slot.peer;
            match self.swarm.dial(opts) {
                Ok(()) => self.relays[i].state = RelayState::Dialing,
                Err(DialError::DialPeerConditionFalse(_)) => {
                    self.relays[i].state = RelayState::Dialing;
                }
                Err(e) => self.relay_failed(&peer, format!("cannot dial it: {e}")),
            }
        }
    }

    /// A peer's identify arrived; a relay waiting for it is asked for a
    /// reservation.
    fn identified(&mut self, peer: libp2p::PeerId) {
        let Some(i) = self.relays.iter().position(|r| r.peer == peer) else {
            return;
        };
        if self.relays[i].state != RelayState::Identifying {
            return;
        }
        let circuit = self.relays[i].addr.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit) {
            Ok(l) => self.relays[i].state = RelayState::Listening(l),
            Err(e) => self.relay_failed(&peer, format!("cannot listen through it: {e}")),
        }
    }

    fn reserved(&mut self, relay: libp2p::PeerId, renewal: bool) {
        let Some(slot) = self.relays.iter_mut().find(|r| r.peer == relay) else {
            return;
        };
        if let RelayState::Listening(l) = slot.state {
            slot.state = RelayState::Reserved(l);
        }
        if !renewal || slot.problem.is_some() {
            tracing::info!(relay = %short(&relay), addr = %slot.addr, "relay reservation accepted: peers can reach this node through it");
        }
        slot.problem = None;
        self.report_relays();
    }

    /// A relay's connection went: reserve again once it is back.
    fn relay_lost(&mut self, peer: &libp2p::PeerId, why: &str) {
        if let Some(slot) = self.relays.iter().find(|r| r.peer == *peer)
            && matches!(slot.state, RelayState::Identifying)
        {
            let why = why.to_string();
            self.relay_failed(peer, why);
        }
    }

    /// Records a relay's problem (logged when it changes) and schedules the
    /// next attempt.
    fn relay_failed(&mut self, peer: &libp2p::PeerId, why: String) {
        let retry = self.relay_retry;
        let Some(slot) = self.relays.iter_mut().find(|r| r.peer == *peer) else {
            return;
        };
        if let RelayState::Listening(l) | RelayState::Reserved(l) = slot.state {
            self.swarm.remove_listener(l);
        }
        slot.state = RelayState::Idle;
        slot.retry_at = tokio::time::Instant::now() + retry;
        if slot.problem.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                relay = %short(peer),
                addr = %slot.addr,
                "relay {}: {why}; the node keeps working on direct paths and tries again every {retry:?}",
                short(peer)
            );
            slot.problem = Some(why);
        }
        self.report_relays();
    }

    fn report_relays(&self) {
        let reports = self
            .relays
            .iter()
            .filter_map(|r| {
                Some(RelayReport {
                    relay: addr::from_libp2p(&r.peer).ok()?,
                    reserved: matches!(r.state, RelayState::Reserved(_)),
                    problem: r.problem.clone(),
                })
            })
            .collect();
        *lock(&self.relay_reports) = reports;
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

/// The first 10 hex characters of a peer's SDK id, as the rest of the SDK
/// names peers in logs (its libp2p form when it has none).
fn short(peer: &libp2p::PeerId) -> String {
    addr::from_libp2p(peer).map_or_else(|_| peer.to_string(), |id| id.short())
}

/// An error with its causes, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    text
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
