//! [`Libp2pProvider`]: the p2p-core [`Provider`] over a libp2p swarm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, Swarm};
use libp2p::{
    Multiaddr, Stream, allow_block_list, connection_limits, dcutr, identify, mdns, ping, relay,
};
use p2p_core::discovery::PeerBook;
use p2p_core::framing::{decode, read_frame_bytes, write_frame};
use p2p_core::{
    Connection, Discovered, Error, Listener, NodeKey, PeerAddr, PeerId, Provider, Result,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::addr;
use crate::config::Libp2pConfig;
use crate::driver::{Behaviour, Command, ConnState, Driver, RelayReport};
use crate::paths::PathBook;
use crate::session::{
    Gates, HEADER_LEN, Header, Io, Kind, Libp2pConnection, MAX_CONTROL_FRAME, OPEN_ATTEMPTS,
    OpenReply, PROTOCOL, RECEIVED, Refusal, Registry, Session, SessionEnv, SessionKey, backoff,
    open_raw, route_data, truncate,
};
use crate::transport::build_transport;

/// The identify protocol version nodes announce.
const IDENTIFY_PROTOCOL: &str = "/p2p-deploy/1.0.0";

/// Inbound streams whose header is being read or which wait for room in a
/// connection's accept queue, across all peers; more are dropped.
const MAX_INBOUND_HANDOVERS: usize = 4096;
/// The same from one peer, so that one peer cannot take them all.
const MAX_INBOUND_HANDOVERS_PER_PEER: usize = 512;

/// Counts one inbound hand-over of a peer while it lives.
struct PeerHandOver {
    core: Arc<Core>,
    peer: libp2p::PeerId,
}

impl PeerHandOver {
    fn start(core: &Arc<Core>, peer: libp2p::PeerId) -> Option<Self> {
        let mut counts = lock(&core.handovers);
        let n = counts.entry(peer).or_insert(0);
        if *n >= MAX_INBOUND_HANDOVERS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerHandOver {
            core: core.clone(),
            peer,
        })
    }
}

impl Drop for PeerHandOver {
    fn drop(&mut self) {
        let mut counts = lock(&self.core.handovers);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by provider handles, the listener and the tasks.
struct Core {
    local: PeerId,
    config: Libp2pConfig,
    commands: mpsc::Sender<Command>,
    control: crate::streams::Control,
    gates: Arc<Gates>,
    registry: Arc<Registry>,
    /// The live listener's id and queue.
    listener: Mutex<Option<(u64, mpsc::Sender<Libp2pConnection>)>>,
    /// Inbound streams in their hand-over (header, routing) at once.
    inbound: Arc<tokio::sync::Semaphore>,
    /// Inbound hand-overs in progress per peer.
    handovers: Mutex<std::collections::BTreeMap<libp2p::PeerId, usize>>,
    /// The close reason, once closed.
    closed: Mutex<Option<String>>,
    stop: CancellationToken,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    book: PeerBook,
    paths: PathBook,
    relay_reports: Arc<Mutex<Vec<RelayReport>>>,
    epoch: u64,
    next_session: AtomicU64,
}

impl Core {
    fn closed_error(&self) -> Error {
        let reason = lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "closed".into());
        Error::closed(format!("the provider is closed: {reason}"))
    }

    fn check_open(&self) -> Result<()> {
        if self.stop.is_cancelled() {
            Err(self.closed_error())
        } else {
            Ok(())
        }
    }

    fn env(&self) -> SessionEnv {
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

    fn allowed(&self, peer: &PeerId) -> bool {
        self.config
            .allow_list
            .as_ref()
            .is_none_or(|l| l.contains(peer))
    }

    fn new_session_id(&self) -> u128 {
        (u128::from(self.epoch) << 64)
            | u128::from(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())
    }

    async fn conn_state(&self, conn: ConnectionId) -> ConnState {
        self.command(|reply| Command::ConnState { conn, reply })
            .await
            .unwrap_or(ConnState::Closed)
    }

    /// Closes everything; idempotent.
    async fn close(&self, reason: &str) {
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

fn listen_multiaddrs(config: &Libp2pConfig) -> Vec<Multiaddr> {
    let binds: Vec<SocketAddr> = if config.bind_addrs.is_empty() {
        vec![SocketAddr::from(([0, 0, 0, 0], 0))]
    } else {
        config.bind_addrs.clone()
    };
    let mut out = Vec::new();
    for b in binds {
        out.push(addr::tcp_multiaddr(b));
        if config.quic_enabled() {
            out.push(
                addr::ip_multiaddr(b.ip())
                    .with(Protocol::Udp(b.port()))
                    .with(Protocol::QuicV1),
            );
        }
    }
    out
}

/// Fails when a fixed port is taken. libp2p's TCP listeners set
/// `SO_REUSEPORT`, so a second node on the same port would otherwise start
/// and silently share the port's inbound connections with the first.
fn check_ports_free(config: &Libp2pConfig) -> Result<()> {
    for b in config.bind_addrs.iter().filter(|b| b.port() != 0) {
        let taken = |proto: &str, e: std::io::Error| {
            Error::invalid("bind_addrs", format!("cannot listen on {proto} {b}: {e}"))
        };
        std::net::TcpListener::bind(b).map_err(|e| taken("TCP", e))?;
        if config.quic_enabled() {
            std::net::UdpSocket::bind(b).map_err(|e| taken("UDP", e))?;
        }
    }
    Ok(())
}

/// A per-process random number, so that session ids of a restarted node
/// never collide with those of its previous run.
fn random_epoch() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

impl Libp2pProvider {
    /// Starts a node with identity `key`: builds the swarm, listens on the
    /// configured addresses and waits until it has addresses to give out.
    ///
    /// Fails with [`Error::Invalid`] naming the field for a bad config or
    /// an address it cannot listen on.
    pub async fn bind(key: &NodeKey, config: Libp2pConfig) -> Result<Self> {
        config.validate()?;
        check_ports_free(&config)?;
        let keypair = addr::keypair(key);
        let lp_local = keypair.public().to_peer_id();
        let (relay_transport, relay_client) = relay::client::new(lp_local);
        let transport = build_transport(&keypair, &config, Some(relay_transport))?;
        let stream = crate::streams::Behaviour::new();
        let mut control = stream.new_control();
        let incoming = control.accept(PROTOCOL).map_err(|e| Error::Backend {
            backend: "libp2p",
            source: Box::new(e),
        })?;
        let allow = config.allow_list.as_ref().map(|list| {
            let mut b = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            // The relays carry connections for this node: the transport
            // lets them in; SDK connections still need the list.
            for p in list.iter().chain(config.relays.iter().map(|r| &r.id)) {
                b.allow_peer(addr::to_libp2p(p));
            }
            b
        });
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_established_incoming(Some(config.max_incoming_connections))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let mdns = if config.mdns {
            let mc = mdns::Config {
                query_interval: config.mdns_query_interval,
                ..mdns::Config::default()
            };
            Some(
                mdns::tokio::Behaviour::new(mc, lp_local)
                    .map_err(|e| Error::io("starting mDNS", e))?,
            )
        } else {
            None
        };
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_interval),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), keypair.public())
                .with_agent_version(format!("p2p-libp2p/{}", env!("CARGO_PKG_VERSION"))),
        );
        let relay_server = config.relay_server.then(|| {
            relay::Behaviour::new(
                lp_local,
                relay::Config {
                    max_reservations: 1024,
                    max_reservations_per_peer: 8,
                    // Every node of a site shares its NAT's address: no
                    // per-IP rate limits.
                    reservation_rate_limiters: Vec::new(),
                    circuit_src_rate_limiters: Vec::new(),
                    max_circuits: 1024,
                    max_circuits_per_peer: 64,
                    // 0: no limit on the bytes of a circuit (a release
                    // may cross it).
                    max_circuit_bytes: 0,
                    max_circuit_duration: config.relay_circuit_duration,
                    ..relay::Config::default()
                },
            )
        });
        let behaviour = Behaviour {
            allow: Toggle::from(allow),
            limits: connection_limits::Behaviour::new(limits),
            stream,
            ping,
            mdns: Toggle::from(mdns),
            identify,
            relay_client,
            dcutr: dcutr::Behaviour::new(lp_local),
            relay: Toggle::from(relay_server),
        };
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.idle_timeout)
            .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy);
        let swarm = Swarm::new(transport, behaviour, lp_local, swarm_config);

        let listen_addrs = Arc::new(Mutex::new(Vec::new()));
        let book = PeerBook::default();
        let paths = PathBook::default();
        let relay_reports = Arc::new(Mutex::new(Vec::new()));
        let mut driver = Driver::new(
            swarm,
            listen_addrs.clone(),
            book.clone(),
            paths.clone(),
            relay_reports.clone(),
            &config,
        );
        driver.listen(&listen_multiaddrs(&config)).await?;
        let (tx, rx) = mpsc::channel(config.command_buffer);
        tokio::spawn(driver.run(rx));

        let stream_budget = config.max_concurrent_streams;
        let core = Arc::new(Core {
            local: key.peer_id(),
            config,
            commands: tx,
            control,
            gates: Arc::new(Gates::new(stream_budget)),
            registry: Arc::new(Registry::default()),
            listener: Mutex::new(None),
            inbound: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_HANDOVERS)),
            handovers: Mutex::default(),
            closed: Mutex::new(None),
            stop: CancellationToken::new(),
            listen_addrs,
            book,
            paths,
            relay_reports,
            epoch: random_epoch(),
            next_session: AtomicU64::new(0),
        });
        tokio::spawn(route_inbound(core.clone(), incoming));
        Ok(Libp2pProvider {
            _handle: Arc::new(Handle { core: core.clone() }),
            core,
        })
    }

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

    /// Opens an SDK connection to `peer`.
    pub async fn dial(&self, peer: &PeerAddr) -> Result<Libp2pConnection> {
        let core = &self.core;
        core.check_open()?;
        let who = format!("peer {}", peer.id.short());
        if peer.id == core.local {
            return Err(Error::invalid(
                "peer address",
                format!("{who} is this node itself"),
            ));
        }
        if !core.allowed(&peer.id) {
            return Err(Error::denied(format!(
                "admission denied: {who} is not in this node's allow-list"
            )));
        }
        let mut addrs = addr::to_multiaddrs(peer)?;
        if !core.config.quic_enabled() {
            let before = addrs.len();
            addrs.retain(|a| !addr::is_quic(a));
            if before > 0 && addrs.is_empty() {
                return Err(Error::invalid(
                    "peer address",
                    format!(
                        "{peer}: only QUIC addresses, and QUIC is off on this node \
                         (it has a pre-shared key, or QUIC disabled); give a TCP address"
                    ),
                ));
            }
        }
        let limit = core.config.connect_timeout;
        tokio::time::timeout(limit, self.hand_over(peer.id, addrs, &who))
            .await
            .map_err(|_| Error::timeout(format!("connecting to {who}"), limit))?
    }

    /// Waits briefly for the swarm to report whether libp2p connection
    /// `conn` closed (a close travels a round trip behind the failure it
    /// caused).
    async fn fate_of(&self, conn: ConnectionId) -> ConnState {
        let wait = (self.core.config.connect_timeout / 4).min(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = self.core.conn_state(conn).await;
            if state != ConnState::Open || tokio::time::Instant::now() >= deadline {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn hand_over(
        &self,
        id: PeerId,
        addrs: Vec<Multiaddr>,
        who: &str,
    ) -> Result<Libp2pConnection> {
        let core = &self.core;
        let lp = addr::to_libp2p(&id);
        let mut last_err = None;
        for attempt in 0..OPEN_ATTEMPTS {
            let conn = core
                .command(|reply| Command::Dial {
                    peer: lp,
                    addrs: addrs.clone(),
                    who: who.to_string(),
                    reply,
                })
                .await??;
            let session = core.new_session_id();
            match open_session(core, lp, session, who).await {
                Ok((io, reply)) => {
                    reply.into_result(who)?;
                    let key = SessionKey {
                        peer: lp,
                        id: session,
                        we_dialed: true,
                    };
                    let conn = Session::start(key, id, core.env(), io);
                    if !conn.is_connected() {
                        return Err(core.closed_error());
                    }
                    return Ok(conn);
                }
                Err(HandOverError {
                    error,
                    received: true,
                }) => {
                    // The peer took the stream, then failed to answer.
                    return Err(error);
                }
                Err(HandOverError { error: e, .. }) => {
                    core.check_open()?;
                    match self.fate_of(conn).await {
                        ConnState::ClosedByPeer { after }
                            if after <= core.config.connect_timeout =>
                        {
                            // How libp2p's allow-list and connection limits
                            // refuse: the peer closes a connection as soon
                            // as it is established.
                            return Err(Error::denied(format!(
                                "admission denied: {who} closed the connection {after:.1?} after \
                                 the handshake; it does not admit this node (allow-list or \
                                 connection limit), or it is shutting down ({e})"
                            )));
                        }
                        ConnState::ClosedByPeer { .. } | ConnState::Closed => {
                            return Err(Error::unreachable(format!(
                                "the connection to {who} was lost during the hand-over ({e})"
                            )));
                        }
                        ConnState::Open => {}
                    }
                    tracing::debug!(attempt, error = %e, "hand-over failed; trying again");
                    last_err = Some(e);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::unreachable(format!("{who}: hand-over failed"))))
    }
}

/// Opens the control stream of a new session and reads the peer's answer.
/// Why a hand-over failed, and whether the peer had taken the stream
/// (answered `RECEIVED`) before it did.
struct HandOverError {
    error: Error,
    received: bool,
}

async fn open_session(
    core: &Core,
    peer: libp2p::PeerId,
    session: u128,
    who: &str,
) -> std::result::Result<(Io, OpenReply), HandOverError> {
    let header = Header {
        kind: Kind::Open,
        session,
    }
    .encode();
    let mut io = open_raw(
        &core.control,
        &core.gates,
        peer,
        &header,
        core.config.connect_timeout,
        who,
    )
    .await
    .map_err(|error| HandOverError {
        error,
        received: false,
    })?;
    let after = |error| HandOverError {
        error,
        received: true,
    };
    let mut buf = Vec::new();
    if !read_frame_bytes(&mut io, &mut buf, MAX_CONTROL_FRAME)
        .await
        .map_err(after)?
    {
        return Err(after(Error::unreachable(format!(
            "{who} ended the hand-over without an answer"
        ))));
    }
    let reply: OpenReply = decode(&buf).map_err(after)?;
    Ok((io, reply))
}

/// Takes every inbound stream off `libp2p-stream` at once and handles it
/// in its own task: `libp2p-stream` drops inbound streams while its
/// hand-off channel is full, so this loop must never wait on a peer.
async fn route_inbound(core: Arc<Core>, mut incoming: crate::streams::IncomingStreams) {
    loop {
        let next = tokio::select! {
            biased;
            _ = core.stop.cancelled() => return,
            next = incoming.next() => next,
        };
        let Some((peer, stream)) = next else { return };
        // Bounded, in all and per peer: beyond the caps a stream is
        // dropped, which its opener sees and retries.
        let Ok(permit) = core.inbound.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many inbound streams in hand-over; dropping one");
            continue;
        };
        let Some(per_peer) = PeerHandOver::start(&core, peer) else {
            tracing::debug!(%peer, "too many inbound streams from one peer in hand-over; dropping one");
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            handle_inbound(core, peer, stream).await;
            drop((permit, per_peer));
        });
    }
}

async fn handle_inbound(core: Arc<Core>, peer: libp2p::PeerId, stream: Stream) {
    let mut io = stream.compat();
    let mut raw = [0u8; HEADER_LEN];
    let limit = core.config.connect_timeout;
    let header_wait = limit / 4;
    match tokio::time::timeout(header_wait, io.read_exact(&mut raw)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound stream ended before its header");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound stream sent no header in time");
            return;
        }
    }
    let header = match Header::decode(&raw) {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "inbound stream with a bad header");
            return;
        }
    };
    // Tell the opener the stream made it past libp2p-stream's hand-off.
    let received = async {
        io.write_u8(RECEIVED).await?;
        io.flush().await
    };
    if !matches!(
        tokio::time::timeout(header_wait, received).await,
        Ok(Ok(()))
    ) {
        return;
    }
    match header.kind {
        Kind::Data { opener_dialed } => {
            let key = SessionKey {
                peer,
                id: header.session,
                we_dialed: !opener_dialed,
            };
            route_data(core.registry.get(&key), io, limit).await;
        }
        Kind::Open => accept_session(&core, peer, header.session, io).await,
    }
}

/// Answers a dialer's open: welcome and hand the connection to the
/// listener, or refuse with why.
async fn accept_session(core: &Arc<Core>, peer: libp2p::PeerId, session: u128, mut io: Io) {
    let limit = core.config.connect_timeout;
    let refuse = |code, reason: &str| OpenReply::Refused {
        code,
        reason: reason.to_string(),
    };
    let remote = addr::from_libp2p(&peer);
    let key = SessionKey {
        peer,
        id: session,
        we_dialed: false,
    };
    let permit = match &remote {
        Err(e) => Err(refuse(Refusal::Denied, &e.to_string())),
        Ok(_) if core.stop.is_cancelled() => Err(refuse(Refusal::Closing, "the node is closing")),
        Ok(id) if !core.allowed(id) => Err(refuse(
            Refusal::Denied,
            "admission denied: not in the peer's allow-list",
        )),
        Ok(_) if core.registry.contains(&key) => Err(refuse(
            Refusal::Denied,
            "a connection with this session id is already open",
        )),
        Ok(_) => {
            let tx = lock(&core.listener).as_ref().map(|(_, tx)| tx.clone());
            match tx.map(|tx| tx.try_reserve_owned()) {
                None | Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                    Err(refuse(Refusal::NotAccepting, "no listener"))
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) => Err(refuse(
                    Refusal::Busy,
                    "too many connections waiting to be accepted",
                )),
                Some(Ok(permit)) => Ok(permit),
            }
        }
    };
    let (permit, remote) = match (permit, remote) {
        (Ok(permit), Ok(remote)) => (permit, remote),
        (refused, _) => {
            let refusal = refused
                .err()
                .unwrap_or_else(|| refuse(Refusal::Denied, "not a p2p-deploy peer id"));
            let _ = tokio::time::timeout(limit, async {
                write_frame(&mut io, &refusal, MAX_CONTROL_FRAME).await?;
                io.shutdown()
                    .await
                    .map_err(|e| Error::from_stream_io("refusing a connection", e))
            })
            .await;
            return;
        }
    };
    // Registered before the welcome goes out, so that the dialer's first
    // stream always finds it. Dropped (and so closed, telling the dialer)
    // if the provider closed or the listener went away meanwhile.
    let conn = Session::start(key, remote, core.env(), io);
    if !conn.session().hand_over(&OpenReply::Welcome).await {
        tracing::debug!(%peer, "could not answer a hand-over");
        return;
    }
    if conn.is_connected() && !core.stop.is_cancelled() {
        permit.send(conn);
    }
}

/// Inbound connections of a [`Libp2pProvider`].
pub struct Libp2pListener {
    rx: mpsc::Receiver<Libp2pConnection>,
    core: Arc<Core>,
    id: u64,
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

    fn discovered(&self) -> Discovered {
        self.core.book.subscribe()
    }

    async fn close(&self, reason: &str) {
        self.core.close(reason).await;
    }
}
